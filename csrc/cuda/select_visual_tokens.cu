// CUDA kernel of dvtp::select_visual_tokens. Semantics: dvtp_kernels/reference.py.
//
// One block of 1024 threads per batch item:
//  1. importance[j] = float64 sum over rows i with row_mask[b, i] (in row order) of
//     scores[b, i, j], for j < key_len[b], stored as order-preserving uint64 keys (sign
//     flipped for positives, all bits for negatives; -0 -> +0, every NaN -> the largest
//     key, so the order stays total). Keys live in dynamic shared memory (8 bytes x Vmax)
//     or, when that exceeds the device's opt-in limit, in a global workspace [B, Vmax].
//     nan_item[b] = some importance is NaN (a NaN in a selected row, or +inf + -inf): the
//     item has no defined selection and the Python wrapper raises (its rows are then
//     unspecified). Computed for every item, also when everything is kept.
//  2. Radix select (8 passes of 8 bits, histograms in shared memory with warp-aggregated
//     integer atomics: deterministic) finds the keep_count-th largest key T and how many
//     keys equal to T are kept (take_eq).
//  3. Kept: key > T, or key == T among the first take_eq such keys in index order (ties:
//     lower index wins). One block-wide exclusive scan of packed (gt, eq) counts over
//     contiguous per-thread runs gives each kept token its output slot, in index order.
//  4. The same kernel writes keep_index (kept ascending, then -1) and the whole
//     gather_index row (prefix, kept, suffix, -1 padding): every output element is
//     written, so the outputs are allocated uninitialised.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cstdint>
#include <tuple>

#include "cuda/cuda_utils.cuh"

namespace dvtp {
namespace cuda {
namespace {

constexpr int kSelThreads = 1024;  // the scan below assumes exactly 32 warps
constexpr int kSelWarps = kSelThreads / kWarpSize;

struct SelParams {
  const float* scores;        // [B, R, V] contiguous
  const uint8_t* row_mask;    // [B, R] bool
  const int64_t* seq_len;     // [B]
  const int64_t* key_start;   // [B]
  const int64_t* key_len;     // [B]
  const int64_t* keep_count;  // [B]
  int64_t* gather_index;      // [B, max_new_len]
  int64_t* keep_index;        // [B, max_keep]
  bool* nan_item;             // [B]
  uint64_t* keys_global;      // [B, V] workspace, or nullptr: keys in shared memory
  int64_t R, V, max_new_len, max_keep;
};

__device__ __forceinline__ uint64_t order_key(double x) {
  if (x != x) return ~0ull;  // NaN ranks highest
  if (x == 0.0) x = 0.0;     // -0 ties with +0
  const uint64_t u = static_cast<uint64_t>(__double_as_longlong(x));
  return (u >> 63) ? ~u : (u | (1ull << 63));
}

// Exclusive prefix sum over the block (1024 threads) of one uint64 per thread.
__device__ __forceinline__ uint64_t block_exclusive_scan(uint64_t v, uint64_t* warp_tot) {
  const int lane = threadIdx.x % kWarpSize;
  const int warp = threadIdx.x / kWarpSize;
  uint64_t incl = v;
#pragma unroll
  for (int off = 1; off < kWarpSize; off <<= 1) {
    const uint64_t t = __shfl_up_sync(kFullMask, incl, off);
    if (lane >= off) incl += t;
  }
  if (lane == kWarpSize - 1) warp_tot[warp] = incl;
  __syncthreads();
  if (warp == 0) {
    const uint64_t w = warp_tot[lane];
    uint64_t wi = w;
#pragma unroll
    for (int off = 1; off < kWarpSize; off <<= 1) {
      const uint64_t t = __shfl_up_sync(kFullMask, wi, off);
      if (lane >= off) wi += t;
    }
    warp_tot[lane] = wi - w;
  }
  __syncthreads();
  return incl - v + warp_tot[warp];
}

__global__ void __launch_bounds__(kSelThreads) select_kernel(const SelParams p) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  __shared__ unsigned hist[256];
  __shared__ uint64_t warp_tot[kSelWarps];
  __shared__ unsigned s_digit;
  __shared__ unsigned s_above;

  const int b = blockIdx.x;
  const int tid = threadIdx.x;
  const int lane = tid % kWarpSize;
  const int64_t k0 = p.key_start[b];
  const int64_t n = p.seq_len[b];
  // The contract (0 <= keep_count <= key_len <= V, key_start + key_len <= seq_len) is
  // checked by the Python wrapper; clamp so a broken call cannot write out of bounds.
  const int64_t kl = max(static_cast<int64_t>(0), min(p.key_len[b], p.V));
  const int64_t kc = max(static_cast<int64_t>(0), min(p.keep_count[b], kl));
  int64_t* keep_row = p.keep_index + b * p.max_keep;
  int64_t* gather_row = p.gather_index + b * p.max_new_len;

  uint64_t* keys = p.keys_global != nullptr ? p.keys_global + b * p.V
                                            : reinterpret_cast<uint64_t*>(smem_raw);
  // 1. importance -> ordered keys and the NaN flag
  const float* sc = p.scores + b * p.R * p.V;
  const uint8_t* mask = p.row_mask + b * p.R;
  bool has_nan = false;
  for (int64_t j = tid; j < kl; j += kSelThreads) {
    double acc = 0.0;
    // Unconditional loads (a select, not a branch) so the unrolled loop keeps many
    // loads in flight; unselected rows add nothing (and their NaNs are not read into acc).
#pragma unroll 16
    for (int64_t i = 0; i < p.R; ++i) {
      const float v = sc[i * p.V + j];
      acc += mask[i] ? static_cast<double>(v) : 0.0;
    }
    has_nan |= acc != acc;
    keys[j] = order_key(acc);
  }
  // Also the barrier after which every key is visible to the whole block.
  const int any_nan = __syncthreads_or(has_nan);
  if (tid == 0) p.nan_item[b] = any_nan != 0;

  if (kc == kl) {
    // Everything kept (no selection needed).
    for (int64_t j = tid; j < kl; j += kSelThreads) {
      if (j < p.max_keep) keep_row[j] = j;
      if (k0 + j < p.max_new_len) gather_row[k0 + j] = k0 + j;
    }
  } else if (kc > 0) {

    // 2. radix select of the kc-th largest key, 8 bits per pass from the top.
    uint64_t prefix = 0;
    unsigned remaining = static_cast<unsigned>(kc);  // still to take among prefix matches
    for (int pass = 0; pass < 8; ++pass) {
      const int shift = 56 - 8 * pass;
      if (tid < 256) hist[tid] = 0;
      __syncthreads();
      for (int64_t jb = 0; jb < kl; jb += kSelThreads) {  // uniform trip count: full-warp match
        const int64_t j = jb + tid;
        unsigned digit = 256;  // 256: not counted
        if (j < kl) {
          const uint64_t key = keys[j];
          if (pass == 0 || (key >> (shift + 8)) == (prefix >> (shift + 8))) {
            digit = static_cast<unsigned>(key >> shift) & 255u;
          }
        }
        const unsigned peers = __match_any_sync(kFullMask, digit);
        if (digit < 256 && lane == __ffs(peers) - 1) atomicAdd(&hist[digit], __popc(peers));
      }
      __syncthreads();
      if (tid < kWarpSize) {
        // Lane l covers digits 255 - 8l down to 248 - 8l: lanes in descending digit order.
        unsigned cnt[8];
        unsigned tot = 0;
#pragma unroll
        for (int e = 0; e < 8; ++e) {
          cnt[e] = hist[255 - 8 * lane - e];
          tot += cnt[e];
        }
        unsigned incl = tot;
#pragma unroll
        for (int off = 1; off < kWarpSize; off <<= 1) {
          const unsigned t = __shfl_up_sync(kFullMask, incl, off);
          if (lane >= off) incl += t;
        }
        const unsigned hit = __ballot_sync(kFullMask, incl >= remaining);
        if (lane == __ffs(hit) - 1) {  // invariant: remaining <= prefix matches, so hit != 0
          unsigned above = incl - tot;
#pragma unroll
          for (int e = 0; e < 8; ++e) {
            if (above + cnt[e] >= remaining) {
              s_digit = 255u - 8u * lane - e;
              s_above = above;
              break;
            }
            above += cnt[e];
          }
        }
      }
      __syncthreads();
      prefix |= static_cast<uint64_t>(s_digit) << shift;
      remaining -= s_above;
    }
    const uint64_t thr = prefix;
    const uint64_t take_eq = remaining;  // 1 <= take_eq <= #keys equal to thr

    // 3. slots: kept_before(j) = gt_before(j) + min(eq_before(j), take_eq).
    const int64_t ipt = (kl + kSelThreads - 1) / kSelThreads;
    const int64_t j_begin = min(kl, tid * ipt);
    const int64_t j_end = min(kl, j_begin + ipt);
    uint64_t local = 0;  // (gt count << 32) | eq count; counts < 2^32
    for (int64_t j = j_begin; j < j_end; ++j) {
      const uint64_t key = keys[j];
      local += key > thr ? (1ull << 32) : (key == thr ? 1ull : 0ull);
    }
    uint64_t run = block_exclusive_scan(local, warp_tot);
    for (int64_t j = j_begin; j < j_end; ++j) {
      const uint64_t key = keys[j];
      const uint64_t eq_before = run & 0xffffffffull;
      const bool gt = key > thr;
      const bool eq = key == thr;
      if (gt || (eq && eq_before < take_eq)) {
        const int64_t slot =
            static_cast<int64_t>((run >> 32) + (eq_before < take_eq ? eq_before : take_eq));
        if (slot < p.max_keep) keep_row[slot] = j;
        if (k0 + slot < p.max_new_len) gather_row[k0 + slot] = k0 + j;
      }
      run += gt ? (1ull << 32) : (eq ? 1ull : 0ull);
    }
  }

  // 4. the rest of both rows: keep_index padding, gather prefix / suffix / padding.
  for (int64_t q = kc + tid; q < p.max_keep; q += kSelThreads) keep_row[q] = -1;
  const int64_t new_len = n - kl + kc;
  for (int64_t q = tid; q < p.max_new_len; q += kSelThreads) {
    if (q < k0) {
      gather_row[q] = q;
    } else if (q < k0 + kc) {
      continue;  // kept tokens, written above
    } else if (q < new_len) {
      gather_row[q] = q - kc + kl;
    } else {
      gather_row[q] = -1;
    }
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> select_visual_tokens_cuda(
    const at::Tensor& scores, const at::Tensor& row_mask, const at::Tensor& seq_len,
    const at::Tensor& key_start, const at::Tensor& key_len, const at::Tensor& keep_count,
    int64_t max_new_len, int64_t max_keep) {
  constexpr const char* op = "dvtp.select_visual_tokens";
  TORCH_CHECK(scores.is_cuda(), op, ": scores must be a CUDA tensor");
  const at::Device device = scores.device();
  TORCH_CHECK(scores.scalar_type() == at::kFloat && scores.dim() == 3 && scores.is_contiguous(),
              op, ": scores must be a contiguous float32 [B, R, V] tensor, got ",
              scores.scalar_type(), " ", scores.sizes());
  const int64_t B = scores.size(0), R = scores.size(1), V = scores.size(2);
  TORCH_CHECK(row_mask.device() == device && row_mask.scalar_type() == at::kBool &&
                  row_mask.dim() == 2 && row_mask.size(0) == B && row_mask.size(1) == R &&
                  row_mask.is_contiguous(),
              op, ": row_mask must be a contiguous bool [B, R] tensor on scores' device");
  check_index_vector(seq_len, "seq_len", B, device);
  check_index_vector(key_start, "key_start", B, device);
  check_index_vector(key_len, "key_len", B, device);
  check_index_vector(keep_count, "keep_count", B, device);
  TORCH_CHECK(max_new_len >= 0 && max_keep >= 0, op,
              ": max_new_len and max_keep must be >= 0");
  TORCH_CHECK(V < (int64_t{1} << 31), op, ": too many visual tokens (", V, ")");
  TORCH_CHECK(B <= INT32_MAX, op, ": batch too large");

  const auto opts = scores.options().dtype(at::kLong);
  at::Tensor gather_index = at::empty({B, max_new_len}, opts);
  at::Tensor keep_index = at::empty({B, max_keep}, opts);
  at::Tensor nan_item = at::empty({B}, scores.options().dtype(at::kBool));
  if (B == 0) return {gather_index, keep_index, nan_item};

  const c10::cuda::CUDAGuard guard(device);
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();

  // Keys in shared memory when they fit beside the static arrays (~1.3 KiB).
  const size_t key_bytes = sizeof(uint64_t) * static_cast<size_t>(V);
  const size_t static_bytes = 2048;
  at::Tensor workspace;
  size_t smem = 0;
  if (key_bytes + static_bytes <= max_dynamic_smem_optin()) {
    smem = key_bytes;
  } else {
    workspace = at::empty({B, V}, opts);
  }

  SelParams p{};
  p.scores = scores.data_ptr<float>();
  p.row_mask = reinterpret_cast<const uint8_t*>(row_mask.data_ptr<bool>());
  p.seq_len = seq_len.data_ptr<int64_t>();
  p.key_start = key_start.data_ptr<int64_t>();
  p.key_len = key_len.data_ptr<int64_t>();
  p.keep_count = keep_count.data_ptr<int64_t>();
  p.gather_index = gather_index.data_ptr<int64_t>();
  p.keep_index = keep_index.data_ptr<int64_t>();
  p.nan_item = nan_item.data_ptr<bool>();
  p.keys_global =
      workspace.defined() ? reinterpret_cast<uint64_t*>(workspace.data_ptr<int64_t>()) : nullptr;
  p.R = R;
  p.V = V;
  p.max_new_len = max_new_len;
  p.max_keep = max_keep;

  set_dynamic_smem(select_kernel, smem);
  select_kernel<<<static_cast<unsigned>(B), kSelThreads, smem, stream>>>(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {gather_index, keep_index, nan_item};
}

}  // namespace
}  // namespace cuda
}  // namespace dvtp

TORCH_LIBRARY_IMPL(dvtp, CUDA, m) {
  m.impl("select_visual_tokens", &dvtp::cuda::select_visual_tokens_cuda);
}
