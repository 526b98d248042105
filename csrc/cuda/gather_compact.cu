// CUDA kernel of dvtp::gather_compact. Semantics: dvtp_kernels/reference.py.
//
// out[t][b, .., p, ..] = tensors[t][b, .., gather_index[b, p], ..] along dims[t], with the
// pad value's bytes where gather_index[b, p] < 0.
//
// Each tensor is viewed as [B * mid, N, inner] (mid = product of the dims between the
// batch and the sequence dim, inner = bytes of everything after it); every output row
// (b, m, p) is one contiguous run of `inner` bytes. One launch copies the rows of up to
// kMaxTensors tensors: a by-value (__grid_constant__) table gives each tensor its
// pointers, geometry, pad pattern, vector width and its range of blocks; more tensors
// take more launches on the same stream. Rows are copied by groups of 1..256 threads
// (a power of two sized to the row) with 16-byte (uint4) accesses when the base pointers
// and the row size allow it, else 8/4/2/1-byte ones.
//
// Non-contiguous inputs are made contiguous on the host first (one copy each), so that
// rows are contiguous runs; outputs are new contiguous tensors.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cstdint>
#include <cstring>
#include <tuple>
#include <vector>

#include "cuda/cuda_utils.cuh"

namespace dvtp {
namespace cuda {
namespace {

constexpr int kGatherThreads = 256;
constexpr int kMaxTensors = 32;  // 80-byte entries: the table stays under 4 KiB of parameters

struct GatherEntry {
  const unsigned char* src;  // contiguous [B * mid, N, inner]
  unsigned char* dst;        // contiguous [B * mid, M, inner]
  int64_t mid;               // product of dims 1 .. d-1 (1 when d == 1)
  int64_t n;                 // sequence length N
  int64_t inner_bytes;       // bytes per row
  int64_t rows;              // B * mid * M
  int64_t block_begin;       // first block of this entry in the grid
  uint64_t pad_lo, pad_hi;   // the pad element repeated over 16 bytes
  int vec;                   // access width in bytes: 16, 8, 4, 2 or 1
  int tpr_log2;              // log2(threads per row)
};

struct GatherTable {
  GatherEntry e[kMaxTensors];
  const int64_t* index;  // [B, M]
  int64_t M;
  int count;
};
static_assert(sizeof(GatherTable) <= 4000, "kernel parameters must stay under 4 KiB");

// Pad word for access unit u of width sizeof(V): bytes (u * sizeof(V)) % 16 of the pattern.
template <typename V>
__device__ __forceinline__ V pad_unit(const GatherEntry& en, int64_t u);
template <>
__device__ __forceinline__ uint4 pad_unit<uint4>(const GatherEntry& en, int64_t) {
  return make_uint4(static_cast<unsigned>(en.pad_lo), static_cast<unsigned>(en.pad_lo >> 32),
                    static_cast<unsigned>(en.pad_hi), static_cast<unsigned>(en.pad_hi >> 32));
}
template <>
__device__ __forceinline__ uint64_t pad_unit<uint64_t>(const GatherEntry& en, int64_t u) {
  return (u & 1) ? en.pad_hi : en.pad_lo;
}
template <>
__device__ __forceinline__ uint32_t pad_unit<uint32_t>(const GatherEntry& en, int64_t u) {
  const uint64_t w = (u & 2) ? en.pad_hi : en.pad_lo;
  return static_cast<uint32_t>(w >> ((u & 1) * 32));
}
template <>
__device__ __forceinline__ uint16_t pad_unit<uint16_t>(const GatherEntry& en, int64_t u) {
  const uint64_t w = (u & 4) ? en.pad_hi : en.pad_lo;
  return static_cast<uint16_t>(w >> ((u & 3) * 16));
}
template <>
__device__ __forceinline__ uint8_t pad_unit<uint8_t>(const GatherEntry& en, int64_t u) {
  const uint64_t w = (u & 8) ? en.pad_hi : en.pad_lo;
  return static_cast<uint8_t>(w >> ((u & 7) * 8));
}

template <typename V>
__device__ __forceinline__ void copy_row(const GatherEntry& en, unsigned char* dst,
                                         const unsigned char* src, bool valid, int lane,
                                         int tpr) {
  const int64_t units = en.inner_bytes / static_cast<int64_t>(sizeof(V));
  V* d = reinterpret_cast<V*>(dst);
  if (valid) {
    const V* s = reinterpret_cast<const V*>(src);
    for (int64_t u = lane; u < units; u += tpr) d[u] = s[u];
  } else {
    for (int64_t u = lane; u < units; u += tpr) d[u] = pad_unit<V>(en, u);
  }
}

__global__ void __launch_bounds__(kGatherThreads) gather_kernel(const __grid_constant__ GatherTable t) {
  const int64_t block = blockIdx.x;
  int ei = 0;
  while (ei + 1 < t.count && t.e[ei + 1].block_begin <= block) ++ei;
  const GatherEntry& en = t.e[ei];
  const int tpr = 1 << en.tpr_log2;
  const int rows_per_block = kGatherThreads >> en.tpr_log2;
  const int group = threadIdx.x >> en.tpr_log2;
  const int lane = threadIdx.x & (tpr - 1);
  const int64_t row = (block - en.block_begin) * rows_per_block + group;
  if (row >= en.rows) return;  // no barriers in this kernel
  const int64_t p = row % t.M;
  const int64_t bm = row / t.M;  // b * mid + m
  const int64_t b = bm / en.mid;
  const int64_t idx = t.index[b * t.M + p];
  const bool valid = idx >= 0 && idx < en.n;  // [-1, N) by contract; others pad, never read
  unsigned char* dst = en.dst + row * en.inner_bytes;
  const unsigned char* src = en.src + (bm * en.n + (valid ? idx : 0)) * en.inner_bytes;
  switch (en.vec) {
    case 16:
      copy_row<uint4>(en, dst, src, valid, lane, tpr);
      break;
    case 8:
      copy_row<uint64_t>(en, dst, src, valid, lane, tpr);
      break;
    case 4:
      copy_row<uint32_t>(en, dst, src, valid, lane, tpr);
      break;
    case 2:
      copy_row<uint16_t>(en, dst, src, valid, lane, tpr);
      break;
    default:
      copy_row<uint8_t>(en, dst, src, valid, lane, tpr);
      break;
  }
}

// The pad value converted to `dtype` (torch's Scalar conversion, as masked_fill does),
// its bytes repeated over 16 bytes.
void pad_pattern(const at::Scalar& pad_value, at::ScalarType dtype, uint64_t* lo,
                 uint64_t* hi) {
  const at::Tensor one = at::empty({1}, at::TensorOptions().dtype(dtype)).fill_(pad_value);
  const size_t es = one.element_size();
  TORCH_CHECK(es >= 1 && es <= 16 && 16 % es == 0,
              "dvtp.gather_compact: unsupported element size ", es);
  unsigned char bytes[16];
  for (size_t off = 0; off < 16; off += es) std::memcpy(bytes + off, one.data_ptr(), es);
  std::memcpy(lo, bytes, 8);
  std::memcpy(hi, bytes + 8, 8);
}

void launch_table(GatherTable& table, int64_t blocks, cudaStream_t stream) {
  if (table.count == 0 || blocks == 0) return;
  gather_kernel<<<static_cast<unsigned>(blocks), kGatherThreads, 0, stream>>>(table);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

std::vector<at::Tensor> gather_compact_cuda(at::TensorList tensors, const at::Tensor& gather_index,
                                            at::IntArrayRef dims, const at::Scalar& pad_value) {
  constexpr const char* op = "dvtp.gather_compact";
  TORCH_CHECK(gather_index.is_cuda(), op, ": gather_index must be a CUDA tensor");
  const at::Device device = gather_index.device();
  TORCH_CHECK(gather_index.scalar_type() == at::kLong && gather_index.dim() == 2 &&
                  gather_index.is_contiguous(),
              op, ": gather_index must be a contiguous int64 [B, M] tensor");
  TORCH_CHECK(dims.size() == tensors.size(), op, ": got ", tensors.size(), " tensors but ",
              dims.size(), " dims");
  const int64_t B = gather_index.size(0), M = gather_index.size(1);

  const c10::cuda::CUDAGuard guard(device);
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();

  std::vector<at::Tensor> outs;
  outs.reserve(tensors.size());
  std::vector<at::Tensor> keep_alive;  // contiguous copies, alive until the launch is queued
  std::vector<std::tuple<at::ScalarType, uint64_t, uint64_t>> pad_cache;
  GatherTable table{};
  table.index = gather_index.data_ptr<int64_t>();
  table.M = M;
  int64_t blocks = 0;
  constexpr int64_t kMaxBlocks = INT32_MAX;

  for (size_t ti = 0; ti < tensors.size(); ++ti) {
    const at::Tensor& t = tensors[ti];
    const int64_t d = dims[ti];
    TORCH_CHECK(t.device() == device, op, ": tensor ", ti, " is on ", t.device(),
                ", gather_index on ", device);
    TORCH_CHECK(t.dim() >= 2 && d >= 1 && d < t.dim(), op, ": tensor ", ti, " of shape ",
                t.sizes(), " has no sequence dim ", d, " after the batch dim");
    TORCH_CHECK(t.size(0) == B, op, ": tensor ", ti, " has batch ", t.size(0),
                ", gather_index has ", B);
    std::vector<int64_t> shape = t.sizes().vec();
    shape[d] = M;
    at::Tensor out = at::empty(shape, t.options());  // contiguous
    outs.push_back(out);

    int64_t mid = 1;
    for (int64_t i = 1; i < d; ++i) mid *= t.size(i);
    int64_t inner = static_cast<int64_t>(t.element_size());
    for (int64_t i = d + 1; i < t.dim(); ++i) inner *= t.size(i);
    const int64_t rows = B * mid * M;
    if (rows == 0 || inner == 0) continue;  // nothing to copy

    const at::Tensor src = t.contiguous();
    keep_alive.push_back(src);
    GatherEntry en{};
    en.src = static_cast<const unsigned char*>(src.data_ptr());
    en.dst = static_cast<unsigned char*>(out.data_ptr());
    en.mid = mid;
    en.n = t.size(d);
    en.inner_bytes = inner;
    en.rows = rows;
    {
      // One host-side conversion per dtype (the pad is the same for every tensor).
      size_t c = 0;
      while (c < pad_cache.size() && std::get<0>(pad_cache[c]) != t.scalar_type()) ++c;
      if (c == pad_cache.size()) {
        uint64_t lo = 0, hi = 0;
        pad_pattern(pad_value, t.scalar_type(), &lo, &hi);
        pad_cache.emplace_back(t.scalar_type(), lo, hi);
      }
      en.pad_lo = std::get<1>(pad_cache[c]);
      en.pad_hi = std::get<2>(pad_cache[c]);
    }
    const auto sp = reinterpret_cast<uintptr_t>(en.src);
    const auto dp = reinterpret_cast<uintptr_t>(en.dst);
    en.vec = 1;
    for (int v = 16; v > 1; v >>= 1) {
      if (inner % v == 0 && sp % v == 0 && dp % v == 0) {
        en.vec = v;
        break;
      }
    }
    const int64_t units = inner / en.vec;
    int tpr_log2 = 0;
    while (tpr_log2 < 8 && (int64_t{1} << tpr_log2) < units) ++tpr_log2;
    en.tpr_log2 = tpr_log2;
    const int64_t rows_per_block = kGatherThreads >> tpr_log2;
    const int64_t nblocks = (rows + rows_per_block - 1) / rows_per_block;
    TORCH_CHECK(nblocks <= kMaxBlocks, op, ": tensor ", ti, " is too large for one launch");

    if (table.count == kMaxTensors || blocks + nblocks > kMaxBlocks) {
      launch_table(table, blocks, stream);
      table.count = 0;
      blocks = 0;
    }
    en.block_begin = blocks;
    table.e[table.count++] = en;
    blocks += nblocks;
  }
  launch_table(table, blocks, stream);
  // keep_alive's copies are freed here; the caching allocator orders their reuse on
  // this stream after the queued kernels.
  return outs;
}

}  // namespace
}  // namespace cuda
}  // namespace dvtp

TORCH_LIBRARY_IMPL(dvtp, CUDA, m) {
  m.impl("gather_compact", &dvtp::cuda::gather_compact_cuda);
}
