"""Property-based tests (hypothesis) of the three ops on every CPU-runnable backend --
"reference", "cpu" (C++) and "triton" (interpreted, TRITON_INTERPRET=1) -- against
oracles written here, independent of dvtp_kernels/reference.py:

* accumulate_visual_scores: the float64 materialised softmax with the NaN/inf rules
  (`test_kernel_nonfinite.accumulate_oracle`). Random B, N, R, head dims including
  non-powers of two (20, 33, 72, 96), GQA groups, spans (random, touching the end,
  length 1, empty, the whole sequence), key padding patterns (random, tail, holes in the
  visual span, an item without any valid key), float32/float16/bfloat16, q/k as
  contiguous tensors, transposed views, slices (non-unit head-dim stride, offset
  sequence) and head-expanded (stride 0) views, computed or given lse, random scale,
  and in about a third of the cases NaN/+-inf sprinkled into q, k or the given lse.
  Tolerances per dtype (TOLERANCES below, from tests/test_accumulate_scores.py: the
  kernels accumulate in float32 from the rounded inputs the oracle also reads): float32
  atol 1e-5 rtol 1e-4; float16 atol 1e-3 rtol 1e-2; bfloat16 atol 2e-3 rtol 2e-2. NaN and
  inf positions must match exactly, and entries j >= key_len (NaN at start) must stay NaN.
  bfloat16 runs under the Triton interpreter too (the backend feeds it float32 operands,
  see triton_backend._accumulate_impl).
* select_visual_tokens: exact equality with the rule -- float64 sums in row order over the
  selected rows, rank by (importance desc, index asc), keep_count from keep_ratio
  (``max(1, int(n * r))``, capped at n, 0 for n = 0), a scalar keep or per-item keeps
  (extremes 1 and key_len favoured), all kept for an item without selected rows -- on
  random, tied (few distinct values), signed, +-inf-holding and NaN-holding scores; an
  item with a NaN importance must raise ValueError, and the backend's own op (called
  without the wrapper) must flag exactly those items in its nan_item output.
* gather_compact: bit-exact equality with direct indexing for 1-6 tensors of mixed dtypes
  (float32/16, bfloat16, float64, complex64, int64/32/16/8, uint8, bool), ranks 2-4, any
  sequence dim (negative too), contiguous/permuted/strided/expanded layouts, sorted or
  arbitrary (repeating) gather indices, extra -1 columns, N = 0; pad values in and out
  of each dtype's range (ValueError naming pad_value, the tensor and its dtype expected
  exactly when the rule written here says so).

Profiles (tests/hypothesis_profiles.py, registered by conftest.py): "ci" -- the default,
derandomized (reproducible), 4,200 examples in all -- and "thorough" (10x the examples,
random seeds), e.g.::

    .venv/bin/python -m pytest --hypothesis-profile=thorough tests/test_kernel_properties.py

or set DVTP_HYPOTHESIS_PROFILE=thorough. Triton-interpreted cases are slow: they get
fewer examples (EXAMPLES) and smaller shapes.
"""
import math

import pytest
import torch
from hypothesis import given, note, settings
from hypothesis import strategies as st

import dvtp_kernels
from backends import backend_params, require
from test_kernel_nonfinite import TOLERANCES, accumulate_oracle, finite_lse

NAN, INF = math.nan, math.inf
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")

# Examples per property and backend, as multiples of the profile's max_examples (ci: 100).
EXAMPLES = {
    "accumulate": {"reference": 4.0, "cpu": 8.0, "triton": 1.5},
    "select": {"reference": 4.0, "cpu": 8.0, "triton": 1.5},
    "gather": {"reference": 4.0, "cpu": 8.0, "triton": 3.0},
}


def cpu_backends():
    """The CPU-runnable backends (on a CUDA machine triton runs compiled, on CUDA tensors)."""
    return [p for p in backend_params() if p.values[1] == "cpu" or p.values[0] == "triton"]


def check_property(prop, strategy, op, backend):
    """Run ``prop(backend, device, case)`` on ``strategy(small)`` examples."""
    n = max(1, round(settings.default.max_examples * EXAMPLES[op][backend]))
    return settings(max_examples=n)(given(case=strategy)(prop))


# --------------------------------------------------------------------------------------
# accumulate_visual_scores
# --------------------------------------------------------------------------------------

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
HEAD_DIMS = [1, 8, 16, 20, 33, 64, 72, 96, 128]
LAYOUTS = ["contiguous", "transposed", "sliced_d", "sliced_n", "expanded_heads"]


def make_view(g, B, H, N, D, dtype, layout, magnitude, poison):
    """A [B, H, N, D] tensor of fresh random values in the given memory layout; ``poison``:
    (flat index into the storage, value) pairs written before the view is taken."""
    if layout == "transposed":
        base = torch.randn(B, N, H, D, generator=g)
    elif layout == "sliced_d":
        base = torch.randn(B, H, N, 2 * D, generator=g)
    elif layout == "sliced_n":
        base = torch.randn(B, H, N + 3, D, generator=g)
    elif layout == "expanded_heads":
        base = torch.randn(B, 1, N, D, generator=g)
    else:
        base = torch.randn(B, H, N, D, generator=g)
    base = (magnitude * base).to(dtype)
    flat = base.view(-1)
    for i, v in poison:
        if flat.numel():
            flat[i % flat.numel()] = v
    if layout == "transposed":
        return base.transpose(1, 2)
    if layout == "sliced_d":
        return base[..., ::2]
    if layout == "sliced_n":
        return base[:, :, 2 : N + 2]
    if layout == "expanded_heads":
        return base.expand(B, H, N, D)
    return base


@st.composite
def accumulate_cases(draw, small):
    B = draw(st.integers(1, 2 if small else 3))
    N = draw(st.integers(1, 20 if small else 80))
    D = draw(st.sampled_from(HEAD_DIMS))
    Hkv = draw(st.integers(1, 2 if small else 3))
    Hq = Hkv * draw(st.integers(1, 2 if small else 3))
    R = draw(st.integers(1, min(N, 6 if small else 24)))
    spans = []
    for _ in range(B):
        kind = draw(st.sampled_from(["random", "end", "one", "empty", "whole"]))
        if kind == "whole":
            k0, kl = 0, N
        else:
            kl = {"one": 1, "empty": 0}.get(kind) if kind in ("one", "empty") else draw(st.integers(0, N))
            k0 = N - kl if kind == "end" else draw(st.integers(0, N - kl))
        spans.append((draw(st.integers(0, N - R)), k0, kl))
    poison_value = st.sampled_from([NAN, INF, -INF])
    n_poison = draw(st.sampled_from([0, 0, 0, 0, 1, 2]))
    return dict(
        B=B, N=N, D=D, Hq=Hq, Hkv=Hkv, R=R, spans=spans,
        extra_v=draw(st.integers(0, 3)),
        dtype=draw(st.sampled_from(DTYPES)),
        padding=draw(st.sampled_from(["none", "random", "tail", "visual_holes", "item_without_keys"])),
        q_layout=draw(st.sampled_from(LAYOUTS)),
        k_layout=draw(st.sampled_from(LAYOUTS)),
        with_lse=draw(st.booleans()),
        scale=draw(st.one_of(st.none(), st.floats(0.05, 0.6))),
        magnitude=draw(st.sampled_from([0.5, 1.0, 2.0])),
        poison=[(draw(st.sampled_from(["q", "k", "lse"])), draw(st.integers(0, 2**20)), draw(poison_value))
                for _ in range(n_poison)],
        seed=draw(st.integers(0, 2**31 - 1)),
    )


def build_accumulate(c):
    g = torch.Generator().manual_seed(c["seed"])
    B, N, D, Hq, Hkv, R = c["B"], c["N"], c["D"], c["Hq"], c["Hkv"], c["R"]
    poison = {name: [(i, v) for n, i, v in c["poison"] if n == name] for name in ("q", "k", "lse")}
    q = make_view(g, B, Hq, N, D, c["dtype"], c["q_layout"], c["magnitude"], poison["q"])
    k = make_view(g, B, Hkv, N, D, c["dtype"], c["k_layout"], 1.0, poison["k"])
    query_start = [s[0] for s in c["spans"]]
    key_start = [s[1] for s in c["spans"]]
    key_len = [s[2] for s in c["spans"]]
    key_valid = None
    if c["padding"] != "none":
        key_valid = torch.rand(B, N, generator=g) > (0.25 if c["padding"] == "random" else -1.0)
        for b in range(B):
            if c["padding"] == "tail":
                key_valid[b, N - int(torch.randint(0, N + 1, (1,), generator=g)) :] = False
            elif c["padding"] == "visual_holes" and key_len[b]:
                key_valid[b, key_start[b] + int(torch.randint(0, key_len[b], (1,), generator=g))] = False
        if c["padding"] == "item_without_keys":
            key_valid[B - 1] = False
    Vmax = max(key_len) + c["extra_v"]
    scores = torch.rand(B, R, Vmax, generator=g)
    for b in range(B):
        scores[b, :, key_len[b] :] = NAN  # never written: must stay NaN
    scale = D ** -0.5 if c["scale"] is None else c["scale"]
    lse = None
    if c["with_lse"]:
        lse = finite_lse(q.nan_to_num(0.0, 0.0, 0.0), k.nan_to_num(0.0, 0.0, 0.0), scale, key_valid)
        for b, q0 in enumerate(query_start):  # rows the op must not read
            lse[b, :, :q0] = NAN
            lse[b, :, q0 + R :] = NAN
        flat = lse.view(-1)
        for i, v in poison["lse"]:
            flat[i % flat.numel()] = v
    return dict(q=q, k=k, scores=scores, query_start=query_start, key_start=key_start, key_len=key_len,
                scale=scale if c["scale"] is not None else None, oracle_scale=scale, lse=lse, key_valid=key_valid)


def accumulate_property(backend, device, case):
    a = build_accumulate(case)
    note(f"q {a['q'].dtype} {tuple(a['q'].shape)} strides {a['q'].stride()}, k strides {a['k'].stride()}")
    out = a["scores"].clone().to(device)
    dev = lambda t: None if t is None else t.to(device)  # noqa: E731
    result = dvtp_kernels.accumulate_visual_scores(
        dev(a["q"]), dev(a["k"]), out, a["query_start"], a["key_start"], a["key_len"],
        scale=a["scale"], lse=dev(a["lse"]), key_valid=dev(a["key_valid"]), backend=backend)
    assert result is out
    expected = accumulate_oracle(a["q"], a["k"], a["scores"], a["query_start"], a["key_start"], a["key_len"],
                                 a["oracle_scale"], a["lse"], a["key_valid"])
    torch.testing.assert_close(out.cpu().double(), expected, equal_nan=True, **TOLERANCES[case["dtype"]])


@pytest.mark.parametrize("backend,device", cpu_backends())
def test_accumulate_matches_oracle(backend, device):
    require(backend, device, "accumulate_visual_scores")
    small = backend == "triton" and device == "cpu"
    check_property(lambda case: accumulate_property(backend, device, case),
                   accumulate_cases(small), "accumulate", backend)()


# --------------------------------------------------------------------------------------
# select_visual_tokens
# --------------------------------------------------------------------------------------


@st.composite
def select_cases(draw, small):
    B = draw(st.integers(1, 3))
    R = draw(st.integers(0, 10))
    Vmax = draw(st.integers(1, 40 if small else 300))
    key_len = [draw(st.one_of(st.just(0), st.just(1), st.just(Vmax), st.integers(0, Vmax))) for _ in range(B)]
    key_start = [draw(st.integers(0, 5)) for _ in range(B)]
    seq_len = [k0 + kl + draw(st.integers(0, 5)) for k0, kl in zip(key_start, key_len)]
    keep_mode = draw(st.sampled_from(["ratio", "ratio", "scalar", "per_item"]))
    if keep_mode == "ratio":
        keep = draw(st.one_of(st.just(1.0), st.just(1e-9), st.floats(1e-3, 1.0)))
    elif keep_mode == "scalar":
        positive = [n for n in key_len if n > 0]
        high = min(positive) if positive else 5
        keep = draw(st.one_of(st.just(1), st.just(high), st.integers(1, high)))
    else:
        keep = [0 if n == 0 else draw(st.one_of(st.just(1), st.just(n), st.integers(1, n))) for n in key_len]
    return dict(
        B=B, R=R, Vmax=Vmax, key_len=key_len, key_start=key_start, seq_len=seq_len, keep_mode=keep_mode,
        keep=keep, values=draw(st.sampled_from(["rand", "ties", "all_equal", "signed", "inf", "nan"])),
        row_p=draw(st.sampled_from([0.0, 0.3, 0.7, 1.0])), seed=draw(st.integers(0, 2**31 - 1)),
    )


def build_select(c):
    g = torch.Generator().manual_seed(c["seed"])
    B, R, V = c["B"], c["R"], c["Vmax"]
    kind = c["values"]
    if kind == "ties":  # few distinct integers: float64 sums exact, ties real
        scores = torch.randint(0, 3, (B, R, V), generator=g).float()
    elif kind == "all_equal":
        scores = torch.ones(B, R, V)
    elif kind == "signed":
        scores = torch.randn(B, R, V, generator=g)
    else:
        scores = torch.rand(B, R, V, generator=g)
    if kind in ("inf", "nan") and scores.numel():
        picks = torch.randint(0, scores.numel(), (3,), generator=g)
        values = [INF, -INF, INF] if kind == "inf" else [NAN, NAN, INF]
        for i, v in zip(picks.tolist(), values):
            scores.view(-1)[i] = v
    row_mask = torch.rand(B, R, generator=g) < c["row_p"]
    return scores, row_mask


def rule_select(scores, row_mask, c):
    """-> (nan_items, keep_count, kept per item), by the documented rule, in Python floats."""
    B, R = scores.shape[:2]
    S = scores.tolist()
    M = row_mask.tolist()
    nan_items, keep_count, kept = [], [], []
    for b in range(B):
        n = c["key_len"][b]
        imp = [0.0] * n
        for i in range(R):
            if M[b][i]:
                row = S[b][i]
                for j in range(n):
                    imp[j] += row[j]
        if any(math.isnan(x) for x in imp):
            nan_items.append(b)
        if not any(M[b]):
            kc = n
        elif c["keep_mode"] == "ratio":
            kc = 0 if n == 0 else min(n, max(1, int(n * c["keep"])))
        elif c["keep_mode"] == "scalar":
            kc = 0 if n == 0 else c["keep"]
        else:
            kc = c["keep"][b]
        keep_count.append(kc)
        kept.append(sorted(sorted(range(n), key=lambda j: (-imp[j], j))[:kc]))
    return nan_items, keep_count, kept


def select_property(backend, device, case):
    scores, row_mask = build_select(case)
    keep = dict(keep_ratio=case["keep"]) if case["keep_mode"] == "ratio" else dict(keep=case["keep"])
    nan_items, keep_count, kept = rule_select(scores, row_mask, case)
    call = lambda: dvtp_kernels.select_visual_tokens(  # noqa: E731
        scores.to(device), row_mask.to(device), case["seq_len"], case["key_start"], case["key_len"],
        backend=backend, **keep)
    # The backend's own op, without the wrapper: its nan_item flag is exactly the rule's.
    from dvtp_kernels import dispatch, reference, validation

    args, requested = validation.check_select(scores.to(device), row_mask.to(device), case["seq_len"],
                                              case["key_start"], case["key_len"], keep.get("keep_ratio"),
                                              keep.get("keep"))
    args["keep_count"] = reference.effective_keep_count(args["row_mask"], args["key_len"],
                                                        torch.tensor(requested, device=device))
    *_, nan_item = dispatch.run(backend, "select_visual_tokens", **args,
                                max_new_len=max(case["seq_len"]), max_keep=max(case["key_len"]))
    assert torch.nonzero(nan_item.cpu()).flatten().tolist() == nan_items
    if nan_items:
        with pytest.raises(ValueError, match=rf"scores gives a NaN importance.*item {nan_items[0]}:"):
            call()
        return
    gather_index, new_len, keep_index, kc = (t.cpu() for t in call())
    assert kc.tolist() == keep_count
    B = case["B"]
    lengths = [case["seq_len"][b] - case["key_len"][b] + keep_count[b] for b in range(B)]
    assert new_len.tolist() == lengths
    assert gather_index.shape == (B, max(lengths)) and keep_index.shape == (B, max(keep_count))
    for b in range(B):
        k0, n = case["key_start"][b], case["key_len"][b]
        assert keep_index[b].tolist() == kept[b] + [-1] * (max(keep_count) - keep_count[b])
        positions = list(range(k0)) + [k0 + j for j in kept[b]] + list(range(k0 + n, case["seq_len"][b]))
        assert gather_index[b].tolist() == positions + [-1] * (max(lengths) - len(positions))


@pytest.mark.parametrize("backend,device", cpu_backends())
def test_select_matches_rule(backend, device):
    require(backend, device, "select_visual_tokens")
    small = backend == "triton" and device == "cpu"
    check_property(lambda case: select_property(backend, device, case),
                   select_cases(small), "select", backend)()


# --------------------------------------------------------------------------------------
# gather_compact
# --------------------------------------------------------------------------------------

INT_RANGES = {
    torch.int64: (-(2**63), 2**63 - 1), torch.int32: (-(2**31), 2**31 - 1), torch.int16: (-(2**15), 2**15 - 1),
    torch.int8: (-128, 127), torch.uint8: (0, 255),
}
FLOAT_MAX = {
    torch.float16: 65504.0, torch.bfloat16: 3.3895313892515355e38, torch.float32: 3.4028234663852886e38,
    torch.float64: 1.7976931348623157e308, torch.complex64: 3.4028234663852886e38,
}
GATHER_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.complex64,
                 torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool]
PAD_VALUES = [0, 1, -1, 7, True, False, 0.5, -2.5, 255, 256, -129, 70000, 1e6, 1e39, 2**62 + 1, -(2**63) - 1,
              INF, -INF, NAN]


def representable(v, dtype) -> bool:
    """The documented pad_value rule, restated."""
    if dtype == torch.bool:
        return v in (0, 1)
    if dtype in INT_RANGES:
        if isinstance(v, float) and not v.is_integer():  # also inf and nan
            return False
        lo, hi = INT_RANGES[dtype]
        return lo <= int(v) <= hi
    if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
        return True  # all float dtypes drawn here have inf and nan
    return abs(v) <= FLOAT_MAX[dtype]


@st.composite
def gather_cases(draw, small):
    B = draw(st.integers(1, 3))
    N = draw(st.integers(0, 24 if small else 60))
    specs = []
    for _ in range(draw(st.integers(1, 4 if small else 6))):
        rank = draw(st.integers(2, 4))
        sizes = [draw(st.integers(1, 3 if small else 4)) for _ in range(rank - 2)]
        specs.append(dict(
            dtype=draw(st.sampled_from(GATHER_DTYPES)), rank=rank, dim=draw(st.integers(1, rank - 1)),
            sizes=sizes, negative_dim=draw(st.booleans()),
            layout=draw(st.sampled_from(["contiguous", "permuted", "strided", "expanded"])),
        ))
    lengths = [draw(st.integers(0, N if N else 0)) for _ in range(B)] if N else [0] * B
    return dict(B=B, N=N, specs=specs, lengths=lengths, extra_m=draw(st.integers(0, 2)),
                sorted_index=draw(st.booleans()), pad=draw(st.sampled_from(PAD_VALUES)),
                seed=draw(st.integers(0, 2**31 - 1)))


def make_gather_tensor(g, B, N, spec):
    dims = list(spec["sizes"])
    d = spec["dim"]
    shape = [B] + dims[: d - 1] + [N] + dims[d - 1 :]
    dtype, layout = spec["dtype"], spec["layout"]
    if layout == "strided":  # every other element of the last dim
        alloc = shape[:-1] + [2 * shape[-1]]
    elif layout == "expanded":  # stride 0 in every dim but batch and sequence
        alloc = [size if i in (0, d) else 1 for i, size in enumerate(shape)]
    elif layout == "permuted":  # memory order of the dims reversed
        alloc = shape[::-1]
    else:
        alloc = shape
    if dtype == torch.bool:
        base = torch.rand(alloc, generator=g) > 0.5
    elif dtype.is_floating_point or dtype.is_complex:
        base = (100 * torch.randn(alloc, generator=g)).to(dtype)
    else:
        lo, hi = INT_RANGES[dtype]
        base = torch.randint(max(lo, -(2**62)), min(hi, 2**62), alloc, generator=g, dtype=torch.int64).to(dtype)
    if layout == "strided":
        return base[..., ::2]
    if layout == "expanded":
        return base.expand(shape)
    if layout == "permuted":
        return base.permute(list(range(len(shape)))[::-1])
    return base


def gather_property(backend, device, case):
    g = torch.Generator().manual_seed(case["seed"])
    B, N = case["B"], case["N"]
    tensors = [make_gather_tensor(g, B, N, s) for s in case["specs"]]
    dims = [s["dim"] - (len(t.shape) if s["negative_dim"] else 0) for s, t in zip(case["specs"], tensors)]
    M = max(case["lengths"]) + case["extra_m"]
    index = torch.full((B, M), -1, dtype=torch.int64)
    for b, n in enumerate(case["lengths"]):
        if n == 0:
            continue
        if case["sorted_index"]:
            rows = torch.sort(torch.randperm(N, generator=g)[:n]).values
        else:
            rows = torch.randint(0, N, (n,), generator=g)
        index[b, :n] = rows
    pad = case["pad"]
    note(f"shapes {[tuple(t.shape) for t in tensors]} strides {[t.stride() for t in tensors]} dims {dims}")
    call = lambda: dvtp_kernels.gather_compact(  # noqa: E731
        [t.to(device) for t in tensors], index.to(device), case["lengths"], dims=dims, pad_value=pad,
        backend=backend)
    bad = [i for i, t in enumerate(tensors) if not representable(pad, t.dtype)]
    if bad:
        i = bad[0]
        with pytest.raises(ValueError, match=rf"pad_value=.* is not representable in tensors\[{i}\]'s dtype "
                                             rf"{str(tensors[i].dtype)}"):
            call()
        return
    outs = call()
    assert len(outs) == len(tensors)
    for t, d, out in zip(tensors, dims, outs):
        d = d % t.dim()
        shape = list(t.shape)
        shape[d] = M
        assert list(out.shape) == shape and out.dtype == t.dtype and out.is_contiguous()
        # (a Python int beyond int64/uint64 can fill only float dtypes: via the nearest float)
        fill = float(pad) if isinstance(pad, int) and not -(2**63) <= pad < 2**64 else pad
        expected = torch.full(shape, fill, dtype=t.dtype)
        for b, n in enumerate(case["lengths"]):
            expected[b].narrow(d - 1, 0, n).copy_(t[b].index_select(d - 1, index[b, :n]))
        torch.testing.assert_close(out.cpu(), expected, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("backend,device", cpu_backends())
def test_gather_matches_indexing(backend, device):
    require(backend, device, "gather_compact")
    small = backend == "triton" and device == "cpu"
    check_property(lambda case: gather_property(backend, device, case),
                   gather_cases(small), "gather", backend)()
