// dvtp::select_visual_tokens, CPU kernel.
//
// Per batch item b (items run in parallel, each written by one thread):
//   importance[j] = float64 sum over rows i with row_mask[b, i] of scores[b, i, j],
//                   j < key_len[b] (rows added in increasing i: deterministic);
//   keep the keep_count[b] most important tokens, ties to the lower index: a partial
//   selection (std::nth_element) under the strict order (importance desc, index asc),
//   then the kept indices sorted ascending;
//   keep_index[b]   = kept visual-local indices, then -1;
//   gather_index[b] = 0..key_start-1, key_start + kept, key_start+key_len..seq_len-1, then -1.
// NaN importance (NaN scores) ranks above every number, like torch.sort(descending=True)
// in the reference, so the comparator stays a strict weak order.
// Semantics: dvtp_kernels/reference.py; the checks below only guard memory safety.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <tuple>
#include <vector>

#include "cpu_utils.h"

namespace dvtp::cpu {
namespace {

void check_index_vector(const at::Tensor& t, const char* name, int64_t B) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kLong && t.dim() == 1 &&
                  t.size(0) == B && t.is_contiguous(),
              "dvtp::select_visual_tokens (CPU): ", name,
              " must be a contiguous int64 CPU tensor of shape [B]");
}

std::tuple<at::Tensor, at::Tensor> select_visual_tokens_cpu(
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
  at::Tensor gather_index = at::full({B, max_new_len}, -1, long_opts);
  at::Tensor keep_index = at::full({B, max_keep}, -1, long_opts);
  const float* sp = scores.data_ptr<float>();
  const bool* mp = row_mask.data_ptr<bool>();
  int64_t* gp = gather_index.data_ptr<int64_t>();
  int64_t* kp = keep_index.data_ptr<int64_t>();

  parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    std::vector<double> imp;
    std::vector<int64_t> order;
    for (int64_t b = begin; b < end; ++b) {
      const int64_t n = kl[b], keep = kc[b], k0 = ks[b];
      int64_t* keep_row = kp + b * max_keep;
      if (keep == n) {
        for (int64_t j = 0; j < n; ++j) keep_row[j] = j;  // everything is kept
      } else if (keep > 0) {
        imp.assign(n, 0.0);
        double* ip = imp.data();
        for (int64_t i = 0; i < R; ++i) {
          if (!mp[b * R + i]) continue;
          const float* row = sp + (b * R + i) * V;
          for (int64_t j = 0; j < n; ++j) ip[j] += static_cast<double>(row[j]);
        }
        order.resize(n);
        std::iota(order.begin(), order.end(), int64_t{0});
        auto before = [ip](int64_t a, int64_t c) {
          const double x = ip[a], y = ip[c];
          const bool xn = std::isnan(x), yn = std::isnan(y);
          if (xn != yn) return xn;
          if (!xn && x != y) return x > y;
          return a < c;
        };
        std::nth_element(order.begin(), order.begin() + (keep - 1), order.end(), before);
        std::sort(order.begin(), order.begin() + keep);
        std::copy(order.begin(), order.begin() + keep, keep_row);
      }
      int64_t* g = gp + b * max_new_len;
      int64_t p = 0;
      for (int64_t s = 0; s < k0; ++s) g[p++] = s;
      for (int64_t j = 0; j < keep; ++j) g[p++] = k0 + keep_row[j];
      for (int64_t s = k0 + n; s < sl[b]; ++s) g[p++] = s;
    }
  });
  return {gather_index, keep_index};
}

}  // namespace
}  // namespace dvtp::cpu

TORCH_LIBRARY_IMPL(dvtp, CPU, m) {
  m.impl("select_visual_tokens", &dvtp::cpu::select_visual_tokens_cpu);
}
