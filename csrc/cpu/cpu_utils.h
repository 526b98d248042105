// Shared helpers of the dvtp CPU kernels (csrc/cpu/*.cpp).
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/TensorIterator.h>
#include <c10/util/ParallelGuard.h>

#include <cfenv>
#include <cstdint>

#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__)
#include <xmmintrin.h>
#define DVTP_FP_ENV_MXCSR 1
#elif defined(__aarch64__)
#define DVTP_FP_ENV_FPCR 1
#endif

// MKL's thread-local thread count (the C entry point behind mkl.h's
// mkl_set_num_threads_local macro; the lower-case symbols are the Fortran interface,
// which takes a pointer), when torch uses MKL (x86 builds export it from libtorch_cpu):
// a weak reference, null where it is absent (OpenBLAS, Accelerate, ...).
#if defined(__GNUC__) || defined(__clang__)
extern "C" __attribute__((weak)) int MKL_Set_Num_Threads_Local(int nthreads);
#define DVTP_HAVE_WEAK_MKL 1
#else
#define DVTP_HAVE_WEAK_MKL 0
#endif

namespace dvtp::cpu {

// Pins MKL to one thread on the calling thread while alive. MKL picks its GEMM blocking
// (hence the rounding of every product sum) from the thread count it plans for: in a
// worker of a parallel region that is not the plan of a single-thread run, so without
// this a kernel's GEMMs round differently for torch.set_num_threads(1) and (n). Pinned,
// every thread count gives MKL's one-thread plan and bit-identical results (the workers
// ran MKL on one thread anyway: nested regions are serial). Call pin() right before each
// GEMM: ATen's lazy per-thread initialisation (the first ATen op on a fresh OpenMP worker)
// resets MKL's thread-local count. A no-op without MKL.
class SequentialBlas {
 public:
  SequentialBlas() {
#if DVTP_HAVE_WEAK_MKL
    if (&MKL_Set_Num_Threads_Local != nullptr) {
      previous_ = MKL_Set_Num_Threads_Local(1);
      active_ = true;
    }
#endif
  }
  void pin() const {
#if DVTP_HAVE_WEAK_MKL
    if (active_) MKL_Set_Num_Threads_Local(1);
#endif
  }
  ~SequentialBlas() {
#if DVTP_HAVE_WEAK_MKL
    if (active_) MKL_Set_Num_Threads_Local(previous_);  // 0 restores the global setting
#endif
  }
  SequentialBlas(const SequentialBlas&) = delete;
  SequentialBlas& operator=(const SequentialBlas&) = delete;

 private:
  int previous_ = 0;
  bool active_ = false;
};

// Sets the calling thread's floating-point environment to IEEE defaults while alive --
// round to nearest, subnormals neither flushed to zero (FTZ) nor read as zero (DAZ) --
// and restores the previous one on exit. The SIMD control register (MXCSR on x86, FPCR
// on AArch64) is per thread and a new thread inherits its creator's, so without this a
// kernel's rounding depends on who ran it: torch.set_flush_denormal(True) sets FTZ/DAZ
// on the calling thread only, the intra-op pool's workers keep whatever state they were
// created with (the caller's at the process's first parallel region, whatever a library
// set then), and a work item's subnormal probabilities and products came out as 0 or
// not depending on which thread computed it. Exception masks and flags are left alone.
class IeeeFloatEnv {
 public:
  IeeeFloatEnv() {
#if defined(DVTP_FP_ENV_MXCSR)
    saved_ = _mm_getcsr();
    _mm_setcsr(saved_ & ~(kFlushToZero | kDenormalsAreZero | kRoundingMask));
#elif defined(DVTP_FP_ENV_FPCR)
    asm volatile("mrs %0, fpcr" : "=r"(saved_));
    const uint64_t ieee = saved_ & ~(kFlushToZero | kFlushToZero16 | kRoundingMask);
    asm volatile("msr fpcr, %0" : : "r"(ieee));
#else
    saved_ = std::fegetround();
    std::fesetround(FE_TONEAREST);
#endif
  }
  ~IeeeFloatEnv() {
#if defined(DVTP_FP_ENV_MXCSR)
    _mm_setcsr(saved_);
#elif defined(DVTP_FP_ENV_FPCR)
    asm volatile("msr fpcr, %0" : : "r"(saved_));
#else
    std::fesetround(saved_);
#endif
  }
  IeeeFloatEnv(const IeeeFloatEnv&) = delete;
  IeeeFloatEnv& operator=(const IeeeFloatEnv&) = delete;

 private:
#if defined(DVTP_FP_ENV_MXCSR)
  static constexpr unsigned kFlushToZero = 1u << 15;
  static constexpr unsigned kDenormalsAreZero = 1u << 6;
  static constexpr unsigned kRoundingMask = 3u << 13;  // 00 = round to nearest
  unsigned saved_;
#elif defined(DVTP_FP_ENV_FPCR)
  static constexpr uint64_t kFlushToZero = 1ull << 24;
  static constexpr uint64_t kFlushToZero16 = 1ull << 19;
  static constexpr uint64_t kRoundingMask = 3ull << 22;  // 00 = round to nearest
  uint64_t saved_;
#else
  int saved_;
#endif
};

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
