// Shared helpers of the dvtp CPU kernels (csrc/cpu/*.cpp).
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/TensorIterator.h>
#include <c10/util/ParallelGuard.h>

#include <cstdint>

namespace dvtp::cpu {

// Runs f(begin, end) over [begin, end) split into one contiguous chunk per intra-op
// thread (at most), like at::parallel_for. f is called at most once per thread, so
// per-thread scratch buffers can be allocated inside f; ATen ops called inside f run
// single-threaded (the region counts as a parallel region).
//
// at::parallel_for is a header template that is only parallel when the including
// translation unit is compiled with OpenMP (-fopenmp defines _OPENMP and hence
// INTRA_OP_PARALLEL for torch's OpenMP builds). Without it, it silently runs f
// serially. So that these kernels are parallel whatever the build flags, the fallback
// goes through TensorIterator::for_each, whose at::parallel_for is compiled inside
// libtorch itself: it iterates a 1-D int64 tensor of work item ids (a few bytes per
// item) and hands each thread's contiguous slice of ids to f.
template <typename F>
inline void parallel_for(int64_t begin, int64_t end, int64_t grain_size, const F& f) {
  if (begin >= end) {
    return;
  }
#ifdef INTRA_OP_PARALLEL
  at::parallel_for(begin, end, grain_size, f);
#else
  const int64_t n = end - begin;
  if (n <= grain_size || n == 1 || at::in_parallel_region() || at::get_num_threads() <= 1) {
    c10::ParallelGuard guard(true);
    f(begin, end);
    return;
  }
  at::Tensor ids = at::arange(begin, end, at::TensorOptions().dtype(at::kLong));
  auto iter = at::TensorIteratorConfig()
                  .add_const_input(ids)
                  .check_all_same_dtype(false)
                  .build();
  // TensorIterator's for_each splits numel into at most num_threads contiguous
  // chunks; with a 1-D contiguous input each chunk reaches the loop as one call
  // (size1 == 1), holding consecutive ids.
  iter.for_each(
      [&](char** data, const int64_t* strides, int64_t size0, int64_t size1) {
        for (int64_t j = 0; j < size1; ++j) {
          const char* base = data[0] + j * strides[1];
          const int64_t first = *reinterpret_cast<const int64_t*>(base);
          const int64_t last = *reinterpret_cast<const int64_t*>(base + (size0 - 1) * strides[0]);
          f(first, last + 1);
        }
      },
      std::max<int64_t>(grain_size, 1));
#endif
}

}  // namespace dvtp::cpu
