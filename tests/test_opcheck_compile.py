"""The registered ops pass torch.library.opcheck and trace under torch.compile(fullgraph=True)."""
import pytest
import torch

from backends import require
from dvtp_kernels import validation


def small_args():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 4, 30, 16, generator=g)
    k = torch.randn(2, 2, 30, 16, generator=g)
    acc = validation.check_accumulate(q, k, torch.rand(2, 5, 12, generator=g), [25, 20], [3, 10], [12, 7],
                                      None, None, torch.rand(2, 30, generator=g) > 0.1)
    sel = dict(scores=torch.rand(2, 5, 12, generator=g), row_mask=torch.rand(2, 5, generator=g) > 0.3,
               seq_len=torch.tensor([30, 30]), key_start=torch.tensor([3, 10]), key_len=torch.tensor([12, 7]),
               keep_count=torch.tensor([6, 3]), max_new_len=26, max_keep=6)
    index = torch.tensor([[0, 1, 4, 5, 9, -1], [2, 3, 4, 5, 6, 7]])
    gat = dict(tensors=[torch.randn(2, 10, 3, generator=g), torch.arange(20).view(2, 10),
                        torch.randn(2, 4, 10, 2, generator=g)], gather_index=index, dims=[1, 1, 2], pad_value=0)
    return acc, sel, gat


@pytest.mark.parametrize("backend,suffix", [("cpu", ""), ("triton", "_triton")])
def test_opcheck(backend, suffix):
    """The C++ ops (dvtp::<op>) and the Triton ops (dvtp::<op>_triton, interpreted on CPU)."""
    require(backend, "cpu", "accumulate_visual_scores")
    if backend == "triton":
        from dvtp_kernels import triton_backend  # noqa: F401  (registers the _triton ops)
    acc, sel, gat = small_args()
    ops = torch.ops.dvtp
    torch.library.opcheck(getattr(ops, "accumulate_visual_scores" + suffix).default, tuple(acc.values()))
    torch.library.opcheck(getattr(ops, "select_visual_tokens" + suffix).default, tuple(sel.values()))
    torch.library.opcheck(getattr(ops, "gather_compact" + suffix).default, tuple(gat.values()))


def test_compile_fullgraph_extension_ops():
    require("cpu", "cpu", "accumulate_visual_scores")
    acc, sel, gat = small_args()
    ops = torch.ops.dvtp

    def pipeline(q, k, scores, row_mask, tensors):
        ops.accumulate_visual_scores(q, k, scores, acc["query_start"], acc["key_start"], acc["key_len"],
                                     acc["scale"], None, acc["key_valid"])
        gather_index, keep_index = ops.select_visual_tokens(scores, row_mask, sel["seq_len"], sel["key_start"],
                                                            sel["key_len"], sel["keep_count"], 26, 6)
        return gather_index, keep_index, ops.gather_compact(tensors, gat["gather_index"], gat["dims"], 0)

    eager_scores, compiled_scores = acc["scores"].clone(), acc["scores"].clone()
    expected = pipeline(acc["q"], acc["k"], eager_scores, sel["row_mask"], gat["tensors"])
    compiled = torch.compile(pipeline, fullgraph=True, backend="aot_eager")
    got = compiled(acc["q"], acc["k"], compiled_scores, sel["row_mask"], gat["tensors"])
    assert torch.equal(eager_scores, compiled_scores)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
    assert all(torch.equal(a, b) for a, b in zip(got[2], expected[2]))
