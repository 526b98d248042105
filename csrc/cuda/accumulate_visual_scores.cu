// CUDA kernels of dvtp::accumulate_visual_scores.
//
//   scores[b, i, j] += sum_h exp(scale * q[b,h,query_start[b]+i] . k[b,h/G,key_start[b]+j] - lse[b,h,i])
//
// for j < key_len[b], with lse the row log-sum-exp over the valid keys (key_valid), given
// or computed here for the R query rows only. Semantics: dvtp_kernels/reference.py; its
// NONFINITE_RULES: a row whose lse is -inf adds 0, NaN or +inf makes the row NaN. The lse
// kernels flag a row with a NaN or +inf valid logit explicitly (fmaxf drops NaN) and
// report it as m = +inf in its partial, which stage_lse turns into a NaN lse.
//
// Two kernels per call:
//  * lse kernels (only when lse is None): one block per (item, query head, 64-row tile,
//    key split). Each streams its share of 64-key tiles, keeps an online (max, sum) per
//    row in the log2 domain and writes a partial (m, l) pair to a small float32
//    workspace [B, Hq, nsplit, R, 2] (O(B*Hq*R) memory). The split count makes the grid
//    cover the GPU when B*Hq*R is small; partials are combined in a fixed order when the
//    score kernel stages them, so the result is deterministic.
//  * score kernels: one block per (item, 64-row tile, BN-key tile of the visual span).
//    The block loops over every query head (K tile loaded once per kv head: GQA), forms
//    the 64 x BN logits tile, exponentiates against the staged lse and sums the heads in
//    registers; each scores element is owned by exactly one thread of one block, which
//    does a single read-modify-write at the end (no atomics: bit-reproducible).
// fp16/bf16 inputs use tensor cores (nvcuda::wmma 16x16x16, fp32 accumulators) on tiles
// double-buffered in shared memory with cp.async; float32 inputs use an FFMA register
// tiling (exact fp32 products, no TF32).
//
// q/k may have arbitrary strides, the head dim included: the fast (cp.async, 16-byte)
// path needs D % 8 == 0, a unit D stride, 16-byte aligned base and strides that are
// multiples of 8 elements; anything else takes an element-wise load path (same results),
// nothing is copied. D (head dim) may be 1..256 (padded with zeros to 64/128/256 for
// the tensor-core tiles).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>
#include <type_traits>

#include "cuda/cuda_utils.cuh"

namespace dvtp {
namespace cuda {
namespace {

constexpr int kThreads = 256;  // 8 warps per block, every kernel here
constexpr int kBM = 64;        // query rows per tile
constexpr int kLseBN = 64;     // keys per tile in the lse kernels
constexpr int kDK = 32;        // head-dim chunk of the fp32 kernels
constexpr float kLog2e = 1.4426950408889634f;

struct AccParams {
  const void* q;
  const void* k;
  float* scores;                 // [B, R, Vmax] contiguous
  const int64_t* query_start;    // [B]
  const int64_t* key_start;      // [B]
  const int64_t* key_len;        // [B]
  const float* lse;              // given lse [B, Hq, N] (strides below) or nullptr
  const float2* lse_part;        // computed partials [B, Hq, nsplit, R] or nullptr
  const uint8_t* key_valid;      // [B, N] bool or nullptr
  int64_t q_sb, q_sh, q_sn, q_sd;
  int64_t k_sb, k_sh, k_sn, k_sd;
  int64_t lse_sb, lse_sh, lse_sn;
  int Hq, Hkv, N, D, R, Vmax;
  int nsplit;  // lse partials per row (lse_part)
  int rtiles;  // ceil(R / kBM)
  int vtiles;  // ceil(Vmax / BN)          (score kernels)
  int tiles_per_split;  // key tiles per split (lse kernels)
  float scale_log2;     // scale * log2(e)
  bool vec_q, vec_k;    // 16-byte cp.async loads allowed
};

// ---------------------------------------------------------------------------------
// Tile loaders (16-bit types): ROWS x DPAD elements into shared memory with row pitch
// DPAD + 8 (the 16-byte skew keeps wmma fragment loads free of bank conflicts). Rows >=
// rows_valid and columns >= D are zero-filled. Values are copied as raw 16-bit patterns.
template <int ROWS, int DPAD>
__device__ __forceinline__ void load_tile_16(uint16_t* dst, const uint16_t* src,
                                             int64_t row_stride, int64_t d_stride,
                                             int rows_valid, int D, bool vec) {
  constexpr int LD = DPAD + 8;
  if (vec) {
    constexpr int CPR = DPAD / 8;  // 16-byte chunks per row
#pragma unroll 4
    for (int idx = threadIdx.x; idx < ROWS * CPR; idx += kThreads) {
      const int r = idx / CPR;
      const int c = idx - r * CPR;
      uint16_t* d = dst + r * LD + c * 8;
      if (r < rows_valid && c * 8 < D) {
        cp_async_16(d, src + r * row_stride + c * 8);
      } else {
        *reinterpret_cast<uint4*>(d) = make_uint4(0u, 0u, 0u, 0u);
      }
    }
  } else {
    for (int idx = threadIdx.x; idx < ROWS * DPAD; idx += kThreads) {
      const int r = idx / DPAD;
      const int c = idx - r * DPAD;
      uint16_t v = 0;
      if (r < rows_valid && c < D) v = src[r * row_stride + c * d_stride];
      dst[r * LD + c] = v;
    }
  }
}

// S[kBM x BN] (float, pitch LDS) = Q[kBM x DPAD] . K[BN x DPAD]^T on tensor cores.
// 8 warps: warp w owns rows 16*(w%4).. and BN/2 columns from (w/4)*BN/2.
template <typename T, int DPAD, int BN>
__device__ __forceinline__ void mma_tile_impl(const uint16_t* qs, const uint16_t* ks, float* ss) {
  using namespace nvcuda;
  constexpr int LDQ = DPAD + 8;
  constexpr int LDS = BN + 4;
  constexpr int WN = BN / 2;
  constexpr int FN = WN / 16;
  static_assert(FN >= 1, "BN must be a multiple of 32");
  const int warp = threadIdx.x / kWarpSize;
  const int wm = warp % 4;
  const int wn = warp / 4;
  const T* qt = reinterpret_cast<const T*>(qs) + wm * 16 * LDQ;
  const T* kt = reinterpret_cast<const T*>(ks) + wn * WN * LDQ;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> cf[FN];
#pragma unroll
  for (int f = 0; f < FN; ++f) wmma::fill_fragment(cf[f], 0.0f);
#pragma unroll
  for (int kk = 0; kk < DPAD; kk += 16) {
    wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> af;
    wmma::load_matrix_sync(af, qt + kk, LDQ);
#pragma unroll
    for (int f = 0; f < FN; ++f) {
      // K rows are the columns of K^T: a col-major B operand with the same pitch.
      wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> bf;
      wmma::load_matrix_sync(bf, kt + f * 16 * LDQ + kk, LDQ);
      wmma::mma_sync(cf[f], af, bf, cf[f]);
    }
  }
#pragma unroll
  for (int f = 0; f < FN; ++f) {
    wmma::store_matrix_sync(ss + wm * 16 * LDS + wn * WN + f * 16, cf[f], LDS,
                            wmma::mem_row_major);
  }
}

template <typename T, int DPAD, int BN>
__device__ __forceinline__ void mma_tile(const uint16_t* qs, const uint16_t* ks, float* ss) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  if constexpr (std::is_same<T, __nv_bfloat16>::value) {
    __trap();  // bf16 tensor cores need sm_80; the host refuses such devices first
  } else {
    mma_tile_impl<T, DPAD, BN>(qs, ks, ss);
  }
#else
  mma_tile_impl<T, DPAD, BN>(qs, ks, ss);
#endif
}

// One entry's probability exp2(s * scale_log2 - l2) against its row's log2-domain lse
// l2, with the non-finite rules: l2 = -inf (no valid key) -> 0; l2 NaN or +inf -> NaN
// (padding keys included: the whole row is poisoned); finite l2 -> IEEE at valid keys
// (a NaN logit gives NaN), 0 at padding keys (col_ok false). Bit tests: independent of
// --use_fast_math.
__device__ __forceinline__ float row_prob(float s, float scale_log2, float l2, bool col_ok) {
  if (finite_bits(l2)) return col_ok ? exp2f(fmaf(s, scale_log2, -l2)) : 0.0f;
  return l2 == neg_inf_f() ? 0.0f : nan_f();
}

// Stage log2-domain lse for all heads of the block's rows: lse_s[h * kBM + r].
// Rows past R get -inf (never written back). Partials are combined in split order.
__device__ __forceinline__ void stage_lse(const AccParams& p, float* lse_s, int b, int i0,
                                          int64_t q0) {
  const float ninf = neg_inf_f();
  for (int idx = threadIdx.x; idx < p.Hq * kBM; idx += kThreads) {
    const int h = idx / kBM;
    const int i = i0 + (idx - h * kBM);
    float v = ninf;
    if (i < p.R) {
      if (p.lse != nullptr) {
        v = p.lse[b * p.lse_sb + h * p.lse_sh + (q0 + i) * p.lse_sn] * kLog2e;
      } else {
        const float2* part =
            p.lse_part + (static_cast<int64_t>(b) * p.Hq + h) * p.nsplit * p.R + i;
        float m = ninf;
        for (int s = 0; s < p.nsplit; ++s) m = fmaxf(m, part[static_cast<int64_t>(s) * p.R].x);
        if (m == pos_inf_f()) {
          v = nan_f();  // a split saw a NaN or +inf valid logit: the row is poisoned
        } else if (m != ninf) {
          float l = 0.0f;
          for (int s = 0; s < p.nsplit; ++s) {
            const float2 pr = part[static_cast<int64_t>(s) * p.R];
            l += pr.y * exp2f(pr.x - m);
          }
          v = m + log2f(l);
        }
      }
    }
    lse_s[idx] = v;
  }
}

// ---------------------------------------------------------------------------------
// Score kernel, fp16/bf16 (tensor cores).
template <int DPAD, int BN>
constexpr size_t tc_score_smem_static() {
  return 2 * sizeof(uint16_t) * kBM * (DPAD + 8)    // Q double buffer
         + 2 * sizeof(uint16_t) * BN * (DPAD + 8)   // K double buffer
         + sizeof(float) * kBM * (BN + 4);          // logits tile
}

template <typename T, int DPAD, int BN>
__global__ void __launch_bounds__(kThreads, 2) score_tc_kernel(const AccParams p) {
  constexpr int LD = DPAD + 8;
  constexpr int LDS = BN + 4;
  constexpr int Q_ELEMS = kBM * LD;
  constexpr int K_ELEMS = BN * LD;
  constexpr int RSTEP = kThreads / BN;  // rows between one thread's elements
  constexpr int EPT = kBM / RSTEP;      // elements per thread
  extern __shared__ __align__(128) unsigned char smem_raw[];
  uint16_t* qs = reinterpret_cast<uint16_t*>(smem_raw);  // [2][Q_ELEMS]
  uint16_t* ks = qs + 2 * Q_ELEMS;                        // [2][K_ELEMS]
  float* ss = reinterpret_cast<float*>(ks + 2 * K_ELEMS);  // [kBM][LDS]
  float* lse_s = ss + kBM * LDS;                           // [Hq][kBM]

  int bid = blockIdx.x;
  const int vt = bid % p.vtiles;
  bid /= p.vtiles;
  const int rt = bid % p.rtiles;
  const int b = bid / p.rtiles;
  const int64_t q0 = p.query_start[b];
  const int64_t k0 = p.key_start[b];
  // key_len <= Vmax and the spans inside [0, N) are the contract; clamping only keeps a
  // broken call from touching memory out of bounds.
  const int64_t kl = min(p.key_len[b], min(static_cast<int64_t>(p.Vmax), p.N - k0));
  const int j0 = vt * BN;
  if (j0 >= kl) return;  // whole block: past this item's visual span
  const int i0 = rt * kBM;
  const int rows_q = min(kBM, p.R - i0);
  const int rows_q_in = static_cast<int>(max(static_cast<int64_t>(0),
                                             min(static_cast<int64_t>(rows_q), p.N - q0 - i0)));
  const int rows_k = static_cast<int>(min(static_cast<int64_t>(BN), kl - j0));
  const int G = p.Hq / p.Hkv;
  const uint16_t* qbase =
      static_cast<const uint16_t*>(p.q) + b * p.q_sb + (q0 + i0) * p.q_sn;
  const uint16_t* kbase =
      static_cast<const uint16_t*>(p.k) + b * p.k_sb + (k0 + j0) * p.k_sn;

  // Prologue: head 0's Q tile and kv head 0's K tile in flight while the lse is staged.
  load_tile_16<kBM, DPAD>(qs, qbase, p.q_sn, p.q_sd, rows_q_in, p.D, p.vec_q);
  load_tile_16<BN, DPAD>(ks, kbase, p.k_sn, p.k_sd, rows_k, p.D, p.vec_k);
  cp_async_commit();
  stage_lse(p, lse_s, b, i0, q0);

  const int tid = threadIdx.x;
  const int c = tid % BN;   // this thread's column of the tile (fixed)
  const int rg = tid / BN;  // and its rows: rg + e * RSTEP
  bool col_ok = false;
  if (j0 + c < kl) {
    col_ok = p.key_valid == nullptr ||
             p.key_valid[static_cast<int64_t>(b) * p.N + k0 + j0 + c] != 0;
  }
  float acc[EPT];
#pragma unroll
  for (int e = 0; e < EPT; ++e) acc[e] = 0.0f;

  int qbuf = 0;
  int kbuf = 0;
  for (int h = 0; h < p.Hq; ++h) {
    cp_async_wait_all();
    __syncthreads();  // tiles of head h visible; buffers of head h-1 and ss free
    const bool next_kv = (h + 1) % G == 0;
    if (h + 1 < p.Hq) {
      load_tile_16<kBM, DPAD>(qs + (qbuf ^ 1) * Q_ELEMS, qbase + (h + 1) * p.q_sh, p.q_sn,
                              p.q_sd, rows_q_in, p.D, p.vec_q);
      if (next_kv) {
        load_tile_16<BN, DPAD>(ks + (kbuf ^ 1) * K_ELEMS, kbase + ((h + 1) / G) * p.k_sh,
                               p.k_sn, p.k_sd, rows_k, p.D, p.vec_k);
      }
      cp_async_commit();
    }
    mma_tile<T, DPAD, BN>(qs + qbuf * Q_ELEMS, ks + kbuf * K_ELEMS, ss);
    __syncthreads();  // logits tile complete
    const float* lrow = lse_s + h * kBM;
#pragma unroll
    for (int e = 0; e < EPT; ++e) {
      const int r = rg + e * RSTEP;
      acc[e] += row_prob(ss[r * LDS + c], p.scale_log2, lrow[r], col_ok);
    }
    qbuf ^= 1;
    if (next_kv) kbuf ^= 1;
  }

  if (j0 + c < kl) {
    float* out = p.scores + (static_cast<int64_t>(b) * p.R + i0) * p.Vmax + j0 + c;
#pragma unroll
    for (int e = 0; e < EPT; ++e) {
      const int r = rg + e * RSTEP;
      if (r < rows_q) out[static_cast<int64_t>(r) * p.Vmax] += acc[e];
    }
  }
}

// ---------------------------------------------------------------------------------
// lse kernel, fp16/bf16 (tensor cores): partial (max, sum) in the log2 domain per
// (item, head, row, split).
template <int DPAD>
constexpr size_t tc_lse_smem() {
  return sizeof(uint16_t) * kBM * (DPAD + 8)             // Q tile
         + 2 * sizeof(uint16_t) * kLseBN * (DPAD + 8)    // K double buffer
         + sizeof(float) * kBM * (kLseBN + 4)            // logits tile
         + 2 * kLseBN;                                   // key-valid flags (2 buffers)
}

__device__ __forceinline__ void stage_key_flags(const AccParams& p, uint8_t* flags, int b,
                                                int64_t n0) {
  const int t = threadIdx.x;
  if (t < kLseBN) {
    const int64_t n = n0 + t;
    uint8_t ok = 0;
    if (n < p.N) ok = p.key_valid == nullptr ? 1 : (p.key_valid[b * static_cast<int64_t>(p.N) + n] != 0);
    flags[t] = ok;
  }
}

template <typename T, int DPAD>
__global__ void __launch_bounds__(kThreads, 2) lse_tc_kernel(const AccParams p, float2* part) {
  constexpr int LD = DPAD + 8;
  constexpr int LDS = kLseBN + 4;
  constexpr int K_ELEMS = kLseBN * LD;
  constexpr int CPT = kLseBN / 4;  // columns per thread (4 threads per row)
  extern __shared__ __align__(128) unsigned char smem_raw[];
  uint16_t* qs = reinterpret_cast<uint16_t*>(smem_raw);    // [kBM * LD]
  uint16_t* ks = qs + kBM * LD;                             // [2][K_ELEMS]
  float* ss = reinterpret_cast<float*>(ks + 2 * K_ELEMS);  // [kBM][LDS]
  uint8_t* flags = reinterpret_cast<uint8_t*>(ss + kBM * LDS);  // [2][kLseBN]

  int bid = blockIdx.x;
  const int s = bid % p.nsplit;
  bid /= p.nsplit;
  const int rt = bid % p.rtiles;
  bid /= p.rtiles;
  const int h = bid % p.Hq;
  const int b = bid / p.Hq;
  const int i0 = rt * kBM;
  const int rows_q = min(kBM, p.R - i0);
  const int ktiles = (p.N + kLseBN - 1) / kLseBN;
  const int t_begin = s * p.tiles_per_split;
  const int t_end = min(ktiles, t_begin + p.tiles_per_split);
  const int64_t q0 = p.query_start[b];
  const int rows_q_in = static_cast<int>(max(static_cast<int64_t>(0),
                                             min(static_cast<int64_t>(rows_q), p.N - q0 - i0)));
  const uint16_t* qbase =
      static_cast<const uint16_t*>(p.q) + b * p.q_sb + h * p.q_sh + (q0 + i0) * p.q_sn;
  const uint16_t* kbase =
      static_cast<const uint16_t*>(p.k) + b * p.k_sb + (h / (p.Hq / p.Hkv)) * p.k_sh;

  const int tid = threadIdx.x;
  const int row = tid / 4;
  const int sub = tid % 4;
  const float ninf = neg_inf_f();
  float m = ninf;
  float l = 0.0f;
  bool bad = false;  // a valid logit of this row was NaN or +inf

  if (t_begin < t_end) {
    load_tile_16<kBM, DPAD>(qs, qbase, p.q_sn, p.q_sd, rows_q_in, p.D, p.vec_q);
    {
      const int64_t n0 = static_cast<int64_t>(t_begin) * kLseBN;
      const int rows_k = static_cast<int>(min(static_cast<int64_t>(kLseBN), p.N - n0));
      load_tile_16<kLseBN, DPAD>(ks, kbase + n0 * p.k_sn, p.k_sn, p.k_sd, rows_k, p.D, p.vec_k);
      stage_key_flags(p, flags, b, n0);
    }
    cp_async_commit();
  }
  int buf = 0;
  for (int t = t_begin; t < t_end; ++t) {
    cp_async_wait_all();
    __syncthreads();
    if (t + 1 < t_end) {
      const int64_t n0 = static_cast<int64_t>(t + 1) * kLseBN;
      const int rows_k = static_cast<int>(min(static_cast<int64_t>(kLseBN), p.N - n0));
      load_tile_16<kLseBN, DPAD>(ks + (buf ^ 1) * K_ELEMS, kbase + n0 * p.k_sn, p.k_sn, p.k_sd,
                                 rows_k, p.D, p.vec_k);
      stage_key_flags(p, flags + (buf ^ 1) * kLseBN, b, n0);
      cp_async_commit();
    }
    mma_tile<T, DPAD, kLseBN>(qs, ks + buf * K_ELEMS, ss);
    __syncthreads();
    const uint8_t* fl = flags + buf * kLseBN;
    float x[CPT];
    float mx = ninf;
#pragma unroll
    for (int cc = 0; cc < CPT; ++cc) {
      const int col = sub + 4 * cc;  // conflict-free: 8 rows x 4 subs hit 32 banks
      x[cc] = fl[col] ? ss[row * LDS + col] * p.scale_log2 : ninf;
      if (nan_or_pos_inf(x[cc])) {
        bad = true;
        x[cc] = ninf;
      }
      mx = fmaxf(mx, x[cc]);
    }
    const float mn = fmaxf(m, mx);
    if (mn != ninf) {
      float sum = 0.0f;
#pragma unroll
      for (int cc = 0; cc < CPT; ++cc) sum += exp2f(x[cc] - mn);
      l = l * exp2f(m - mn) + sum;
      m = mn;
    }
    buf ^= 1;
  }
  // Combine the 4 threads of a row (adjacent lanes), fixed order.
#pragma unroll
  for (int off = 1; off < 4; off <<= 1) {
    const float mo = __shfl_xor_sync(kFullMask, m, off);
    const float lo = __shfl_xor_sync(kFullMask, l, off);
    bad |= __shfl_xor_sync(kFullMask, static_cast<int>(bad), off) != 0;
    const float mn = fmaxf(m, mo);
    if (mn != ninf) {
      l = l * exp2f(m - mn) + lo * exp2f(mo - mn);
      m = mn;
    }
  }
  if (sub == 0 && row < rows_q) {
    part[((static_cast<int64_t>(b) * p.Hq + h) * p.nsplit + s) * p.R + i0 + row] =
        bad ? make_float2(pos_inf_f(), 0.0f) : make_float2(m, l);
  }
}

// ---------------------------------------------------------------------------------
// fp32 kernels: FFMA register tiles, the head dim streamed in chunks of kDK through
// transposed shared tiles (pitch +1 against bank conflicts).
template <int BN>
struct F32Tile {
  static constexpr int TX = BN / 4;           // threads along the keys
  static constexpr int TY = kThreads / TX;    // threads along the rows
  static constexpr int RPT = kBM / TY;        // rows per thread (columns per thread: 4)
};

// s[r][c] = Q[ty + TY*r] . K[tx + TX*c] (fp32). Starts and ends with the shared tiles
// free to reuse only after a __syncthreads (it syncs before writing them).
template <int BN>
__device__ __forceinline__ void f32_tile_scores(float (&s)[F32Tile<BN>::RPT][4], float* qt,
                                                float* kt, const float* qsrc, int64_t q_rs,
                                                int64_t q_ds, int rows_q, const float* ksrc,
                                                int64_t k_rs, int64_t k_ds, int rows_k,
                                                int D) {
  using L = F32Tile<BN>;
  const int tx = threadIdx.x % L::TX;
  const int ty = threadIdx.x / L::TX;
#pragma unroll
  for (int r = 0; r < L::RPT; ++r)
#pragma unroll
    for (int c = 0; c < 4; ++c) s[r][c] = 0.0f;
  for (int d0 = 0; d0 < D; d0 += kDK) {
    __syncthreads();
    for (int idx = threadIdx.x; idx < kBM * kDK; idx += kThreads) {
      const int r = idx / kDK;
      const int d = idx - r * kDK;
      float v = 0.0f;
      if (r < rows_q && d0 + d < D) v = qsrc[r * q_rs + (d0 + d) * q_ds];
      qt[d * (kBM + 1) + r] = v;
    }
    for (int idx = threadIdx.x; idx < BN * kDK; idx += kThreads) {
      const int r = idx / kDK;
      const int d = idx - r * kDK;
      float v = 0.0f;
      if (r < rows_k && d0 + d < D) v = ksrc[r * k_rs + (d0 + d) * k_ds];
      kt[d * (BN + 1) + r] = v;
    }
    __syncthreads();
#pragma unroll 8
    for (int d = 0; d < kDK; ++d) {
      float a[L::RPT];
      float bb[4];
#pragma unroll
      for (int r = 0; r < L::RPT; ++r) a[r] = qt[d * (kBM + 1) + ty + L::TY * r];
#pragma unroll
      for (int c = 0; c < 4; ++c) bb[c] = kt[d * (BN + 1) + tx + L::TX * c];
#pragma unroll
      for (int r = 0; r < L::RPT; ++r)
#pragma unroll
        for (int c = 0; c < 4; ++c) s[r][c] = fmaf(a[r], bb[c], s[r][c]);
    }
  }
}

template <int BN>
constexpr size_t f32_smem_static() {
  return sizeof(float) * kDK * (kBM + 1) + sizeof(float) * kDK * (BN + 1);
}

template <int BN>
__global__ void __launch_bounds__(kThreads) score_f32_kernel(const AccParams p) {
  using L = F32Tile<BN>;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  float* qt = reinterpret_cast<float*>(smem_raw);  // [kDK][kBM + 1]
  float* kt = qt + kDK * (kBM + 1);                // [kDK][BN + 1]
  float* lse_s = kt + kDK * (BN + 1);              // [Hq][kBM]

  int bid = blockIdx.x;
  const int vt = bid % p.vtiles;
  bid /= p.vtiles;
  const int rt = bid % p.rtiles;
  const int b = bid / p.rtiles;
  const int64_t q0 = p.query_start[b];
  const int64_t k0 = p.key_start[b];
  // key_len <= Vmax and the spans inside [0, N) are the contract; clamping only keeps a
  // broken call from touching memory out of bounds.
  const int64_t kl = min(p.key_len[b], min(static_cast<int64_t>(p.Vmax), p.N - k0));
  const int j0 = vt * BN;
  if (j0 >= kl) return;
  const int i0 = rt * kBM;
  const int rows_q = min(kBM, p.R - i0);
  const int rows_q_in = static_cast<int>(max(static_cast<int64_t>(0),
                                             min(static_cast<int64_t>(rows_q), p.N - q0 - i0)));
  const int rows_k = static_cast<int>(min(static_cast<int64_t>(BN), kl - j0));
  const int G = p.Hq / p.Hkv;
  const float* qbase = static_cast<const float*>(p.q) + b * p.q_sb + (q0 + i0) * p.q_sn;
  const float* kbase = static_cast<const float*>(p.k) + b * p.k_sb + (k0 + j0) * p.k_sn;

  stage_lse(p, lse_s, b, i0, q0);  // read after f32_tile_scores' barriers

  const int tx = threadIdx.x % L::TX;
  const int ty = threadIdx.x / L::TX;
  bool col_ok[4];
#pragma unroll
  for (int c = 0; c < 4; ++c) {
    const int j = j0 + tx + L::TX * c;
    col_ok[c] = j < kl && (p.key_valid == nullptr ||
                           p.key_valid[static_cast<int64_t>(b) * p.N + k0 + j] != 0);
  }
  float acc[L::RPT][4];
#pragma unroll
  for (int r = 0; r < L::RPT; ++r)
#pragma unroll
    for (int c = 0; c < 4; ++c) acc[r][c] = 0.0f;

  for (int h = 0; h < p.Hq; ++h) {
    float s[L::RPT][4];
    f32_tile_scores<BN>(s, qt, kt, qbase + h * p.q_sh, p.q_sn, p.q_sd, rows_q_in,
                        kbase + (h / G) * p.k_sh, p.k_sn, p.k_sd, rows_k, p.D);
#pragma unroll
    for (int r = 0; r < L::RPT; ++r) {
      const float l2 = lse_s[h * kBM + ty + L::TY * r];
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        acc[r][c] += row_prob(s[r][c], p.scale_log2, l2, col_ok[c]);
      }
    }
  }

#pragma unroll
  for (int r = 0; r < L::RPT; ++r) {
    const int rr = ty + L::TY * r;
    if (rr >= rows_q) continue;
    float* out = p.scores + (static_cast<int64_t>(b) * p.R + i0 + rr) * p.Vmax + j0;
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      const int cc = tx + L::TX * c;
      if (j0 + cc < kl) out[cc] += acc[r][c];
    }
  }
}

__global__ void __launch_bounds__(kThreads) lse_f32_kernel(const AccParams p, float2* part) {
  using L = F32Tile<kLseBN>;
  __shared__ float qt[kDK * (kBM + 1)];
  __shared__ float kt[kDK * (kLseBN + 1)];

  int bid = blockIdx.x;
  const int s = bid % p.nsplit;
  bid /= p.nsplit;
  const int rt = bid % p.rtiles;
  bid /= p.rtiles;
  const int h = bid % p.Hq;
  const int b = bid / p.Hq;
  const int i0 = rt * kBM;
  const int rows_q = min(kBM, p.R - i0);
  const int ktiles = (p.N + kLseBN - 1) / kLseBN;
  const int t_begin = s * p.tiles_per_split;
  const int t_end = min(ktiles, t_begin + p.tiles_per_split);
  const int64_t q0 = p.query_start[b];
  const int rows_q_in = static_cast<int>(max(static_cast<int64_t>(0),
                                             min(static_cast<int64_t>(rows_q), p.N - q0 - i0)));
  const float* qbase =
      static_cast<const float*>(p.q) + b * p.q_sb + h * p.q_sh + (q0 + i0) * p.q_sn;
  const float* kbase =
      static_cast<const float*>(p.k) + b * p.k_sb + (h / (p.Hq / p.Hkv)) * p.k_sh;
  const int tx = threadIdx.x % L::TX;
  const int ty = threadIdx.x / L::TX;
  const float ninf = neg_inf_f();
  float m[L::RPT];
  float l[L::RPT];
  bool bad[L::RPT];  // a valid logit of the row was NaN or +inf
#pragma unroll
  for (int r = 0; r < L::RPT; ++r) {
    m[r] = ninf;
    l[r] = 0.0f;
    bad[r] = false;
  }
  for (int t = t_begin; t < t_end; ++t) {
    const int64_t n0 = static_cast<int64_t>(t) * kLseBN;
    const int rows_k = static_cast<int>(min(static_cast<int64_t>(kLseBN), p.N - n0));
    float sc[L::RPT][4];
    f32_tile_scores<kLseBN>(sc, qt, kt, qbase, p.q_sn, p.q_sd, rows_q_in, kbase + n0 * p.k_sn,
                            p.k_sn, p.k_sd, rows_k, p.D);
    bool ok[4];
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      const int64_t n = n0 + tx + L::TX * c;
      ok[c] = n < p.N && (p.key_valid == nullptr ||
                          p.key_valid[static_cast<int64_t>(b) * p.N + n] != 0);
    }
#pragma unroll
    for (int r = 0; r < L::RPT; ++r) {
      float x[4];
      float mx = ninf;
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        x[c] = ok[c] ? sc[r][c] * p.scale_log2 : ninf;
        if (nan_or_pos_inf(x[c])) {
          bad[r] = true;
          x[c] = ninf;
        }
        mx = fmaxf(mx, x[c]);
      }
      const float mn = fmaxf(m[r], mx);
      if (mn != ninf) {
        float sum = 0.0f;
#pragma unroll
        for (int c = 0; c < 4; ++c) sum += exp2f(x[c] - mn);
        l[r] = l[r] * exp2f(m[r] - mn) + sum;
        m[r] = mn;
      }
    }
  }
  // Combine the TX lanes of a row (a power of two within the warp), fixed order.
#pragma unroll
  for (int r = 0; r < L::RPT; ++r) {
#pragma unroll
    for (int off = 1; off < L::TX; off <<= 1) {
      const float mo = __shfl_xor_sync(kFullMask, m[r], off);
      const float lo = __shfl_xor_sync(kFullMask, l[r], off);
      bad[r] |= __shfl_xor_sync(kFullMask, static_cast<int>(bad[r]), off) != 0;
      const float mn = fmaxf(m[r], mo);
      if (mn != ninf) {
        l[r] = l[r] * exp2f(m[r] - mn) + lo * exp2f(mo - mn);
        m[r] = mn;
      }
    }
    const int rr = ty + L::TY * r;
    if (tx == 0 && rr < rows_q) {
      part[((static_cast<int64_t>(b) * p.Hq + h) * p.nsplit + s) * p.R + i0 + rr] =
          bad[r] ? make_float2(pos_inf_f(), 0.0f) : make_float2(m[r], l[r]);
    }
  }
}

// ---------------------------------------------------------------------------------
// Host side.
bool vec16_ok(const at::Tensor& t) {
  // 16-byte cp.async of 8 consecutive 16-bit elements along D.
  if (t.element_size() != 2) return false;
  if (reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 != 0) return false;
  if (t.size(3) % 8 != 0 || (t.size(3) > 1 && t.stride(3) != 1)) return false;
  for (int d = 0; d < 3; ++d) {
    if (t.size(d) > 1 && t.stride(d) % 8 != 0) return false;
  }
  return true;
}

template <typename T, int DPAD>
void launch_lse_tc(const AccParams& p, float2* part, int blocks, cudaStream_t stream) {
  const size_t smem = tc_lse_smem<DPAD>();
  TORCH_CHECK(smem <= max_dynamic_smem_optin(), "dvtp.accumulate_visual_scores: head dim ",
              p.D, " needs ", smem, " bytes of shared memory, the device allows ",
              max_dynamic_smem_optin());
  auto kernel = lse_tc_kernel<T, DPAD>;
  set_dynamic_smem(kernel, smem);
  kernel<<<blocks, kThreads, smem, stream>>>(p, part);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T, int DPAD, int BN>
void launch_score_tc(AccParams p, int64_t B, size_t smem, cudaStream_t stream) {
  p.vtiles = (p.Vmax + BN - 1) / BN;
  const int64_t blocks = B * p.rtiles * p.vtiles;
  TORCH_CHECK(blocks <= INT32_MAX, "dvtp.accumulate_visual_scores: grid too large");
  auto kernel = score_tc_kernel<T, DPAD, BN>;
  set_dynamic_smem(kernel, smem);
  kernel<<<static_cast<unsigned>(blocks), kThreads, smem, stream>>>(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Choose the key tile (BN = 64 unless that leaves SMs idle or does not fit) and launch.
template <typename T, int DPAD>
void run_tc(const AccParams& p, int64_t B, bool need_lse, float2* part, int lse_blocks,
            cudaStream_t stream) {
  if (need_lse) launch_lse_tc<T, DPAD>(p, part, lse_blocks, stream);
  const size_t lse_bytes = sizeof(float) * static_cast<size_t>(p.Hq) * kBM;
  const size_t smem64 = tc_score_smem_static<DPAD, 64>() + lse_bytes;
  const size_t smem32 = tc_score_smem_static<DPAD, 32>() + lse_bytes;
  const size_t limit = max_dynamic_smem_optin();
  const int64_t blocks64 = B * p.rtiles * ((p.Vmax + 63) / 64);
  const bool use64 = smem64 <= limit && blocks64 >= num_sms();
  if (use64) {
    launch_score_tc<T, DPAD, 64>(p, B, smem64, stream);
  } else {
    TORCH_CHECK(smem32 <= limit, "dvtp.accumulate_visual_scores: ", p.Hq,
                " query heads with head dim ", p.D, " need ", smem32,
                " bytes of shared memory, the device allows ", limit);
    launch_score_tc<T, DPAD, 32>(p, B, smem32, stream);
  }
}

template <typename T>
void dispatch_tc(const AccParams& p, int64_t B, bool need_lse, float2* part, int lse_blocks,
                 cudaStream_t stream) {
  if (p.D <= 64) {
    run_tc<T, 64>(p, B, need_lse, part, lse_blocks, stream);
  } else if (p.D <= 128) {
    run_tc<T, 128>(p, B, need_lse, part, lse_blocks, stream);
  } else {
    run_tc<T, 256>(p, B, need_lse, part, lse_blocks, stream);
  }
}

void dispatch_f32(AccParams p, int64_t B, bool need_lse, float2* part, int lse_blocks,
                  cudaStream_t stream) {
  if (need_lse) {
    lse_f32_kernel<<<lse_blocks, kThreads, 0, stream>>>(p, part);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  const size_t lse_bytes = sizeof(float) * static_cast<size_t>(p.Hq) * kBM;
  const size_t limit = max_dynamic_smem_optin();
  const int64_t blocks64 = B * p.rtiles * ((p.Vmax + 63) / 64);
  if (blocks64 >= num_sms()) {
    const size_t smem = f32_smem_static<64>() + lse_bytes;
    TORCH_CHECK(smem <= limit, "dvtp.accumulate_visual_scores: too many query heads (", p.Hq,
                ") for shared memory");
    p.vtiles = (p.Vmax + 63) / 64;
    auto kernel = score_f32_kernel<64>;
    set_dynamic_smem(kernel, smem);
    kernel<<<static_cast<unsigned>(B * p.rtiles * p.vtiles), kThreads, smem, stream>>>(p);
  } else {
    const size_t smem = f32_smem_static<32>() + lse_bytes;
    TORCH_CHECK(smem <= limit, "dvtp.accumulate_visual_scores: too many query heads (", p.Hq,
                ") for shared memory");
    p.vtiles = (p.Vmax + 31) / 32;
    auto kernel = score_f32_kernel<32>;
    set_dynamic_smem(kernel, smem);
    kernel<<<static_cast<unsigned>(B * p.rtiles * p.vtiles), kThreads, smem, stream>>>(p);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void accumulate_visual_scores_cuda(const at::Tensor& q, const at::Tensor& k, at::Tensor& scores,
                                   const at::Tensor& query_start, const at::Tensor& key_start,
                                   const at::Tensor& key_len, double scale,
                                   const std::optional<at::Tensor>& lse,
                                   const std::optional<at::Tensor>& key_valid) {
  constexpr const char* op = "dvtp.accumulate_visual_scores";
  TORCH_CHECK(q.is_cuda(), op, ": q must be a CUDA tensor");
  const at::Device device = q.device();
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4, op, ": q and k must be 4-D [B, H, N, D], got ",
              q.sizes(), " and ", k.sizes());
  TORCH_CHECK(k.device() == device && scores.device() == device, op,
              ": q, k and scores must be on one device");
  const auto dtype = q.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16, op,
              ": q must be float32, float16 or bfloat16, got ", dtype);
  TORCH_CHECK(k.scalar_type() == dtype, op, ": k must have q's dtype");
  const int64_t B = q.size(0), Hq = q.size(1), N = q.size(2), D = q.size(3);
  const int64_t Hkv = k.size(1);
  TORCH_CHECK(k.size(0) == B && k.size(2) == N && k.size(3) == D, op,
              ": k must be [B, Hkv, N, D] matching q ", q.sizes(), ", got ", k.sizes());
  TORCH_CHECK(Hkv >= 1 && Hq % Hkv == 0, op, ": Hq (", Hq, ") must be a multiple of Hkv (",
              Hkv, ")");
  TORCH_CHECK(D >= 1 && D <= 256, op, ": head dim must be in [1, 256], got ", D);
  TORCH_CHECK(scores.scalar_type() == at::kFloat && scores.dim() == 3 && scores.size(0) == B &&
                  scores.is_contiguous(),
              op, ": scores must be a contiguous float32 [B, R, Vmax] tensor");
  const int64_t R = scores.size(1), Vmax = scores.size(2);
  check_index_vector(query_start, "query_start", B, device);
  check_index_vector(key_start, "key_start", B, device);
  check_index_vector(key_len, "key_len", B, device);
  if (lse.has_value()) {
    const at::Tensor& t = *lse;
    TORCH_CHECK(t.device() == device && t.scalar_type() == at::kFloat && t.dim() == 3 &&
                    t.size(0) == B && t.size(1) == Hq && t.size(2) == N,
                op, ": lse must be float32 [B, Hq, N] on q's device, got ", t.sizes());
  }
  if (key_valid.has_value()) {
    const at::Tensor& t = *key_valid;
    TORCH_CHECK(t.device() == device && t.scalar_type() == at::kBool && t.dim() == 2 &&
                    t.size(0) == B && t.size(1) == N && t.is_contiguous(),
                op, ": key_valid must be a contiguous bool [B, N] tensor on q's device");
  }
  TORCH_CHECK(Hq < (1 << 20) && N < INT32_MAX && R < INT32_MAX && Vmax < INT32_MAX, op,
              ": sizes too large");
  if (B == 0 || Hq == 0 || R == 0 || Vmax == 0) return;

  const c10::cuda::CUDAGuard guard(device);
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();

  AccParams p{};
  p.q = q.data_ptr();
  p.k = k.data_ptr();
  p.scores = scores.data_ptr<float>();
  p.query_start = query_start.data_ptr<int64_t>();
  p.key_start = key_start.data_ptr<int64_t>();
  p.key_len = key_len.data_ptr<int64_t>();
  p.key_valid = key_valid.has_value()
                    ? reinterpret_cast<const uint8_t*>(key_valid->data_ptr<bool>())
                    : nullptr;
  p.q_sb = q.stride(0);
  p.q_sh = q.stride(1);
  p.q_sn = q.stride(2);
  p.q_sd = q.stride(3);
  p.k_sb = k.stride(0);
  p.k_sh = k.stride(1);
  p.k_sn = k.stride(2);
  p.k_sd = k.stride(3);
  p.Hq = static_cast<int>(Hq);
  p.Hkv = static_cast<int>(Hkv);
  p.N = static_cast<int>(N);
  p.D = static_cast<int>(D);
  p.R = static_cast<int>(R);
  p.Vmax = static_cast<int>(Vmax);
  p.rtiles = static_cast<int>((R + kBM - 1) / kBM);
  p.scale_log2 = static_cast<float>(scale * 1.4426950408889634);
  p.vec_q = vec16_ok(q);
  p.vec_k = vec16_ok(k);

  const bool need_lse = !lse.has_value();
  at::Tensor part;
  int lse_blocks = 0;
  if (need_lse) {
    // Enough (item, head, row tile, key split) blocks for ~2 waves.
    const int64_t ktiles = (N + kLseBN - 1) / kLseBN;
    const int64_t base = B * Hq * p.rtiles;
    const int64_t want = (2 * static_cast<int64_t>(num_sms()) + base - 1) / base;
    int64_t nsplit = std::max<int64_t>(1, std::min<int64_t>({want, ktiles, 64}));
    const int64_t tps = (ktiles + nsplit - 1) / nsplit;
    nsplit = (ktiles + tps - 1) / tps;
    TORCH_CHECK(base * nsplit <= INT32_MAX, op, ": grid too large");
    p.nsplit = static_cast<int>(nsplit);
    p.tiles_per_split = static_cast<int>(tps);
    lse_blocks = static_cast<int>(base * nsplit);
    part = at::empty({B, Hq, nsplit, R, 2}, q.options().dtype(at::kFloat));
    p.lse_part = reinterpret_cast<const float2*>(part.data_ptr<float>());
  } else {
    p.lse = lse->data_ptr<float>();
    p.lse_sb = lse->stride(0);
    p.lse_sh = lse->stride(1);
    p.lse_sn = lse->stride(2);
    p.nsplit = 1;
  }
  float2* part_ptr = need_lse ? reinterpret_cast<float2*>(part.data_ptr<float>()) : nullptr;

  switch (dtype) {
    case at::kHalf:
      dispatch_tc<__half>(p, B, need_lse, part_ptr, lse_blocks, stream);
      break;
    case at::kBFloat16:
      TORCH_CHECK(at::cuda::getCurrentDeviceProperties()->major >= 8, op,
                  ": bfloat16 inputs need a GPU of compute capability 8.0 or newer");
      dispatch_tc<__nv_bfloat16>(p, B, need_lse, part_ptr, lse_blocks, stream);
      break;
    default:
      dispatch_f32(p, B, need_lse, part_ptr, lse_blocks, stream);
      break;
  }
}

}  // namespace
}  // namespace cuda
}  // namespace dvtp

TORCH_LIBRARY_IMPL(dvtp, CUDA, m) {
  m.impl("accumulate_visual_scores", &dvtp::cuda::accumulate_visual_scores_cuda);
}
