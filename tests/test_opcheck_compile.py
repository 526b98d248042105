"""The registered ops pass torch.library.opcheck and trace under torch.compile(fullgraph=True),
called directly and through the public API."""
import os
import subprocess
import sys

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
    # A flagged item (NaN in a selected row) and outputs wider than needed, as the wrapper asks.
    nan_sel = dict(sel, scores=sel["scores"].clone(), row_mask=sel["row_mask"].clone(), max_new_len=31, max_keep=9)
    nan_sel["row_mask"][1, 2] = True
    nan_sel["scores"][1, 2, 5] = float("nan")
    torch.library.opcheck(getattr(ops, "select_visual_tokens" + suffix).default, tuple(nan_sel.values()))
    assert getattr(ops, "select_visual_tokens" + suffix)(*nan_sel.values())[2].tolist() == [False, True]
    torch.library.opcheck(getattr(ops, "gather_compact" + suffix).default, tuple(gat.values()))


def test_compile_fullgraph_extension_ops():
    require("cpu", "cpu", "accumulate_visual_scores")
    acc, sel, gat = small_args()
    ops = torch.ops.dvtp

    def pipeline(q, k, scores, row_mask, tensors):
        ops.accumulate_visual_scores(q, k, scores, acc["query_start"], acc["key_start"], acc["key_len"],
                                     acc["scale"], None, acc["key_valid"])
        gather_index, keep_index, nan_item = ops.select_visual_tokens(
            scores, row_mask, sel["seq_len"], sel["key_start"], sel["key_len"], sel["keep_count"], 26, 6)
        return gather_index, keep_index, nan_item, ops.gather_compact(tensors, gat["gather_index"], gat["dims"], 0)

    eager_scores, compiled_scores = acc["scores"].clone(), acc["scores"].clone()
    expected = pipeline(acc["q"], acc["k"], eager_scores, sel["row_mask"], gat["tensors"])
    compiled = torch.compile(pipeline, fullgraph=True, backend="aot_eager")
    got = compiled(acc["q"], acc["k"], compiled_scores, sel["row_mask"], gat["tensors"])
    assert torch.equal(eager_scores, compiled_scores)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
    assert torch.equal(got[2], expected[2]) and got[2].dtype == torch.bool
    assert all(torch.equal(a, b) for a, b in zip(got[3], expected[3]))


# --------------------------------------------------------------------------------------
# The public API under torch.compile(fullgraph=True)
# --------------------------------------------------------------------------------------


def run_python(code):
    """Run ``code`` in a fresh interpreter with a fresh compile cache: a compiled graph cached
    on disk by an earlier run (e.g. of an older checkout) must not stand in for tracing."""
    import tempfile

    env = dict(os.environ)
    env.pop("DVTP_BACKEND", None)
    with tempfile.TemporaryDirectory() as cache:
        env["TORCHINDUCTOR_CACHE_DIR"] = cache
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)

PUBLIC_PIPELINE = """
import torch
import dvtp_kernels

def make_inputs(device="cpu"):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 31, 4, 20, generator=g).transpose(1, 2)  # [B, Hq, N, D] view, D=20
    k = torch.randn(2, 2, 31, 20, generator=g)  # GQA: 2 kv heads
    key_valid = torch.rand(2, 31, generator=g) > 0.1
    scores = torch.rand(2, 5, 12, generator=g)
    row_mask = torch.rand(2, 5, generator=g) > 0.3
    row_mask[1] = False  # item 1 keeps everything
    x = torch.randn(2, 31, 3, generator=g)
    ids = torch.arange(62).view(2, 31)
    kv_cache = torch.randn(2, 2, 31, 4, generator=g).to(torch.bfloat16)
    return q, k, key_valid, scores, row_mask, x, ids, kv_cache

def pipeline(q, k, key_valid, scores, row_mask, x, ids, kv_cache, backend=None):
    dvtp_kernels.accumulate_visual_scores(q, k, scores, [25, 20], [3, 10], [12, 7],
                                          key_valid=key_valid, backend=backend)
    gather_index, new_len, keep_index, keep_count = dvtp_kernels.select_visual_tokens(
        scores, row_mask, 31, [3, 10], [12, 7], keep_ratio=0.5, backend=backend)
    x2, ids2, kv2 = dvtp_kernels.gather_compact([x, ids, kv_cache], gather_index, new_len,
                                                dims=[1, 1, 2], pad_value=-1, backend=backend)
    return scores, gather_index, new_len, keep_index, keep_count, x2, ids2, kv2

def compare(backend=None, scores_atol=0.0):
    compiled = torch.compile(pipeline, fullgraph=True, backend="aot_eager")
    inputs = make_inputs()
    got = compiled(*inputs[:3], inputs[3].clone(), *inputs[4:], backend=backend)
    expected = pipeline(*inputs[:3], inputs[3].clone(), *inputs[4:], backend=backend)
    assert len(got) == len(expected)
    for i, (a, b) in enumerate(zip(got, expected)):
        assert a.dtype == b.dtype and a.shape == b.shape, (i, a.shape, b.shape)
        if i == 0 and scores_atol:
            assert torch.allclose(a, b, rtol=0, atol=scores_atol), (i, (a - b).abs().max().item())
        else:
            assert torch.equal(a, b), (i, a, b)
    return got
"""


def test_public_api_compiles_fullgraph_on_first_call():
    """In a fresh process (nothing warmed up: the extension not yet loaded, no eager call
    before), the three public ops trace with fullgraph=True and give eager's results."""
    result = run_python(PUBLIC_PIPELINE + """
import sys
assert "dvtp_kernels._C" not in sys.modules
# Compiled first, then eager. Every output but the scores must match exactly. The scores
# (float32, values < 2) are compared to 2e-5: in about 1 in 100 fresh processes on a busy
# machine the FIRST cpu-kernel call of a process -- eager or compiled alike, so not a
# compile effect -- returns scores up to 9.06e-6 away from all later calls (which are
# 6e-8 from a float64 computation), always the same values; cause not found (README).
# The selection here has a margin of 7e-3 at the cut, far above that.
compare(scores_atol=2e-5)
print("ok")
""")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().endswith("ok")


@pytest.mark.parametrize("backend", [None, "reference", "cpu", "triton"])
def test_public_api_compiles_fullgraph(backend):
    if backend is not None:
        require(backend, "cpu", "accumulate_visual_scores")
    namespace = {}
    exec(PUBLIC_PIPELINE, namespace)
    torch._dynamo.reset()
    namespace["compare"](backend)


def test_compiled_public_api_validates_at_run_time():
    """A bad value (an index range, only known when the graph runs) is refused by the
    compiled call with eager's error, before any kernel."""
    import dvtp_kernels

    def f(scores, row_mask, key_len):
        return dvtp_kernels.select_visual_tokens(scores, row_mask, 20, 3, key_len, keep_ratio=0.5)

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    scores, row_mask = torch.rand(2, 4, 10), torch.ones(2, 4, dtype=torch.bool)
    gather_index, *_ = compiled(scores, row_mask, torch.tensor([10, 4]))
    assert gather_index.shape == (2, 18)  # max(20 - 10 + 5, 20 - 4 + 2)
    with pytest.raises(ValueError, match=r"key_len\[1\]=11 exceeds scores.shape\[2\] \(Vmax=10\)"):
        compiled(scores, row_mask, torch.tensor([10, 11]))
    scores[0, 1, 2] = float("nan")
    with pytest.raises(ValueError, match=r"item 0: 1 of its 4 selected rows"):
        compiled(scores, row_mask, torch.tensor([10, 4]))


def test_traceable_ops_pass_opcheck():
    """The wrapper ops the public functions trace to (dvtp::<op>_api); select's outputs
    have data-dependent widths (unbacked sizes in its fake)."""
    import dvtp_kernels  # noqa: F401  (registers them)
    from dvtp_kernels import dispatch

    CPU_BUILT = not dispatch.not_supported_reasons("cpu", "select_visual_tokens", torch.device("cpu"))

    g = torch.Generator().manual_seed(1)
    q = torch.randn(2, 4, 30, 16, generator=g)
    k = torch.randn(2, 2, 30, 16, generator=g)
    ops = torch.ops.dvtp
    torch.library.opcheck(
        ops.accumulate_visual_scores_api.default,
        (q, k, torch.rand(2, 5, 12, generator=g), torch.tensor([25, 20]), torch.tensor(3), torch.tensor([12, 7]),
         None, None, torch.rand(2, 30, generator=g) > 0.1, "reference"))
    torch.library.opcheck(
        ops.select_visual_tokens_api.default,
        (torch.rand(2, 5, 12, generator=g), torch.rand(2, 5, generator=g) > 0.3, torch.tensor([30, 30]),
         torch.tensor([3, 10]), torch.tensor([12, 7]), 0.5, None, "reference"))
    torch.library.opcheck(
        ops.select_visual_tokens_api.default,
        (torch.rand(2, 5, 12, generator=g), torch.ones(2, 5, dtype=torch.bool), torch.tensor([30, 30]),
         torch.tensor([3, 10]), torch.tensor([12, 0]), None, torch.tensor(3), "cpu" if CPU_BUILT else None))
    torch.library.opcheck(
        ops.gather_compact_api.default,
        ([torch.randn(2, 10, 3, generator=g), torch.arange(20).view(2, 10)],
         torch.tensor([[0, 1, 4, 5, 9, -1], [2, 3, 4, 5, 6, 7]]), torch.tensor([5, 6]), [1, 1], -1, "reference"))


def test_generate_on_a_compiled_model_with_pruning():
    """dvtp.generate through a torch.compile'd model, compiled first in a fresh process (the
    extension not yet loaded): the scoring pass calls the public accumulate op inside the
    compiled forward; same tokens and kept sets as eager afterwards."""
    result = run_python("""
import sys
import torch
import dvtp
from dvtp import models

assert "dvtp_kernels._C" not in sys.modules
model = models.llada_lm(models.tiny_llada_config(), seed=0)
x = torch.randn(2, 60, 64, generator=torch.Generator().manual_seed(0)) * 0.3
kw = dict(visual_span=[(5, 40), (5, 30)], gen_length=8, steps=4, mask_id=127,
          pruning=dvtp.PruningConfig(keep_ratio=0.5))
compiled = dvtp.generate(torch.compile(model, backend="aot_eager"), x, **kw)
eager = dvtp.generate(model, x, **kw)
assert torch.equal(compiled.sequences, eager.sequences)
assert [k.tolist() for k in compiled.kept_indices] == [k.tolist() for k in eager.kept_indices]
print("ok")
""")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().endswith("ok")
