// dvtp::gather_compact, CPU kernel.
//
// out[t][b, ..., p, ...] = tensors[t][b, ..., gather_index[b, p], ...] along dims[t],
// pad_value (converted to the tensor's dtype) where gather_index[b, p] < 0.
// Semantics: dvtp_kernels/reference.py; the checks below only guard memory safety.
//
// Each tensor is seen as [B, outer, N, inner] (outer = the dims between the batch and
// the sequence dim, inner = the dims after it). The copy is dtype-agnostic: elements
// are moved as bytes (element_size), so every dtype works, and one at::parallel_for-
// style loop runs over all (tensor, batch item, chunk of output rows) work items of all
// tensors together. gather_index is first cut, per batch item, into runs: maximal
// stretches of output positions whose sources are consecutive (prefix, each group of
// adjacent kept tokens, suffix) or that are all padding. A run is copied with a single
// memcpy when the source's sequence stride equals its inner block size (the common
// case: e.g. [B, N, hidden], [B, N], [B, H, N, D]); otherwise one memcpy per row of
// `inner` elements. Padding runs are filled with the pad value's bytes.
//
// Strides: the batch, outer and sequence dims may have any strides (read in place, e.g.
// a transposed [B, N, H, D] -> [B, H, N, D] K cache view). Only the inner block (dims
// after the sequence dim) must be dense row-major for memcpy; when it is not (e.g. a
// transposed or expanded inner dim), or the tensor is a lazy conj/neg view, the tensor
// is first made contiguous: one extra copy of that tensor, chosen for simplicity over a
// strided element loop. Outputs are new contiguous tensors.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "cpu_utils.h"

namespace dvtp::cpu {
namespace {

constexpr int64_t kChunkBytes = 1 << 17;  // target bytes per work item

struct Run {
  int64_t p0;   // first output position
  int64_t src;  // first source position, -1 for padding
  int64_t len;
};

struct Plan {
  const char* src;
  char* dst;
  int64_t es;          // element size in bytes
  int64_t inner;       // elements per (outer, position) row
  int64_t outer;       // product of the dims between batch and sequence
  int64_t rows;        // outer * M output rows per batch item
  int64_t src_b;       // batch stride (elements)
  int64_t src_seq;     // sequence stride (elements)
  std::vector<int64_t> outer_sizes, outer_strides;  // dims 1..d-1
  std::vector<unsigned char> pad;                   // pad value bytes
  bool pad_zero;
};

struct Item {
  int64_t t, b, r0, r1;  // tensor, batch item, output rows [r0, r1) of outer * M
};

bool inner_is_dense(const at::Tensor& t, int64_t d) {
  int64_t expected = 1;
  for (int64_t i = t.dim() - 1; i > d; --i) {
    if (t.size(i) != 1 && t.stride(i) != expected) return false;
    expected *= t.size(i);
  }
  return true;
}

void fill_pad(char* dst, int64_t count, const Plan& pl) {
  if (count <= 0) return;
  if (pl.pad_zero) {
    std::memset(dst, 0, static_cast<size_t>(count * pl.es));
    return;
  }
  switch (pl.es) {
    case 1:
      std::memset(dst, pl.pad[0], static_cast<size_t>(count));
      return;
    case 2: {
      uint16_t v;
      std::memcpy(&v, pl.pad.data(), 2);
      std::fill_n(reinterpret_cast<uint16_t*>(dst), count, v);
      return;
    }
    case 4: {
      uint32_t v;
      std::memcpy(&v, pl.pad.data(), 4);
      std::fill_n(reinterpret_cast<uint32_t*>(dst), count, v);
      return;
    }
    case 8: {
      uint64_t v;
      std::memcpy(&v, pl.pad.data(), 8);
      std::fill_n(reinterpret_cast<uint64_t*>(dst), count, v);
      return;
    }
    default:
      for (int64_t i = 0; i < count; ++i) std::memcpy(dst + i * pl.es, pl.pad.data(), pl.es);
  }
}

std::vector<at::Tensor> gather_compact_cpu(at::TensorList tensors, const at::Tensor& gather_index,
                                           at::IntArrayRef dims, const at::Scalar& pad_value) {
  constexpr const char* op = "dvtp::gather_compact (CPU): ";
  TORCH_CHECK(dims.size() == tensors.size(), op, "need one dim per tensor");
  TORCH_CHECK(gather_index.device().is_cpu() && gather_index.scalar_type() == at::kLong &&
                  gather_index.dim() == 2 && gather_index.is_contiguous(),
              op, "gather_index must be a contiguous int64 CPU tensor [B, M]");
  const int64_t B = gather_index.size(0), M = gather_index.size(1);
  std::vector<at::Tensor> outs;
  outs.reserve(tensors.size());
  if (tensors.empty()) return outs;

  // Sequence length, common to all tensors.
  int64_t N = -1;
  for (size_t t = 0; t < tensors.size(); ++t) {
    const at::Tensor& x = tensors[t];
    TORCH_CHECK(x.device().is_cpu() && x.layout() == at::kStrided, op, "tensor ", t,
                " must be a strided CPU tensor");
    TORCH_CHECK(dims[t] >= 1 && dims[t] < x.dim(), op, "dims[", t, "] must lie in [1, dim)");
    TORCH_CHECK(x.size(0) == B, op, "tensor ", t, " must have batch size ", B);
    if (N < 0) N = x.size(dims[t]);
    TORCH_CHECK(x.size(dims[t]) == N, op, "all tensors need the same sequence length");
  }

  // Runs of gather_index per batch item (validated here, before any copy).
  const int64_t* gi = gather_index.data_ptr<int64_t>();
  std::vector<Run> runs;
  std::vector<int64_t> run_begin(B + 1, 0);
  for (int64_t b = 0; b < B; ++b) {
    run_begin[b] = static_cast<int64_t>(runs.size());
    const int64_t* g = gi + b * M;
    for (int64_t p = 0; p < M; ++p) {
      const int64_t s = g[p];
      TORCH_CHECK(s >= -1 && s < N, op, "gather_index[", b, ", ", p, "] = ", s,
                  " is outside [-1, ", N, ")");
      if (p > 0 && runs.back().p0 + runs.back().len == p) {
        Run& r = runs.back();
        const bool pad_run = r.src < 0;
        if ((pad_run && s < 0) || (!pad_run && s == r.src + r.len)) {
          ++r.len;
          continue;
        }
      }
      runs.push_back({p, s < 0 ? -1 : s, 1});
    }
  }
  run_begin[B] = static_cast<int64_t>(runs.size());

  // Per-tensor plans and outputs.
  std::vector<at::Tensor> sources;  // keeps contiguous copies alive
  std::vector<Plan> plans(tensors.size());
  std::vector<Item> items;
  for (size_t t = 0; t < tensors.size(); ++t) {
    const int64_t d = dims[t];
    at::Tensor x = tensors[t];
    if (x.is_conj() || x.is_neg()) x = x.resolve_conj().resolve_neg();
    if (!inner_is_dense(x, d)) x = x.contiguous();
    sources.push_back(x);

    std::vector<int64_t> shape = x.sizes().vec();
    shape[d] = M;
    at::Tensor out = at::empty(shape, x.options().memory_format(at::MemoryFormat::Contiguous));
    outs.push_back(out);

    Plan& pl = plans[t];
    pl.es = static_cast<int64_t>(x.element_size());
    pl.inner = 1;
    for (int64_t i = d + 1; i < x.dim(); ++i) pl.inner *= x.size(i);
    pl.outer = 1;
    for (int64_t i = 1; i < d; ++i) {
      pl.outer *= x.size(i);
      pl.outer_sizes.push_back(x.size(i));
      pl.outer_strides.push_back(x.stride(i));
    }
    pl.rows = pl.outer * M;
    pl.src_b = x.stride(0);
    pl.src_seq = x.stride(d);
    pl.src = static_cast<const char*>(x.const_data_ptr());
    pl.dst = static_cast<char*>(out.data_ptr());
    at::Tensor pv = at::empty({1}, x.options()).fill_(pad_value);
    pl.pad.resize(pl.es);
    std::memcpy(pl.pad.data(), pv.const_data_ptr(), pl.es);
    pl.pad_zero = std::all_of(pl.pad.begin(), pl.pad.end(), [](unsigned char c) { return c == 0; });

    if (out.numel() == 0) continue;
    const int64_t row_bytes = std::max<int64_t>(1, pl.inner * pl.es);
    const int64_t chunk = std::max<int64_t>(1, kChunkBytes / row_bytes);
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t r0 = 0; r0 < pl.rows; r0 += chunk) {
        items.push_back({static_cast<int64_t>(t), b, r0, std::min(pl.rows, r0 + chunk)});
      }
    }
  }

  parallel_for(0, static_cast<int64_t>(items.size()), 1, [&](int64_t begin, int64_t end) {
    for (int64_t it = begin; it < end; ++it) {
      const Item& item = items[it];
      const Plan& pl = plans[item.t];
      const int64_t b = item.b;
      const int64_t row_bytes = pl.inner * pl.es;
      const bool dense_seq = pl.src_seq == pl.inner;
      const Run* rb = runs.data() + run_begin[b];
      const Run* re = runs.data() + run_begin[b + 1];
      int64_t r = item.r0;
      while (r < item.r1) {
        const int64_t o = r / M;
        const int64_t pa = r % M;
        const int64_t pb = std::min(M, pa + (item.r1 - r));
        // Source offset of (b, o) in elements.
        int64_t src_off = b * pl.src_b;
        int64_t rem = o;
        for (int64_t i = static_cast<int64_t>(pl.outer_sizes.size()) - 1; i >= 0; --i) {
          src_off += (rem % pl.outer_sizes[i]) * pl.outer_strides[i];
          rem /= pl.outer_sizes[i];
        }
        const char* src_bo = pl.src + src_off * pl.es;
        char* dst_bo = pl.dst + (b * pl.rows + o * M) * row_bytes;
        // First run that ends after pa.
        const Run* run = std::upper_bound(rb, re, pa, [](int64_t p, const Run& x) { return p < x.p0; }) - 1;
        for (; run < re && run->p0 < pb; ++run) {
          const int64_t s = std::max(pa, run->p0);
          const int64_t e = std::min(pb, run->p0 + run->len);
          if (s >= e) continue;
          char* dst = dst_bo + s * row_bytes;
          if (run->src < 0) {
            fill_pad(dst, (e - s) * pl.inner, pl);
            continue;
          }
          const int64_t src_pos = run->src + (s - run->p0);
          if (dense_seq) {
            std::memcpy(dst, src_bo + src_pos * pl.inner * pl.es, static_cast<size_t>((e - s) * row_bytes));
          } else {
            for (int64_t p = 0; p < e - s; ++p) {
              std::memcpy(dst + p * row_bytes, src_bo + (src_pos + p) * pl.src_seq * pl.es,
                          static_cast<size_t>(row_bytes));
            }
          }
        }
        r += pb - pa;
      }
    }
  });
  return outs;
}

}  // namespace
}  // namespace dvtp::cpu

TORCH_LIBRARY_IMPL(dvtp, CPU, m) {
  m.impl("gather_compact", &dvtp::cpu::gather_compact_cpu);
}
