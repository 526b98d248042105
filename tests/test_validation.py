"""Bad input is refused before any kernel runs, with a message naming the argument."""
import pytest
import torch

import dvtp_kernels


def qk(B=2, Hq=4, Hkv=2, N=16, D=8, dtype=torch.float32):
    return torch.randn(B, Hq, N, D, dtype=dtype), torch.randn(B, Hkv, N, D, dtype=dtype)


def accumulate(**overrides):
    q, k = qk()
    args = dict(q=q, k=k, scores=torch.zeros(2, 4, 6), query_start=12, key_start=2, key_len=6)
    args.update(overrides)
    return dvtp_kernels.accumulate_visual_scores(
        args.pop("q"), args.pop("k"), args.pop("scores"), args.pop("query_start"),
        args.pop("key_start"), args.pop("key_len"), **args)


ACCUMULATE_ERRORS = [
    (dict(q=torch.randn(2, 16, 8)), ValueError, r"q must be \[B, Hq, N, D\]"),
    (dict(k=torch.randn(2, 2, 16)), ValueError, r"k must be \[B, Hkv, N, D\]"),
    (dict(k=torch.randn(3, 2, 16, 8)), ValueError, r"k must be \[B, Hkv, N, D\] = \[2, Hkv, 16, 8\]"),
    (dict(k=torch.randn(2, 2, 15, 8)), ValueError, r"k must be .* got \[2, 2, 15, 8\]"),
    (dict(k=torch.randn(2, 2, 16, 4)), ValueError, r"k must be"),
    (dict(k=torch.randn(2, 3, 16, 8)), ValueError, r"Hq=4 must be a multiple of k's head count Hkv=3"),
    (dict(q=torch.randint(0, 5, (2, 4, 16, 8))), TypeError, r"q must be float32, float16 or bfloat16"),
    (dict(k=torch.randn(2, 2, 16, 8, dtype=torch.float16)), TypeError, r"k must have the dtype of q"),
    (dict(k=torch.randn(2, 2, 16, 8, device="meta")), ValueError, r"k is on meta but q is on cpu"),
    (dict(scores=torch.zeros(2, 4, 6, dtype=torch.float16)), TypeError, r"scores must be a float32"),
    (dict(scores=torch.zeros(3, 4, 6)), ValueError, r"scores must be \[B, R, Vmax\] with B=2"),
    (dict(scores=torch.zeros(2, 6, 4).transpose(1, 2)), ValueError, r"scores must be contiguous"),
    (dict(query_start=13), ValueError, r"query rows .* \[13, 17\) of item 0 fall outside the sequence of N=16"),
    (dict(query_start=-1), ValueError, r"query rows"),
    (dict(key_start=12), ValueError, r"key span .* \[12, 18\) of item 0 falls outside the sequence of N=16"),
    (dict(key_len=[6, -1]), ValueError, r"key span .* of item 1"),
    (dict(key_len=7, key_start=0), ValueError, r"key_len\[0\]=7 exceeds scores.shape\[2\] \(Vmax=6\)"),
    (dict(key_len=[1, 2, 3]), ValueError, r"key_len must be 2 integers"),
    (dict(key_len=torch.tensor([1.0, 2.0])), TypeError, r"key_len must be an integer tensor"),
    (dict(key_start="2"), TypeError, r"key_start must be an int"),
    (dict(lse=torch.zeros(2, 4, 16, dtype=torch.float64)), TypeError, r"lse must be float32"),
    (dict(lse=torch.zeros(2, 2, 16)), ValueError, r"lse must have shape \[B, Hq, N\] = \[2, 4, 16\]"),
    (dict(key_valid=torch.ones(2, 16)), TypeError, r"key_valid must be a bool tensor"),
    (dict(key_valid=torch.ones(2, 15, dtype=torch.bool)), ValueError, r"key_valid must have shape \[2, 16\]"),
    (dict(scale=float("nan")), TypeError, r"scale must be a finite float"),
    (dict(backend="gpu"), ValueError, r"backend='gpu' is not a backend; expected one of reference, cpu, triton, cuda"),
    (dict(backend="cuda"), ValueError, r"(?s)backend=.cuda. cannot run accumulate_visual_scores on this input:.*the cuda backend takes CUDA tensors, got tensors on cpu"),
]


@pytest.mark.parametrize("overrides,error,message", ACCUMULATE_ERRORS, ids=lambda x: str(x)[:40] if isinstance(x, str) else None)
def test_accumulate_rejects(overrides, error, message):
    with pytest.raises(error, match=message):
        accumulate(**overrides)


def select(**overrides):
    args = dict(scores=torch.rand(2, 4, 10), row_mask=torch.ones(2, 4, dtype=torch.bool), seq_len=20,
                key_start=3, key_len=10, keep_ratio=0.5)
    args.update(overrides)
    return dvtp_kernels.select_visual_tokens(
        args.pop("scores"), args.pop("row_mask"), args.pop("seq_len"), args.pop("key_start"),
        args.pop("key_len"), **args)


SELECT_ERRORS = [
    (dict(keep_ratio=0.0), ValueError, r"keep_ratio must be a number in \(0, 1\], got 0.0"),
    (dict(keep_ratio=1.5), ValueError, r"keep_ratio must be a number in \(0, 1\], got 1.5"),
    (dict(keep_ratio=-0.1), ValueError, r"keep_ratio must be"),
    (dict(keep_ratio=None), ValueError, r"give exactly one of keep_ratio and keep"),
    (dict(keep=3), ValueError, r"give exactly one of keep_ratio and keep"),
    (dict(keep_ratio=None, keep=[3, 11]), ValueError, r"keep\[1\]=11 must lie in \[1, key_len\[1\]=10\]"),
    (dict(keep_ratio=None, keep=0), ValueError, r"keep\[0\]=0 must lie in \[1, key_len\[0\]=10\]"),
    (dict(keep_ratio=None, keep=11), ValueError, r"keep\[0\]=11 must lie in \[1, key_len\[0\]=10\]"),
    # per-item keeps stay exact: a text-only item must be given 0
    (dict(keep_ratio=None, keep=[3, 2], key_len=[10, 0]), ValueError, r"keep\[1\]=2 must lie in \[0, key_len\[1\]=0\]"),
    (dict(keep_ratio=None, keep=torch.tensor([3, 2]), key_len=[10, 0]), ValueError, r"keep\[1\]=2 must lie in \[0"),
    # a scalar keep is checked against the items that have visual tokens
    (dict(keep_ratio=None, keep=11, key_len=[10, 0]), ValueError, r"keep\[0\]=11 must lie in \[1, key_len\[0\]=10\]"),
    (dict(keep_ratio=None, keep=torch.tensor(0), key_len=[10, 0]), ValueError, r"keep\[0\]=0 must lie in \[1"),
    (dict(scores=torch.rand(2, 4, 10).double()), TypeError, r"scores must be float32"),
    (dict(scores=torch.rand(4, 10)), ValueError, r"scores must be \[B, R, Vmax\]"),
    (dict(row_mask=torch.ones(2, 5, dtype=torch.bool)), ValueError, r"row_mask must have shape \[2, 4\]"),
    (dict(row_mask=torch.ones(2, 4)), TypeError, r"row_mask must be a bool tensor"),
    (dict(row_mask=torch.ones(2, 4, dtype=torch.bool, device="meta")), ValueError, r"row_mask is on meta"),
    (dict(seq_len=12), ValueError, r"key span .* \[3, 13\) of item 0 falls outside its sequence of seq_len=12"),
    (dict(key_len=11, seq_len=30), ValueError, r"key_len\[0\]=11 exceeds scores.shape\[2\]"),
]


@pytest.mark.parametrize("overrides,error,message", SELECT_ERRORS)
def test_select_rejects(overrides, error, message):
    with pytest.raises(error, match=message):
        select(**overrides)


def gather(**overrides):
    index = torch.tensor([[0, 2, 3, -1], [0, 1, 2, 3]])
    args = dict(tensors=[torch.randn(2, 5, 3), torch.arange(10).view(2, 5)], gather_index=index,
                new_len=torch.tensor([3, 4]))
    args.update(overrides)
    return dvtp_kernels.gather_compact(args.pop("tensors"), args.pop("gather_index"), args.pop("new_len"), **args)


GATHER_ERRORS = [
    (dict(tensors=torch.randn(2, 5)), TypeError, r"tensors must be a list or tuple"),
    (dict(tensors=[torch.randn(2, 5), torch.randn(2, 6)]), ValueError, r"tensors\[1\] has sequence length 6"),
    (dict(tensors=[torch.randn(3, 5)]), ValueError, r"tensors\[0\] has batch 3 but gather_index has B=2"),
    (dict(tensors=[torch.randn(2, 5, device="meta")]), ValueError, r"tensors\[0\] is on meta"),
    (dict(tensors=[torch.randn(5)]), ValueError, r"tensors\[0\] must have a batch dim and a sequence dim"),
    (dict(dims=0), ValueError, r"dims\[0\]=0 is not a sequence dim"),
    (dict(dims=[1]), ValueError, r"dims must be an int or one int per tensor \(2\)"),
    (dict(gather_index=torch.tensor([[0, 2, 3, -1], [0, 1, 2, 3]], dtype=torch.int32)), TypeError,
     r"gather_index must be an int64 \[B, M\] tensor"),
    (dict(gather_index=torch.tensor([[0, 2, 5, -1], [0, 1, 2, 3]])), ValueError,
     r"gather_index has entries outside \[-1, N=5\)"),
    (dict(new_len=torch.tensor([2, 4])), ValueError, r"gather_index must hold >= 0 entries exactly at positions < new_len"),
    (dict(new_len=torch.tensor([3, 5])), ValueError, r"new_len must lie in \[0, M=4\]"),
    (dict(pad_value=0.5), ValueError, r"pad_value=0.5 is not representable in tensors\[1\]'s dtype torch.int64"),
    (dict(pad_value="x"), TypeError, r"pad_value must be a bool, int or float"),
    (dict(tensors=[torch.ones(2, 5, dtype=torch.bool)], pad_value=2), ValueError, r"not representable .* torch.bool"),
    # pad_value against each tensor's dtype: integer ranges, float ranges, bool
    (dict(tensors=[torch.randn(2, 5), torch.zeros(2, 5, dtype=torch.uint8)], pad_value=-1), ValueError,
     r"pad_value=-1 is not representable in tensors\[1\]'s dtype torch.uint8 \(integers in \[0, 255\]\)"),
    (dict(tensors=[torch.zeros(2, 5, dtype=torch.int8)], pad_value=128), ValueError,
     r"pad_value=128 is not representable in tensors\[0\]'s dtype torch.int8 \(integers in \[-128, 127\]\)"),
    (dict(tensors=[torch.zeros(2, 5, dtype=torch.int64)], pad_value=2**63), ValueError,
     r"pad_value=9223372036854775808 is not representable in tensors\[0\]'s dtype torch.int64"),
    (dict(tensors=[torch.zeros(2, 5, dtype=torch.int32)], pad_value=float("inf")), ValueError,
     r"pad_value=inf is not representable in tensors\[0\]'s dtype torch.int32"),
    (dict(tensors=[torch.zeros(2, 5, dtype=torch.int32)], pad_value=float("nan")), ValueError,
     r"pad_value=nan is not representable in tensors\[0\]'s dtype torch.int32"),
    (dict(tensors=[torch.zeros(2, 5, dtype=torch.float16)], pad_value=1e6), ValueError,
     r"pad_value=1000000.0 is not representable in tensors\[0\]'s dtype torch.float16 "
     r"\(finite values need \|pad_value\| <= 65504\)"),
    (dict(tensors=[torch.zeros(2, 5, dtype=torch.float16)], pad_value=-65505), ValueError,
     r"pad_value=-65505 is not representable in tensors\[0\]'s dtype torch.float16"),
    (dict(tensors=[torch.zeros(2, 5, dtype=torch.bfloat16)], pad_value=1e39), ValueError,
     r"pad_value=1e\+39 is not representable in tensors\[0\]'s dtype torch.bfloat16"),
    (dict(tensors=[torch.zeros(2, 5)], pad_value=2**200), ValueError,
     r"is not representable in tensors\[0\]'s dtype torch.float32 \(finite values need"),
    (dict(tensors=[torch.zeros(2, 5, dtype=torch.float8_e4m3fn)], pad_value=float("-inf")), ValueError,
     r"pad_value=-inf is not representable in tensors\[0\]'s dtype torch.float8_e4m3fn .*no inf or nan"),
    (dict(tensors=[torch.zeros(2, 5, dtype=torch.bool)], pad_value=-1), ValueError,
     r"pad_value=-1 is not representable in tensors\[0\]'s dtype torch.bool \(bool takes 0, 1, False or True\)"),
    (dict(tensors=[torch.zeros(2, 5, dtype=torch.bool)], pad_value=0.5), ValueError, r"torch.bool"),
    (dict(pad_value=torch.tensor(1.0)), TypeError, r"pad_value must be a bool, int or float, got Tensor"),
]


@pytest.mark.parametrize("overrides,error,message", GATHER_ERRORS)
def test_gather_rejects(overrides, error, message):
    with pytest.raises(error, match=message):
        gather(**overrides)


@pytest.mark.parametrize("backend", dvtp_kernels.BACKENDS)
@pytest.mark.parametrize("overrides,error,message", [e for e in GATHER_ERRORS if "pad_value" in e[0]])
def test_pad_value_errors_are_the_same_on_every_backend_before_any_kernel(backend, overrides, error, message,
                                                                          monkeypatch):
    """Once, reference and cpu filled uint8 with -1 as 255 while triton raised, and float16
    with 1e6 gave inf on cpu/triton but raised on reference: now every backend (even one
    that cannot run here) gets the same error from validation, before dispatch."""
    from dvtp_kernels import dispatch

    def fail(*args, **kwargs):
        raise AssertionError("dispatch reached with an invalid pad_value")

    monkeypatch.setattr(dispatch, "choose", fail)
    monkeypatch.setattr(dispatch, "run", fail)
    with pytest.raises(error, match=message):
        gather(backend=backend, **overrides)


@pytest.mark.parametrize("dtype,value", [
    (torch.uint8, 255), (torch.uint8, 0), (torch.int8, -128), (torch.int64, 2**63 - 1), (torch.int64, -(2**63)),
    (torch.int16, 3.0), (torch.int32, True), (torch.bool, 1), (torch.bool, False), (torch.bool, 1.0),
    (torch.float16, 65504), (torch.float16, float("inf")), (torch.float16, float("nan")),
    (torch.bfloat16, -3.3e38), (torch.float32, float("-inf")), (torch.float64, 2**1000), (torch.complex64, -2.5),
    (torch.float8_e5m2, float("inf")), (torch.float8_e4m3fn, 448.0),
])
def test_pad_value_accepted_at_the_edges(dtype, value):
    from dvtp_kernels import validation

    assert validation.pad_value_problem(value, dtype) is None
    validation.check_pad_value(value, [torch.zeros(1, 1, dtype=dtype)])


def test_errors_come_before_any_kernel(monkeypatch):
    """Validation runs before dispatch: a failing check never reaches a backend."""
    from dvtp_kernels import dispatch

    def fail(*args, **kwargs):
        raise AssertionError("a kernel ran on invalid input")

    monkeypatch.setattr(dispatch, "run", fail)
    for overrides, error, _ in ACCUMULATE_ERRORS[:-2]:
        with pytest.raises(error):
            accumulate(**overrides)


def test_score_spans_are_checked_once_and_give_the_same_scores():
    """A ScoreSpans (spans validated once for a scoring pass) gives the per-call result and
    is refused for a call of other shapes or with key_start/key_len also given."""
    g = torch.Generator().manual_seed(3)
    B, H, N, D, R, V = 2, 3, 29, 17, 5, 11
    q, k = torch.randn(B, H, N, D, generator=g), torch.randn(B, H, N, D, generator=g)
    start = torch.rand(B, R, V, generator=g)
    plain = dvtp_kernels.accumulate_visual_scores(q, k, start.clone(), [20, 24], [3, 1], [11, 9], backend="reference")
    spans = dvtp_kernels.score_spans([20, 24], [3, 1], [11, 9], batch=B, rows=R, seq_len=N, vmax=V, device=q.device)
    once = dvtp_kernels.accumulate_visual_scores(q, k, start.clone(), spans, backend="reference")
    assert torch.equal(once, plain)
    with pytest.raises(ValueError, match="query rows"):
        dvtp_kernels.score_spans([26, 0], 0, 4, batch=B, rows=R, seq_len=N, vmax=V, device=q.device)
    with pytest.raises(ValueError, match="ScoreSpans checked for"):
        dvtp_kernels.accumulate_visual_scores(q[:, :, :28], k[:, :, :28], start.clone(), spans)
    with pytest.raises(ValueError, match="key_start and key_len must be None"):
        dvtp_kernels.accumulate_visual_scores(q, k, start.clone(), spans, 3, 11)
