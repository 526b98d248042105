// dvtp::accumulate_visual_scores, CPU kernel.
//
// scores[b, i, j] += sum_h softmax_h(scale q k^T)[query_start[b] + i, key_start[b] + j]
// for j < key_len[b] (semantics: dvtp_kernels/reference.py). Arguments are the
// normalised ones of the Python wrapper; the checks below only guard memory safety.
//
// Work items are (batch item, block of Rc query rows); one at::parallel_for-style loop
// hands each thread a contiguous range of items, and each item is computed entirely by
// one thread, which then adds it into the rows of `scores` it owns: no two threads ever
// write the same element, the order of every sum is fixed, Rc depends on the shapes only
// (never on the thread count) and MKL is pinned to its one-thread plan in the workers
// (SequentialBlas), and every thread computes in the IEEE default floating-point
// environment (IeeeFloatEnv: no flush-to-zero, round to nearest, whatever the caller or
// a worker's creator set), so the result is bit-identical from run to run and for any
// number of threads (for a given build and CPU).
//
// Per item and query head h (kv head h / group), with a per-thread float32 logits tile
// L [Rc, Ncols] and accumulator A [Rc, Vmax]:
//   lse not given:  L = scale * Q_h K_h^T over all N keys (one GEMM), invalid keys
//                   -> -inf, m = rowmax, L = exp(L - m), s = rowsum,
//                   A[:, :kl] += L[:, k0:k0+kl] * (1 / s)
//   lse given:      L = scale * Q_h K_h[k0:k0+kl]^T (visual keys only), invalid keys
//                   -> -inf, A[:, :kl] += exp(L - lse)
// Non-finite normalisers (dvtp_kernels/reference.py, NONFINITE_RULES): a row whose
// normaliser is -inf (no valid key) adds 0; NaN or +inf (a NaN/inf logit among its valid
// keys, or such a given lse) makes every visual entry of the row NaN. The heavy parts
// are ATen's vectorised, runtime-dispatched kernels (GEMM, exp, reductions), which run
// single-threaded inside the parallel region. float16/bfloat16 inputs are upcast into
// float32 tiles: the block's query rows ([Rc, D]) and the keys in chunks of kKeyChunk rows, so no float32
// copy of k is ever made. Extra memory: per thread O(Rc * (N + Vmax + D)), nothing of
// size N*N or [B, H, R, N].
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <vector>

#include "cpu_utils.h"

namespace dvtp::cpu {
namespace {

constexpr int64_t kMaxRowsPerItem = 64;   // rows of one work item (GEMM M)
constexpr int64_t kMinRowsPerItem = 16;   // below this GEMMs get inefficient
constexpr int64_t kTileElems = 1 << 22;   // soft cap on the [Rc, Ncols] tile (16 MiB)
constexpr int64_t kKeyChunk = 256;        // keys upcast at a time for fp16/bf16
// Row blocks are sized for this many work items in all (as if for 4 threads), whatever
// the actual thread count: the blocking, hence every GEMM and so every rounding, is then
// independent of at::get_num_threads(). (4: on 2 threads as fast as blocks sized for 2
// threads, within noise, at the LLaDA-V shapes of benchmarks/. Items: at least 4 (or one
// per batch item with visual tokens), each item's rows in blocks of at most 64.)
constexpr int64_t kTargetItems = 4;

struct Item {
  int64_t b;
  int64_t r0;
  int64_t rows;
};

void check_index_vector(const at::Tensor& t, const char* name, int64_t B) {
  TORCH_CHECK(t.device().is_cpu(), "dvtp::accumulate_visual_scores (CPU): ", name,
              " must be on the CPU");
  TORCH_CHECK(t.scalar_type() == at::kLong && t.dim() == 1 && t.size(0) == B && t.is_contiguous(),
              "dvtp::accumulate_visual_scores (CPU): ", name,
              " must be a contiguous int64 tensor of shape [B]");
}

void accumulate_visual_scores_cpu(const at::Tensor& q, const at::Tensor& k,
                                  const at::Tensor& scores, const at::Tensor& query_start,
                                  const at::Tensor& key_start, const at::Tensor& key_len,
                                  double scale, const std::optional<at::Tensor>& lse,
                                  const std::optional<at::Tensor>& key_valid) {
  constexpr const char* op = "dvtp::accumulate_visual_scores (CPU): ";
  TORCH_CHECK(q.device().is_cpu() && k.device().is_cpu() && scores.device().is_cpu(), op,
              "q, k and scores must be CPU tensors");
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4, op, "q and k must be 4-D [B, H, N, D]");
  const auto dtype = q.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16, op,
              "q must be float32, float16 or bfloat16, got ", dtype);
  TORCH_CHECK(k.scalar_type() == dtype, op, "k must have q's dtype");
  const int64_t B = q.size(0), Hq = q.size(1), N = q.size(2), D = q.size(3);
  const int64_t Hkv = k.size(1);
  TORCH_CHECK(k.size(0) == B && k.size(2) == N && k.size(3) == D, op,
              "k must be [B, Hkv, N, D] matching q");
  TORCH_CHECK(Hkv > 0 && Hq % Hkv == 0, op, "Hq must be a multiple of Hkv");
  TORCH_CHECK(scores.scalar_type() == at::kFloat && scores.dim() == 3 && scores.size(0) == B &&
                  scores.is_contiguous(),
              op, "scores must be a contiguous float32 [B, R, Vmax] tensor");
  const int64_t R = scores.size(1), Vmax = scores.size(2);
  check_index_vector(query_start, "query_start", B);
  check_index_vector(key_start, "key_start", B);
  check_index_vector(key_len, "key_len", B);
  at::Tensor lse_t;
  if (lse.has_value()) {
    lse_t = *lse;
    TORCH_CHECK(lse_t.device().is_cpu() && lse_t.scalar_type() == at::kFloat && lse_t.dim() == 3 &&
                    lse_t.size(0) == B && lse_t.size(1) == Hq && lse_t.size(2) == N,
                op, "lse must be a float32 CPU tensor of shape [B, Hq, N]");
  }
  at::Tensor invalid;  // bool [B, N]: true where a key is padding
  if (key_valid.has_value()) {
    const at::Tensor& kv = *key_valid;
    TORCH_CHECK(kv.device().is_cpu() && kv.scalar_type() == at::kBool && kv.dim() == 2 &&
                    kv.size(0) == B && kv.size(1) == N,
                op, "key_valid must be a bool CPU tensor of shape [B, N]");
    invalid = kv.logical_not();
  }

  const int64_t* qs = query_start.data_ptr<int64_t>();
  const int64_t* ks = key_start.data_ptr<int64_t>();
  const int64_t* kls = key_len.data_ptr<int64_t>();
  std::vector<uint8_t> has_invalid(B, 0);
  int64_t active = 0;
  int64_t max_kl = 0;
  for (int64_t b = 0; b < B; ++b) {
    TORCH_CHECK(qs[b] >= 0 && qs[b] + R <= N, op, "query_start[", b, "] + R must lie in [0, N]");
    TORCH_CHECK(kls[b] >= 0 && kls[b] <= Vmax, op, "key_len[", b, "] must lie in [0, Vmax]");
    TORCH_CHECK(ks[b] >= 0 && ks[b] + kls[b] <= N, op,
                "key_start[", b, "] + key_len[", b, "] must lie in [0, N]");
    if (kls[b] > 0 && R > 0) {
      ++active;
      max_kl = std::max(max_kl, kls[b]);
      if (invalid.defined()) {
        has_invalid[b] = invalid[b].any().item<bool>() ? 1 : 0;
      }
    }
  }
  if (active == 0) {
    return;
  }

  const bool with_lse = lse_t.defined();
  const int64_t ncols = with_lse ? max_kl : N;  // width of the logits tile
  // Rows per work item: about kTargetItems items, GEMMs not too thin, tile bounded.
  const int64_t items_per_b = std::max<int64_t>(1, (kTargetItems + active - 1) / active);
  int64_t rc = (R + items_per_b - 1) / items_per_b;
  rc = std::max(rc, kMinRowsPerItem);
  rc = std::min(rc, kMaxRowsPerItem);
  rc = std::min(rc, std::max<int64_t>(kMinRowsPerItem, kTileElems / std::max<int64_t>(ncols, 1)));
  rc = std::max<int64_t>(1, std::min(rc, R));
  const int64_t blocks = (R + rc - 1) / rc;
  rc = (R + blocks - 1) / blocks;  // equal blocks: no thin last block

  std::vector<Item> items;
  for (int64_t b = 0; b < B; ++b) {
    if (kls[b] == 0) continue;
    for (int64_t r0 = 0; r0 < R; r0 += rc) {
      items.push_back({b, r0, std::min(rc, R - r0)});
    }
  }

  const bool low_precision = dtype != at::kFloat;
  const int64_t group = Hq / Hkv;
  const auto f32 = q.options().dtype(at::kFloat);
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  constexpr float kPosInf = std::numeric_limits<float>::infinity();
  const float kNaN = std::numeric_limits<float>::quiet_NaN();

  parallel_for(0, static_cast<int64_t>(items.size()), 1, [&](int64_t begin, int64_t end) {
    // Same rounding and subnormal handling on every thread, whatever its FP state.
    IeeeFloatEnv ieee;
    // Same GEMM plan (and rounding) on every thread, for any thread count.
    SequentialBlas blas;
    // Per-thread scratch, reused by all items of this thread.
    at::Tensor tile = at::empty({rc, ncols}, f32);
    at::Tensor acc = at::empty({rc, Vmax}, f32);
    at::Tensor q_f32, k_f32;
    if (low_precision) {
      q_f32 = at::empty({rc, D}, f32);
      k_f32 = at::empty({std::min(kKeyChunk, std::max<int64_t>(N, 1)), D}, f32);
    }
    at::Tensor norm = at::empty({rc}, f32);  // per-row value subtracted before exp
    std::vector<uint8_t> bad(rc);     // this head: the row's normaliser is not finite
    std::vector<uint8_t> poison(rc);  // any head: the row's normaliser was NaN or +inf

    for (int64_t it = begin; it < end; ++it) {
      const Item& item = items[it];
      const int64_t b = item.b, rows = item.rows;
      const int64_t q0 = qs[b] + item.r0, k0 = ks[b], kl = kls[b];
      const int64_t c0 = with_lse ? k0 : 0;          // first key column of the tile
      const int64_t cn = with_lse ? kl : N;          // keys in the tile
      at::Tensor L = tile.narrow(0, 0, rows).narrow(1, 0, cn);
      at::Tensor A = acc.narrow(0, 0, rows).narrow(1, 0, kl);
      at::Tensor nrm = norm.narrow(0, 0, rows);
      A.zero_();
      std::fill(poison.begin(), poison.end(), 0);
      at::Tensor inv_b;
      if (has_invalid[b]) {
        inv_b = invalid[b].narrow(0, c0, cn).unsqueeze(0);  // [1, cn]
      }
      const at::Tensor qb = q[b];
      const at::Tensor kb = k[b];

      for (int64_t h = 0; h < Hq; ++h) {
        at::Tensor qh = qb[h].narrow(0, q0, rows);       // [rows, D], any strides
        at::Tensor kh = kb[h / group].narrow(0, c0, cn); // [cn, D], any strides
        // L = scale * qh @ kh^T (beta = 0: L's previous contents are ignored).
        blas.pin();
        if (!low_precision) {
          at::addmm_out(L, L, qh, kh.t(), /*beta=*/0, /*alpha=*/scale);
        } else {
          at::Tensor qf = q_f32.narrow(0, 0, rows);
          qf.copy_(qh);
          for (int64_t j0 = 0; j0 < cn; j0 += kKeyChunk) {
            const int64_t jn = std::min(kKeyChunk, cn - j0);
            at::Tensor kf = k_f32.narrow(0, 0, jn);
            kf.copy_(kh.narrow(0, j0, jn));
            blas.pin();
            at::Tensor Lj = L.narrow(1, j0, jn);
            at::addmm_out(Lj, Lj, qf, kf.t(), /*beta=*/0, /*alpha=*/scale);
          }
        }
        if (inv_b.defined()) {
          L.masked_fill_(inv_b, kNegInf);
        }

        // Normaliser per row: the row max (lse not given; NaN if any valid logit is NaN,
        // +inf if one is +inf, as the lse would be) or the given lse. Rows whose normaliser
        // is not finite add nothing here: their tile row is set to -inf and the normaliser
        // to 0, so exp gives exact zeros without inf - inf = NaN; NaN/+inf ones are
        // poisoned and set to NaN once all heads are summed.
        if (with_lse) {
          nrm.copy_(lse_t[b][h].narrow(0, q0, rows));
        } else {
          at::amax_out(nrm, L, {1}, /*keepdim=*/false);
        }
        float* np = nrm.data_ptr<float>();
        bool any_bad = false;
        for (int64_t r = 0; r < rows; ++r) {
          const float v = np[r];
          bad[r] = std::isfinite(v) ? 0 : 1;
          if (bad[r]) {
            any_bad = true;
            if (std::isnan(v) || v == kPosInf) poison[r] = 1;
            np[r] = 0.f;
          }
        }
        if (any_bad) {
          for (int64_t r = 0; r < rows; ++r) {
            if (bad[r]) L[r].fill_(kNegInf);
          }
        }
        L.sub_(nrm.unsqueeze(1));
        L.exp_();
        if (with_lse) {
          A.add_(L);
        } else {
          // Row sums s >= 1 (the max element gives exp(0) = 1) on good rows; bad rows
          // are all zero, so their weight is irrelevant but must stay finite.
          at::sum_out(nrm, L, {1}, /*keepdim=*/false);
          for (int64_t r = 0; r < rows; ++r) {
            np[r] = bad[r] ? 0.f : 1.f / np[r];
          }
          A.addcmul_(L.narrow(1, k0, kl), nrm.unsqueeze(1));
        }
      }
      for (int64_t r = 0; r < rows; ++r) {
        if (poison[r]) A[r].fill_(kNaN);
      }
      // This item's rows of scores are written by this thread only.
      scores[b].narrow(0, item.r0, rows).narrow(1, 0, kl).add_(A);
    }
  });
}

}  // namespace
}  // namespace dvtp::cpu

TORCH_LIBRARY_IMPL(dvtp, CPU, m) {
  m.impl("accumulate_visual_scores", &dvtp::cpu::accumulate_visual_scores_cpu);
}
