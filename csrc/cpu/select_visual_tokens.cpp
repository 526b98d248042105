// dvtp::select_visual_tokens, CPU kernel. Semantics: dvtp_kernels/reference.py.
//
// Two parallel passes:
//  1. Importance: per item with visual tokens, the float64 sum over its selected rows
//     (row_mask, added in increasing row order) of scores[b, i, j], j < key_len[b], kept as
//     an order-preserving uint64 key. The work is cut into (item, column block) tasks so
//     that a single item (B = 1, one request) still uses every thread; each column is summed
//     by one thread in row order, so the sums do not depend on the thread count.
//  2. Per item (items in parallel): nan_item[b] = some key is the NaN key; the
//     keep_count-th largest key T by std::nth_element on a copy of the keys; then one pass in
//     index order keeps every key > T and the first keep - #{key > T} keys == T. That is
//     "higher wins, ties to the lower index", and the kept indices come out ascending with
//     no sort. The same pass writes both output rows in full (outputs start uninitialised).
// NaN is detected here, in the pass that reads scores anyway, so the Python wrapper needs
// no separate pass over scores; a NaN item still gets a well-defined (total) order, NaN
// ranking highest, but the wrapper refuses it.
// Scratch (keys, selected-row lists, task list, the nth_element copy) lives in thread-local
// buffers reused across calls: no per-call allocation besides the three outputs.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <tuple>
#include <vector>

#include "cpu_utils.h"

namespace dvtp::cpu {
namespace {

// Columns per importance task: 4 KiB of float64 accumulators stay in L1 while the
// selected rows stream through.
constexpr int64_t kBlock = 512;
// Below this many score reads (selected rows x columns, whole call) a pass runs on the
// calling thread: waking the pool costs more than it saves.
constexpr int64_t kParallelReads = int64_t{1} << 17;
constexpr uint64_t kNanKey = ~uint64_t{0};

// Order-preserving key of a float64: a > b (as numbers) <=> key(a) > key(b); -0 and +0 get
// one key; every NaN gets the largest key (above +inf), so the order stays total.
inline uint64_t order_key(double x) {
  if (std::isnan(x)) return kNanKey;
  if (x == 0.0) x = 0.0;
  uint64_t u;
  std::memcpy(&u, &x, sizeof u);
  return (u >> 63) ? ~u : (u | (uint64_t{1} << 63));
}

// The importance sum is compute-bound at SSE2 (the x86-64 baseline the extension is built
// for): an AVX2 clone, picked at load time where the CPU has it, converts and adds four
// float64 lanes per instruction. Vector lanes are columns, so every column's sum keeps its
// row order and the result is bit-identical to the scalar loop.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__SANITIZE_ADDRESS__)
#define DVTP_SUM_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define DVTP_SUM_CLONES
#endif

// keys[j] = order_key(sum over rows (in order) of row[j]), j in [0, len), len <= kBlock.
// Four rows per sweep (added one after the other into the same accumulator, so the
// rounding is that of the row-by-row sum) quarter the accumulator traffic.
DVTP_SUM_CLONES void sum_block(const float* const* rows, int64_t m, int64_t j0, int64_t len, uint64_t* keys) {
  double acc[kBlock];
  std::fill(acc, acc + len, 0.0);
  int64_t k = 0;
  for (; k + 4 <= m; k += 4) {
    const float* r0 = rows[k] + j0;
    const float* r1 = rows[k + 1] + j0;
    const float* r2 = rows[k + 2] + j0;
    const float* r3 = rows[k + 3] + j0;
    for (int64_t j = 0; j < len; ++j) {
      double a = acc[j];
      a += static_cast<double>(r0[j]);
      a += static_cast<double>(r1[j]);
      a += static_cast<double>(r2[j]);
      a += static_cast<double>(r3[j]);
      acc[j] = a;
    }
  }
  for (; k < m; ++k) {
    const float* r = rows[k] + j0;
    for (int64_t j = 0; j < len; ++j) acc[j] += static_cast<double>(r[j]);
  }
  for (int64_t j = 0; j < len; ++j) keys[j0 + j] = order_key(acc[j]);
}

void check_index_vector(const at::Tensor& t, const char* name, int64_t B) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kLong && t.dim() == 1 &&
                  t.size(0) == B && t.is_contiguous(),
              "dvtp::select_visual_tokens (CPU): ", name,
              " must be a contiguous int64 CPU tensor of shape [B]");
}

struct Task {
  int64_t item, j0;
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> select_visual_tokens_cpu(
    const at::Tensor& scores, const at::Tensor& row_mask, const at::Tensor& seq_len,
    const at::Tensor& key_start, const at::Tensor& key_len, const at::Tensor& keep_count,
    int64_t max_new_len, int64_t max_keep) {
  constexpr const char* op = "dvtp::select_visual_tokens (CPU): ";
  TORCH_CHECK(scores.device().is_cpu() && scores.scalar_type() == at::kFloat && scores.dim() == 3 &&
                  scores.is_contiguous(),
              op, "scores must be a contiguous float32 CPU tensor [B, R, V]");
  const int64_t B = scores.size(0), R = scores.size(1), V = scores.size(2);
  TORCH_CHECK(row_mask.device().is_cpu() && row_mask.scalar_type() == at::kBool &&
                  row_mask.dim() == 2 && row_mask.size(0) == B && row_mask.size(1) == R &&
                  row_mask.is_contiguous(),
              op, "row_mask must be a contiguous bool CPU tensor [B, R]");
  check_index_vector(seq_len, "seq_len", B);
  check_index_vector(key_start, "key_start", B);
  check_index_vector(key_len, "key_len", B);
  check_index_vector(keep_count, "keep_count", B);
  TORCH_CHECK(max_new_len >= 0 && max_keep >= 0, op, "max_new_len and max_keep must be >= 0");

  const int64_t* sl = seq_len.data_ptr<int64_t>();
  const int64_t* ks = key_start.data_ptr<int64_t>();
  const int64_t* kl = key_len.data_ptr<int64_t>();
  const int64_t* kc = keep_count.data_ptr<int64_t>();
  for (int64_t b = 0; b < B; ++b) {
    TORCH_CHECK(kl[b] >= 0 && kl[b] <= V, op, "key_len[", b, "] must lie in [0, V]");
    TORCH_CHECK(kc[b] >= 0 && kc[b] <= kl[b], op, "keep_count[", b, "] must lie in [0, key_len]");
    TORCH_CHECK(ks[b] >= 0 && ks[b] + kl[b] <= sl[b], op,
                "key_start[", b, "] + key_len[", b, "] must lie in [0, seq_len]");
    TORCH_CHECK(sl[b] - kl[b] + kc[b] <= max_new_len, op, "max_new_len too small for item ", b);
    TORCH_CHECK(kc[b] <= max_keep, op, "max_keep too small for item ", b);
  }

  const auto long_opts = scores.options().dtype(at::kLong);
  at::Tensor gather_index = at::empty({B, max_new_len}, long_opts);
  at::Tensor keep_index = at::empty({B, max_keep}, long_opts);
  at::Tensor nan_item = at::empty({B}, scores.options().dtype(at::kBool));
  const float* sp = scores.data_ptr<float>();
  const bool* mp = row_mask.data_ptr<bool>();
  int64_t* gp = gather_index.data_ptr<int64_t>();
  int64_t* kp = keep_index.data_ptr<int64_t>();
  bool* np = nan_item.data_ptr<bool>();

  // Selected rows of every item (row_off: CSR offsets) and the importance tasks.
  thread_local std::vector<const float*> rows;
  thread_local std::vector<int64_t> row_off;
  thread_local std::vector<Task> tasks;
  thread_local std::vector<uint64_t> keys;  // [B, V]
  rows.clear();
  tasks.clear();
  row_off.assign(B + 1, 0);
  int64_t reads = 0, total_len = 0;
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t i = 0; i < R; ++i) {
      if (mp[b * R + i]) rows.push_back(sp + (b * R + i) * V);
    }
    row_off[b + 1] = static_cast<int64_t>(rows.size());
    for (int64_t j0 = 0; j0 < kl[b]; j0 += kBlock) tasks.push_back({b, j0});
    reads += (row_off[b + 1] - row_off[b]) * kl[b];
    total_len += kl[b];
  }
  keys.resize(static_cast<size_t>(B * V));
  const float* const* rp = rows.data();
  const int64_t* ro = row_off.data();
  const Task* tp = tasks.data();
  uint64_t* kyp = keys.data();

  // 1. importance keys
  const int64_t n_tasks = static_cast<int64_t>(tasks.size());
  parallel_for(0, n_tasks, reads >= kParallelReads ? 1 : n_tasks, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t b = tp[t].item, j0 = tp[t].j0;
      sum_block(rp + ro[b], ro[b + 1] - ro[b], j0, std::min(kBlock, kl[b] - j0), kyp + b * V);
    }
  });

  // 2. NaN flag, selection and both output rows, per item
  parallel_for(0, B, total_len >= 4096 ? 1 : B, [&](int64_t begin, int64_t end) {
    thread_local std::vector<uint64_t> work;
    for (int64_t b = begin; b < end; ++b) {
      const int64_t n = kl[b], keep = kc[b], k0 = ks[b];
      const uint64_t* key = kyp + b * V;
      np[b] = std::find(key, key + n, kNanKey) != key + n;
      int64_t* keep_row = kp + b * max_keep;
      if (keep == n) {
        for (int64_t j = 0; j < n; ++j) keep_row[j] = j;
      } else if (keep > 0) {
        work.assign(key, key + n);
        std::nth_element(work.begin(), work.begin() + (keep - 1), work.end(), std::greater<uint64_t>());
        const uint64_t T = work[keep - 1];
        // Every key > T now lies before position keep - 1.
        const int64_t above = std::count_if(work.begin(), work.begin() + (keep - 1),
                                            [T](uint64_t x) { return x > T; });
        int64_t ties = keep - above;  // keys == T still to take, lowest index first
        int64_t p = 0;
        for (int64_t j = 0; p < keep; ++j) {
          const uint64_t x = key[j];
          if (x > T || (x == T && ties-- > 0)) keep_row[p++] = j;
        }
      }
      std::fill(keep_row + keep, keep_row + max_keep, int64_t{-1});
      int64_t* g = gp + b * max_new_len;
      int64_t p = 0;
      for (int64_t s = 0; s < k0; ++s) g[p++] = s;
      for (int64_t j = 0; j < keep; ++j) g[p++] = k0 + keep_row[j];
      for (int64_t s = k0 + n; s < sl[b]; ++s) g[p++] = s;
      std::fill(g + p, g + max_new_len, int64_t{-1});
    }
  });
  return {gather_index, keep_index, nan_item};
}

}  // namespace
}  // namespace dvtp::cpu

TORCH_LIBRARY_IMPL(dvtp, CPU, m) {
  m.impl("select_visual_tokens", &dvtp::cpu::select_visual_tokens_cpu);
}
