// Schemas of the dvtp ops: the one TORCH_LIBRARY block of the namespace.
// Kernels live in csrc/cpu/*.cpp (TORCH_LIBRARY_IMPL(dvtp, CPU)) and
// csrc/cuda/*.cu (TORCH_LIBRARY_IMPL(dvtp, CUDA)); fake (meta) kernels are
// registered from Python (dvtp_kernels/fake.py). Semantics: dvtp_kernels/reference.py.
#include <Python.h>
#include <torch/library.h>

extern "C" {
// Importing dvtp_kernels._C runs the static registrations below; the module
// itself has no Python attributes.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(dvtp, m) {
  // scores[b, i, j] += sum_h softmax_h(scale q k^T)[query_start[b] + i, key_start[b] + j]
  // q [B,Hq,N,D], k [B,Hkv,N,D], scores [B,R,Vmax] f32, query_start/key_start/key_len
  // int64 [B], lse f32 [B,Hq,N] or None, key_valid bool [B,N] or None.
  m.def(
      "accumulate_visual_scores(Tensor q, Tensor k, Tensor(a!) scores, Tensor query_start, "
      "Tensor key_start, Tensor key_len, float scale, Tensor? lse, Tensor? key_valid) -> ()");
  // -> (gather_index [B, max_new_len] int64 -1 padded, keep_index [B, max_keep] int64 -1 padded,
  //     nan_item [B] bool: item b's importance (selected rows, columns < key_len) has a NaN,
  //     and then its two rows are unspecified). keep_count is the effective per-item count;
  // max_new_len / max_keep size the outputs (any width >= the largest row: -1 padded).
  m.def(
      "select_visual_tokens(Tensor scores, Tensor row_mask, Tensor seq_len, Tensor key_start, "
      "Tensor key_len, Tensor keep_count, int max_new_len, int max_keep) -> (Tensor, Tensor, Tensor)");
  // out[t][b, .., p, ..] = tensors[t][b, .., gather_index[b, p], ..] along dims[t]; p with
  // gather_index < 0 is filled with pad_value.
  m.def(
      "gather_compact(Tensor[] tensors, Tensor gather_index, int[] dims, Scalar pad_value) "
      "-> Tensor[]");
}
