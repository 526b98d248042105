"""Self-test of the kernel backends (the library behind ``dvtp selftest``).

`run` checks every usable backend ("reference", "cpu", "triton", "cuda") of the three
`dvtp_kernels` ops against `dvtp_kernels.reference` run in float64, on fresh random
inputs over a grid of shapes and dtypes, and checks that `dvtp.generate` with
``PruningConfig(keep_ratio=1.0, backend=b)`` reproduces unpruned generation token for
token. It is how a user on a GPU machine checks the CUDA and compiled Triton kernels in
one command, so the grid covers the categories the op tests cover
(tests/test_accumulate_scores.py, test_select_tokens.py, test_gather_compact.py,
test_kernel_nonfinite.py):

* accumulate_visual_scores: N from 1 to 2000 (1, 7, 129, 257, 1000, ...); head dims 17,
  20, 64, 80, 96, 128, 256 (vectorised and scalar loads, every CUDA head-dim padding, wide
  and narrow key tiles); GQA and MQA; q as a transposed (strided) view; per-item
  query_start / key_start / key_len (a one-token span, a span ending at the last key, an
  item with key_len 0); key_valid padding with holes; lse given (exact, NaN at rows the
  op must not read) and computed; float32 / float16 / bfloat16; NaN / inf inputs with
  both kinds of lse.
* select_visual_tokens: Vmax 1 to 3500, real ties (integer scores), keep_ratio 0.5,
  0.29, 1e-9, 1.0, explicit per-item and scalar keep, an item with no selected row,
  a text-only item.
* gather_compact: seven tensors of six dtypes in one call (sequence dims 1, 2 and -1,
  strided views), N = 1, 7, 129, 1000, pad values 0, 1, -2.5 and at the edges of each
  dtype's range (int64 2**62 + 1, float16 NaN, ...).
* generate: the tiny LLaDA model (`dvtp.models.tiny_llada_config`), one and two blocks,
  greedy and temperature 0.7.

Triton on CPU runs in its interpreter (``TRITON_INTERPRET=1``, set before importing
dvtp_kernels; without it "triton" is reported unusable on CPU), which executes kernels
in numpy one program at a time: there only the shapes with N <= 129 (select: Vmax <=
257) run, as in the op tests. ``quick=True`` runs a small subset of every category
(a few seconds on CPU).

Every case is seeded from ``seed`` and its own label, not from the backend, so every
backend gets the same inputs and a failure reproduces with the same ``seed``. Integer
outputs (indices, counts, lengths) and gathered values must match exactly (bit for bit);
the float tolerances of accumulate_visual_scores are the named constants below.
"""
from __future__ import annotations

import math
import time
import warnings
import zlib
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import torch

import dvtp_kernels
from dvtp_kernels import dispatch, reference, validation

__all__ = ["CaseResult", "SelftestReport", "run", "CHECKED_OPS"]

CHECKED_OPS = (*dispatch.OPS, "generate")

# accumulate_visual_scores tolerances, on the increment the op adds to ``scores`` (max
# absolute error over the case; increments are sums over Hq heads of probabilities).
# float32: the kernels compute in float32 as PyTorch would; this is the float32 tolerance of
# tests/test_accumulate_scores.py (atol 1e-5, rtol 1e-4), taken relative to the case's
# largest increment.
F32_ATOL = 1e-5
F32_RTOL = 1e-4
# float16 / bfloat16: the inputs are rounded to the dtype first and the float64 reference
# reads those rounded values, so what is left is the kernel's own arithmetic. As in
# flash-attention's tests, that error must be at most LOW_PRECISION_FACTOR times the error
# of PyTorch computing the same thing in the dtype (q k^T, softmax and head sum in
# float16 / bfloat16), and never needs to be below the float32 bound.
LOW_PRECISION_FACTOR = 2.0

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@dataclass
class CaseResult:
    """One checked case: an op on a backend, one dtype, one shape."""

    op: str  # "accumulate_visual_scores" | "select_visual_tokens" | "gather_compact" | "generate"
    backend: str  # "reference" | "cpu" | "triton" | "cuda"
    dtype: str  # e.g. "float32", "bfloat16", "mixed"
    case: str  # short human label of the shape, e.g. "B=2 N=129 Hq=6 Hkv=2 D=17 lse=given pad"
    worst_error: float  # max abs error vs the float64 reference (0.0 for exact checks; inf/nan if it blew up)
    tolerance: float
    passed: bool
    detail: str = ""  # why it failed (exception text, which output); empty when passed


@dataclass
class SelftestReport:
    """What `run` found. ``requested`` holds the backends named in ``run(backends=...)``
    (empty when every backend was tried): one of them in ``unusable`` fails the report."""

    device: str
    results: list[CaseResult]
    unusable: dict[str, str]  # backend -> why it cannot run on this device (it was not run)
    seconds: float
    requested: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """Every case passed, at least one non-reference backend ran, and every backend
        asked for by name was usable."""
        if any(b in self.unusable for b in self.requested):
            return False
        if not any(r.backend != "reference" for r in self.results):
            return False
        return all(r.passed for r in self.results)

    def to_json(self) -> dict:
        """A dict that `json.dumps` takes, also with ``allow_nan=False``: a non-finite
        worst_error / tolerance is written as the string "inf", "-inf" or "nan"."""
        results = []
        for r in self.results:
            d = asdict(r)
            for key in ("worst_error", "tolerance"):
                d[key] = _json_float(d[key])
            results.append(d)
        return dict(
            device=self.device, ok=self.ok, seconds=self.seconds, requested=list(self.requested),
            unusable=dict(self.unusable), results=results,
        )


def _json_float(x: float) -> float | str:
    return x if math.isfinite(x) else str(x)


# ---------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------


def run(
    device: str = "cpu",
    *,
    quick: bool = False,
    backends: Sequence[str] | None = None,
    seed: int = 0,
    progress: Callable[[int, int, str], None] | None = None,
) -> SelftestReport:
    """Check every usable backend of the three ops (and the keep-1.0 sampler identity).

    Args:
        device: "cpu" or "cuda" (or "cuda:N"): where the inputs live. "cuda" needs a
            visible CUDA device.
        quick: a small subset of the grid (a few seconds on CPU).
        backends: the backends to check (names from ``dvtp_kernels.BACKENDS``); default all.
            Ones that cannot run on ``device`` are reported in ``unusable`` and skipped;
            naming such a backend here makes the report fail.
        seed: base seed of the inputs (each case derives its own from it and its label).
        progress: called as ``progress(done, total, label)`` after each case.

    Returns:
        A `SelftestReport`. An exception inside a backend is a failed case (its text in
        ``detail``), never raised. Bad arguments raise ValueError / TypeError before any
        case runs.
    """
    dev = _check_device(device)
    names = _check_backends(backends)
    if not isinstance(quick, bool):
        raise TypeError(f"quick must be a bool, got {quick!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {seed!r}")
    if progress is not None and not callable(progress):
        raise TypeError(f"progress must be a callable (done, total, label) or None, got {progress!r}")

    t0 = time.perf_counter()
    unusable = {}
    usable = []
    for name in names:
        reasons = _unusable_reasons(name, dev)
        if reasons:
            unusable[name] = "; ".join(reasons)
        else:
            usable.append(name)

    plan = _plan(dev, usable, quick, seed)
    results = []
    for done, case in enumerate(plan, start=1):
        results.append(case.execute())
        if progress is not None:
            progress(done, len(plan), case.title)
    return SelftestReport(
        device=str(dev), results=results, unusable=unusable, seconds=time.perf_counter() - t0,
        requested=tuple(names) if backends is not None else (),
    )


def _check_device(device) -> torch.device:
    if not isinstance(device, str):
        raise TypeError(f"device must be a str, 'cpu' or 'cuda', got {device!r}")
    from .devices import resolve_device

    return resolve_device(device)


def _check_backends(backends) -> list[str]:
    valid = ", ".join(dispatch.BACKENDS)
    if backends is None:
        return list(dispatch.BACKENDS)
    if isinstance(backends, str) or not isinstance(backends, Sequence):
        raise TypeError(f"backends must be a list of backend names ({valid}) or None, got {backends!r}")
    names = list(backends)
    if not names:
        raise ValueError(f"backends is empty; name at least one of {valid} (or pass None for all)")
    unknown = [b for b in names if b not in dispatch.BACKENDS]
    if unknown:
        raise ValueError(f"backends holds unknown names {unknown}; valid names: {valid}")
    repeated = sorted({b for b in names if names.count(b) > 1})
    if repeated:
        raise ValueError(f"backends names {repeated} more than once")
    return names


def _unusable_reasons(backend: str, device: torch.device) -> list[str]:
    """Why ``backend`` cannot run every op on ``device`` ([] when it can), without repeats."""
    reasons = []
    for op in dispatch.OPS:
        for reason in dispatch.not_supported_reasons(backend, op, device):
            if reason not in reasons:
                reasons.append(reason)
    return reasons


# ---------------------------------------------------------------------------------------
# Cases
# ---------------------------------------------------------------------------------------


@dataclass
class _Case:
    """A planned case: ``check()`` builds its inputs, runs the backend and compares."""

    op: str
    backend: str
    dtype: str
    label: str
    check: Callable[[], tuple[float, float, list[str]]]  # -> (worst error, tolerance, problems)

    @property
    def title(self) -> str:
        return f"{self.op} [{self.backend}] {self.dtype} {self.label}"

    def execute(self) -> CaseResult:
        try:
            worst, tol, problems = self.check()
        except Exception as exc:  # a failing backend is a result, not a crash of the run
            return CaseResult(self.op, self.backend, self.dtype, self.label, math.nan, math.nan, False,
                              f"{type(exc).__name__}: {exc}")
        if not worst <= tol:  # (also catches a NaN error)
            problems = [f"worst error {worst:.3g} exceeds the tolerance {tol:.3g}"] + problems
        return CaseResult(self.op, self.backend, self.dtype, self.label, float(worst), float(tol),
                          not problems, "; ".join(problems))


def _plan(device: torch.device, backends: list[str], quick: bool, seed: int) -> list[_Case]:
    """Every case to run, op by op, each op's backends side by side."""
    cases = []
    for make in (_accumulate_cases, _select_cases, _gather_cases):
        for backend in backends:
            interpreted = backend == "triton" and device.type == "cpu"
            cases += make(backend, device, quick, interpreted, seed)
    if backends:
        sampler = _SamplerIdentity(device, seed)
        for backend in backends:
            cases += sampler.cases(backend, quick)
    return cases


def _generator(seed: int, *parts) -> torch.Generator:
    """A CPU generator seeded from the run's seed and the case (not the backend)."""
    return torch.Generator().manual_seed(zlib.crc32(repr((seed, *parts)).encode()))


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


_SAME_SIZE_INT = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _bits(t: torch.Tensor) -> torch.Tensor:
    """``[*t.shape, w]`` integer bit patterns of the elements (w = 2 int64 words for
    16-byte complex128, else 1)."""
    t = t.contiguous()
    if t.element_size() == 16:
        return t.view(torch.int64).reshape(*t.shape, 2)
    return t.view(_SAME_SIZE_INT[t.element_size()]).unsqueeze(-1)


def _exact_error(got: torch.Tensor, want: torch.Tensor, name: str) -> tuple[float, list[str]]:
    """(largest absolute difference, problems) for outputs that must match bit for bit."""
    if got.shape != want.shape:
        return math.inf, [f"{name}: shape {tuple(got.shape)}, expected {tuple(want.shape)}"]
    if got.dtype != want.dtype:
        return math.inf, [f"{name}: dtype {got.dtype}, expected {want.dtype}"]
    got, want = got.detach().cpu(), want.detach().cpu()
    wrong = int((_bits(got) != _bits(want)).any(dim=-1).sum())
    if not wrong:
        return 0.0, []
    wide = torch.complex128 if got.is_complex() else torch.float64
    diff = (got.to(wide) - want.to(wide)).abs()
    # NaN against a number, or bits that differ at equal values (-0.0, NaN payloads): inf
    err = diff.nan_to_num(nan=math.inf).max().item()
    return (err if err > 0 else math.inf), [f"{name}: {wrong} of {got.numel()} entries differ from the reference"]


# --- accumulate_visual_scores ----------------------------------------------------------


@dataclass(frozen=True)
class _AccShape:
    B: int
    N: int
    Hq: int
    Hkv: int
    D: int
    R: int
    empty_item: bool = False  # item 1 has key_len 0 (its rows add nothing)

    def label(self, lse: bool, padded: bool) -> str:
        text = f"B={self.B} N={self.N} Hq={self.Hq} Hkv={self.Hkv} D={self.D} R={self.R}"
        text += " lse=given" if lse else " lse=computed"
        if padded:
            text += " pad"
        if self.empty_item:
            text += " key_len0"
        return text


# The grid (full mode): N = 1; odd sizes; head dims around the CUDA kernels' 64 / 128 / 256
# paddings and not a multiple of 8 (scalar loads); GQA 3:1 and 4:1, MQA; the last shape
# has enough row and key tiles for the GPU kernels' wide tiles and split lse.
_ACC_SHAPES = [
    _AccShape(1, 1, 1, 1, 64, 1),
    _AccShape(2, 7, 4, 4, 20, 7),
    _AccShape(3, 129, 6, 2, 17, 24, empty_item=True),
    _AccShape(2, 257, 8, 2, 64, 24),
    _AccShape(3, 1000, 4, 4, 128, 24),
    _AccShape(2, 700, 8, 1, 96, 40),
    _AccShape(1, 300, 2, 2, 256, 33),
    _AccShape(2, 2000, 4, 2, 80, 200),
]
_INTERPRETED_MAX_N = 129  # the Triton interpreter: small shapes only, as in the op tests
# quick: (shape, lse given, key_valid padding)
_ACC_QUICK = [(_ACC_SHAPES[1], True, False), (_ACC_SHAPES[2], False, True)]


def _accumulate_cases(backend, device, quick, interpreted, seed) -> list[_Case]:
    op = "accumulate_visual_scores"
    grid = []
    if quick:
        for dtype in FLOAT_DTYPES:
            grid += [(shape, dtype, lse, padded) for shape, lse, padded in _ACC_QUICK]
    else:
        for i, shape in enumerate(_ACC_SHAPES):
            if interpreted and shape.N > _INTERPRETED_MAX_N:
                continue
            for dtype in FLOAT_DTYPES:
                for lse in (False, True):
                    grid.append((shape, dtype, lse, (i + int(lse)) % 2 == 0))
    cases = []
    for shape, dtype, lse, padded in grid:
        label = shape.label(lse, padded)

        def check(shape=shape, dtype=dtype, lse=lse, padded=padded, label=label):
            g = _generator(seed, op, _dtype_name(dtype), label)
            inputs = _accumulate_inputs(shape, dtype, lse, padded, g)
            return _check_accumulate(backend, device, inputs)

        cases.append(_Case(op, backend, _dtype_name(dtype), label, check))
    nonfinite_dtypes = (torch.float32,) if quick else FLOAT_DTYPES
    for dtype in nonfinite_dtypes:
        for lse in (False, True):
            label = "B=2 N=37 Hq=4 Hkv=2 D=20 R=6 NaN/inf " + ("lse=given" if lse else "lse=computed") + " pad"

            def check(dtype=dtype, lse=lse, label=label):
                g = _generator(seed, op, _dtype_name(dtype), label)
                inputs = _nonfinite_inputs(dtype, lse, g)
                # The interpreter's numpy matmul warns on inf * 0: expected with these inputs.
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", "invalid value encountered", RuntimeWarning)
                    return _check_accumulate(backend, device, inputs)

            cases.append(_Case(op, backend, _dtype_name(dtype), label, check))
    return cases


def _accumulate_inputs(shape: _AccShape, dtype, with_lse, padded, g) -> dict:
    """CPU inputs: q ``[B, N, Hq, D]`` (made ``[B, Hq, N, D]`` by a transpose, like an
    attention layer's view), k ``[B, Hkv, N, D]`` of ``dtype``; spans that differ per item
    (item 0: one visual key, the last item's span ends at the last key); scores
    ``[B, R, Vmax]`` float32 random where the op adds and NaN where it must not write;
    lse ``[B, Hq, N]`` float32 (exact at the query rows, NaN elsewhere) or None;
    key_valid ``[B, N]`` bool or None."""
    B, N, Hq, Hkv, D, R = shape.B, shape.N, shape.Hq, shape.Hkv, shape.D, shape.R
    q = (1.5 * torch.randn(B, N, Hq, D, generator=g)).to(dtype)
    k = torch.randn(B, Hkv, N, D, generator=g).to(dtype)
    query_start, key_start, key_len = [], [], []
    for b in range(B):
        query_start.append(int(torch.randint(0, N - R + 1, (1,), generator=g)))
        if shape.empty_item and b == 1:
            length = 0
        elif b == 0 and B > 1:
            length = 1
        else:
            length = int(torch.randint(1, N + 1, (1,), generator=g))
        start = N - length if b == B - 1 else int(torch.randint(0, N - length + 1, (1,), generator=g))
        key_start.append(start)
        key_len.append(length)
    key_valid = None
    if padded:
        key_valid = torch.rand(B, N, generator=g) > 0.2
        for b in range(B):
            tail = int(torch.randint(0, max(1, N // 4), (1,), generator=g))
            key_valid[b, N - tail :] = False
            key_valid[b, int(torch.randint(0, N, (1,), generator=g))] = True
    scores = _poisoned_scores(B, R, key_len, g)
    lse = _exact_lse(q, k, query_start, R, key_valid) if with_lse else None
    return dict(q=q, k=k, scores=scores, query_start=query_start, key_start=key_start, key_len=key_len,
                lse=lse, key_valid=key_valid)


def _nonfinite_inputs(dtype, with_lse, g) -> dict:
    """NaN / inf cases of tests/test_kernel_nonfinite.py: B=2, Hq=4, Hkv=2, N=37, D=20,
    R=6, item 1 padded (tail and a hole inside its visual span).

    Computed lse: a NaN in one q row of item 0 (that row's entries become NaN), NaN and inf
    in k at padding keys of item 1 (never read). Given lse: NaN, +inf and -inf lse rows in
    item 0 (NaN, NaN, adds 0), a NaN in k at a visual column of item 1 (NaN in that column)
    and at a non-visual key (not read when the lse is given)."""
    B, N, Hq, Hkv, D, R = 2, 37, 4, 2, 20, 6
    q = torch.randn(B, N, Hq, D, generator=g).to(dtype)
    k = torch.randn(B, Hkv, N, D, generator=g).to(dtype)
    key_valid = torch.ones(B, N, dtype=torch.bool)
    key_valid[1, 30:] = False
    key_valid[1, 12] = False
    query_start, key_start, key_len = [31, 20], [4, 8], [15, 11]
    scores = _poisoned_scores(B, R, key_len, g)
    lse = None
    if with_lse:
        lse = _exact_lse(q, k, query_start, R, key_valid)
        lse[0, 1, 31] = math.nan
        lse[0, 2, 32] = math.inf
        lse[0, :, 33] = -math.inf
        k[1, 1, 8 + 3, 0] = math.nan
        k[1, 1, 0, 0] = math.nan
    else:
        q[0, 33, 3, 5] = math.nan  # item 0, query row 2, head 3 (q is [B, N, Hq, D] here)
        k[1, :, 33] = math.nan
        k[1, :, 12] = math.inf
    return dict(q=q, k=k, scores=scores, query_start=query_start, key_start=key_start, key_len=key_len,
                lse=lse, key_valid=key_valid)


def _poisoned_scores(B, R, key_len, g) -> torch.Tensor:
    """float32 ``[B, R, max(key_len) + 3]``: random start values where the op adds, NaN
    beyond each item's key_len (any write there shows)."""
    scores = torch.rand(B, R, max(key_len) + 3, generator=g)
    for b in range(B):
        scores[b, :, key_len[b] :] = math.nan
    return scores


def _row_logits(q, k, b, q0, R, key_valid, scale, dtype) -> torch.Tensor:
    """``[Hq, R, N]`` logits of item b's query rows over every key, in ``dtype``, invalid
    keys at -inf. q ``[B, N, Hq, D]`` (the un-transposed layout), k ``[B, Hkv, N, D]``."""
    group = q.shape[2] // k.shape[1]
    qb = q[b, q0 : q0 + R].transpose(0, 1).to(dtype)  # [Hq, R, D]
    kb = k[b].to(dtype).repeat_interleave(group, dim=0)  # [Hq, N, D]
    logits = (qb @ kb.transpose(-1, -2)) * scale
    if key_valid is not None:
        logits = logits.masked_fill(~key_valid[b].to(logits.device), -math.inf)
    return logits


def _exact_lse(q, k, query_start, R, key_valid) -> torch.Tensor:
    """The float32 ``[B, Hq, N]`` lse a flash kernel would return: float64-exact at the
    query rows, NaN at every row the op must not read."""
    B, N, Hq, D = q.shape
    lse = torch.full((B, Hq, N), math.nan)
    for b, q0 in enumerate(query_start):
        logits = _row_logits(q, k, b, q0, R, key_valid, D ** -0.5, torch.float64)
        lse[b, :, q0 : q0 + R] = torch.logsumexp(logits, dim=-1).float()
    return lse


def _check_accumulate(backend, device, inputs) -> tuple[float, float, list[str]]:
    q_host, k_host = inputs["q"], inputs["k"]
    dtype = q_host.dtype
    D = q_host.shape[-1]
    q = q_host.to(device).transpose(1, 2)  # [B, Hq, N, D], strided
    k = k_host.to(device)
    start = inputs["scores"].to(device)
    lse = None if inputs["lse"] is None else inputs["lse"].to(device)
    key_valid = None if inputs["key_valid"] is None else inputs["key_valid"].to(device)
    spans = (inputs["query_start"], inputs["key_start"], inputs["key_len"])

    # Expected: the reference in float64 on the float64 start values.
    args = validation.check_accumulate(q, k, start, *spans, None, lse, key_valid)
    expected = start.double()
    reference.accumulate_visual_scores(**dict(args, scores=expected), compute_dtype=torch.float64)

    scores = start.clone()
    out = dvtp_kernels.accumulate_visual_scores(q, k, scores, *spans, lse=lse, key_valid=key_valid,
                                                backend=backend)
    problems = [] if out is scores else ["did not return the scores buffer it updated"]
    got = scores.double()

    inside = torch.zeros_like(got, dtype=torch.bool)
    for b, kl in enumerate(inputs["key_len"]):
        inside[b, :, :kl] = True
    stray = int((~inside & ~got.isnan()).sum())
    if stray:
        problems.append(f"wrote {stray} entries at or beyond key_len (they must stay untouched)")

    finite = inside & expected.isfinite()
    odd = inside & ~expected.isfinite()  # NaN / inf the rules require
    mismatched = int((odd & ~((got == expected) | (got.isnan() & expected.isnan()))).sum())
    mismatched += int((finite & ~got.isfinite()).sum())
    if mismatched:
        problems.append(f"{mismatched} entries differ from the reference in NaN / inf")
    increment = (expected - start.double())[finite]
    error = ((got - start.double())[finite] - increment).abs()
    worst = error.max().item() if error.numel() else 0.0
    if mismatched:
        worst = math.inf

    tol = F32_ATOL + F32_RTOL * (increment.abs().max().item() if increment.numel() else 0.0)
    if dtype != torch.float32:
        R = start.shape[1]
        tol = max(tol, LOW_PRECISION_FACTOR * _pytorch_error(q_host.to(device), k, key_valid, spans, R,
                                                              D ** -0.5, dtype))
    return worst, tol, problems


def _pytorch_error(q, k, key_valid, spans, R, scale, dtype) -> float:
    """Max abs error of PyTorch's own computation in ``dtype`` (logits, softmax over the
    valid keys and head sum, all in the dtype) against the same computation in float64,
    over the entries both give finite. q ``[B, N, Hq, D]``, k ``[B, Hkv, N, D]``."""
    worst = 0.0
    for b, (q0, k0, kl) in enumerate(zip(*spans)):
        if kl == 0:
            continue
        sums = []
        for dt in (dtype, torch.float64):
            probs = torch.softmax(_row_logits(q, k, b, q0, R, key_valid, scale, dt), dim=-1)
            sums.append(probs[..., k0 : k0 + kl].sum(0).double())  # [R, kl]
        ok = sums[0].isfinite() & sums[1].isfinite()
        if ok.any():
            worst = max(worst, (sums[0] - sums[1])[ok].abs().max().item())
    return worst


# --- select_visual_tokens --------------------------------------------------------------


@dataclass(frozen=True)
class _SelectCase:
    R: int
    Vmax: int
    seq_len: tuple[int, ...]
    key_start: tuple[int, ...]
    key_len: tuple[int, ...]
    ties: bool  # integer scores in {0, 1, 2}: float64 row sums are exact, so ties are real
    no_row_item: bool = False  # item 1 selects no row (keeps all its tokens)

    @property
    def B(self) -> int:
        return len(self.seq_len)

    def label(self, keep_ratio, keep) -> str:
        text = f"B={self.B} R={self.R} Vmax={self.Vmax} key_len={list(self.key_len)}"
        text += f" keep_ratio={keep_ratio}" if keep is None else f" keep={keep}"
        if self.ties:
            text += " ties"
        if self.no_row_item:
            text += " no-row item"
        return text


# From tests/test_select_tokens.py: one token; a 3500-token image; odd spans with a span at
# position 0 and a one-token span; real ties; an item with no selected row.
_SELECT_CASES = [
    _SelectCase(1, 1, (1,), (0,), (1,), False),
    _SelectCase(32, 3500, (3700,), (50,), (3500,), False),
    _SelectCase(7, 129, (300, 300, 300), (0, 10, 171), (129, 1, 129), False, no_row_item=True),
    _SelectCase(16, 257, (400, 400, 400), (5, 100, 143), (257, 200, 257), True, no_row_item=True),
    _SelectCase(5, 1000, (1100, 1100), (100, 0), (1000, 999), True),
]
_SELECT_RATIOS = (0.5, 0.29, 1e-9, 1.0)
# Exact keep counts: per item (ties everywhere -> the lowest indices), and one scalar keep
# for a batch with a text-only item (it keeps 0).
_SELECT_KEEP = [
    (_SelectCase(4, 50, (60, 60, 55), (2, 10, 5), (50, 40, 50), True), [3, 40, 1]),
    (_SelectCase(5, 12, (20, 9, 16), (2, 4, 0), (12, 0, 7), False), 3),
]
_INTERPRETED_MAX_VMAX = 257


def _select_cases(backend, device, quick, interpreted, seed) -> list[_Case]:
    op = "select_visual_tokens"
    grid = []
    if quick:
        grid = [(_SELECT_CASES[2], 0.29, None), (_SELECT_CASES[3], 0.5, None), *[(c, None, k) for c, k in _SELECT_KEEP]]
    else:
        for case in _SELECT_CASES:
            if interpreted and case.Vmax > _INTERPRETED_MAX_VMAX:
                continue
            grid += [(case, ratio, None) for ratio in _SELECT_RATIOS]
        grid += [(c, None, k) for c, k in _SELECT_KEEP]
    cases = []
    for case, ratio, keep in grid:
        label = case.label(ratio, keep)

        def check(case=case, ratio=ratio, keep=keep, label=label):
            return _check_select(backend, device, case, ratio, keep, _generator(seed, op, label))

        cases.append(_Case(op, backend, "float32", label, check))
    return cases


def _check_select(backend, device, case: _SelectCase, keep_ratio, keep, g) -> tuple[float, float, list[str]]:
    B, R, V = case.B, case.R, case.Vmax
    if case.ties:
        scores = torch.randint(0, 3, (B, R, V), generator=g).float()
    else:
        scores = torch.rand(B, R, V, generator=g)
    row_mask = torch.rand(B, R, generator=g) > 0.4
    row_mask[:, int(torch.randint(0, R, (1,), generator=g))] = True  # every item selects a row ...
    if case.no_row_item:
        row_mask[1] = False  # ... except this one
    scores, row_mask = scores.to(device), row_mask.to(device)
    spans = (list(case.seq_len), list(case.key_start), list(case.key_len))

    args, requested = validation.check_select(scores, row_mask, *spans, keep_ratio, keep)
    keep_count = reference.effective_keep_count(args["row_mask"], args["key_len"],
                                                torch.tensor(requested, dtype=torch.int64, device=device))
    gather_index, new_len, keep_index = reference.select_visual_tokens(
        args["scores"], args["row_mask"], args["seq_len"], args["key_start"], args["key_len"], keep_count)
    expected = (gather_index, new_len, keep_index, keep_count)

    got = dvtp_kernels.select_visual_tokens(scores, row_mask, *spans, keep_ratio=keep_ratio, keep=keep,
                                            backend=backend)
    worst, problems = 0.0, []
    for name, ours, want in zip(("gather_index", "new_len", "keep_index", "keep_count"), got, expected):
        err, what = _exact_error(ours, want, name)
        worst, problems = max(worst, err), problems + what
    return worst, 0.0, problems


# --- gather_compact --------------------------------------------------------------------


def _random_index(B, N, g) -> tuple[torch.Tensor, torch.Tensor]:
    """A gather index like select_visual_tokens makes: increasing positions, -1 padded,
    at least one per row; and the row lengths."""
    rows = []
    for _ in range(B):
        keep = torch.rand(N, generator=g) > 0.45
        keep[int(torch.randint(0, N, (1,), generator=g))] = True
        rows.append(torch.nonzero(keep).flatten())
    M = max(r.numel() for r in rows)
    index = torch.full((B, M), -1, dtype=torch.int64)
    for b, r in enumerate(rows):
        index[b, : r.numel()] = r
    return index, torch.tensor([r.numel() for r in rows])


# (tensors, dims) a denoising loop compacts: embeddings, token ids, a mask, positions, K as
# a [B, H, N, d] view of [B, N, H, d] (dim 2), V (dim 2), a strided tensor with the
# sequence last (dim -1).
_MIXED_DIMS = [1, 1, 1, 1, 2, 2, -1]


def _mixed_tensors(B, N, small, g, device) -> list[torch.Tensor]:
    D, H, d = (8, 2, 4) if small else (96, 4, 32)
    return [
        torch.randn(B, N, D, generator=g).to(device),
        torch.randint(0, 126464, (B, N), generator=g).to(device),
        (torch.rand(B, N, generator=g) > 0.5).to(device),
        torch.randint(0, 2**30, (B, N), generator=g, dtype=torch.int32).to(device),
        torch.randn(B, N, H, d, generator=g).to(torch.bfloat16).to(device).transpose(1, 2),
        torch.randn(B, H, N, d, generator=g).to(torch.float16).to(device),
        torch.randn(B, D, N, generator=g).to(device)[:, ::2],
    ]


_GATHER_SIZES = [(1, 1), (1, 7), (3, 129), (2, 1000)]
_INTERPRETED_MAX_GATHER_N = 129
# Pad values at the edges of each dtype's range (tests/test_gather_compact.py): every
# backend must store exactly these bits.
_EDGE_PADS = [
    (torch.int64, 2**62 + 1), (torch.int64, -(2**63)), (torch.uint8, 255), (torch.int8, -128),
    (torch.int32, 2**31 - 1), (torch.bool, True), (torch.float16, 65504), (torch.float16, math.inf),
    (torch.float16, math.nan), (torch.bfloat16, -math.inf), (torch.float32, -1e38),
    (torch.float64, 2**1000), (torch.complex64, -2.5),
]
_EDGE_PADS_QUICK = [_EDGE_PADS[0], _EDGE_PADS[8], _EDGE_PADS[9]]


def _gather_cases(backend, device, quick, interpreted, seed) -> list[_Case]:
    op = "gather_compact"
    small = quick or interpreted
    mixed = []
    if quick:
        mixed = [((3, 129), 1)]
    else:
        for size in _GATHER_SIZES:
            if interpreted and size[1] > _INTERPRETED_MAX_GATHER_N:
                continue
            mixed += [(size, pad) for pad in (0, 1, -2.5)]
    cases = []
    for (B, N), pad in mixed:
        # -2.5 fits the float tensors only (positions 0, 4, 5, 6)
        which = list(range(len(_MIXED_DIMS))) if float(pad).is_integer() else [0, 4, 5, 6]
        dims = [_MIXED_DIMS[i] for i in which]
        label = f"B={B} N={N} {len(which)} tensors dims={dims} pad={pad}" + (" small" if small else "")

        def check(B=B, N=N, pad=pad, label=label, which=which, dims=dims):
            g = _generator(seed, op, label)
            index, new_len = _random_index(B, N, g)
            tensors = _mixed_tensors(B, N, small, g, device)
            return _check_gather(backend, [tensors[i] for i in which], dims, index.to(device),
                                 new_len.to(device), pad)

        cases.append(_Case(op, backend, "mixed", label, check))
    for dtype, pad in _EDGE_PADS_QUICK if quick else _EDGE_PADS:
        label = f"B=2 N=9 [B, N, 3] pad={_pad_text(pad)}"

        def check(dtype=dtype, pad=pad, label=label):
            g = _generator(seed, op, _dtype_name(dtype), label)
            index, new_len = _random_index(2, 9, g)
            x = (torch.randn(2, 9, 3, generator=g) * 10).to(dtype).to(device)
            return _check_gather(backend, [x], [1], index.to(device), new_len.to(device), pad)

        cases.append(_Case(op, backend, _dtype_name(dtype), label, check))
    return cases


def _pad_text(pad) -> str:
    """The pad value for a label: exact, except integers too long to read (2**1000)."""
    text = repr(pad)
    return text if len(text) <= 20 else f"~{float(pad):.4g}"


def _check_gather(backend, tensors, dims, index, new_len, pad) -> tuple[float, float, list[str]]:
    args = validation.check_gather(tensors, index, new_len, dims, pad)
    expected = reference.gather_compact(args["tensors"], args["gather_index"], args["dims"], args["pad_value"])
    got = dvtp_kernels.gather_compact(tensors, index, new_len, dims=dims, pad_value=pad, backend=backend)
    if len(got) != len(expected):
        return math.inf, 0.0, [f"returned {len(got)} tensors for {len(expected)} inputs"]
    worst, problems = 0.0, []
    for i, (ours, want) in enumerate(zip(got, expected)):
        err, what = _exact_error(ours, want, f"output {i} ({_dtype_name(want.dtype)})")
        if not what and not ours.is_contiguous():
            err, what = math.inf, [f"output {i} is not contiguous"]
        worst, problems = max(worst, err), problems + what
    return worst, 0.0, problems


# --- generate: keep_ratio 1.0 is the unpruned identity ---------------------------------


@dataclass(frozen=True)
class _GenConfig:
    gen_length: int
    steps: int
    block_length: int
    temperature: float

    def label(self) -> str:
        return (f"tiny LLaDA B=2 P=36 spans=(3,25),(6,20) gen={self.gen_length} steps={self.steps} "
                f"block={self.block_length} T={self.temperature} keep=1.0")


_GEN_CONFIGS = [_GenConfig(16, 8, 8, 0.0), _GenConfig(16, 8, 4, 0.0), _GenConfig(16, 8, 8, 0.7)]
_GEN_SPANS = [(3, 25), (6, 20)]
_GEN_PROMPT = 36


@dataclass
class _SamplerIdentity:
    """dvtp.generate with PruningConfig(keep_ratio=1.0, backend=b) against unpruned
    generation on the tiny LLaDA model (built once per run; the unpruned result of each
    configuration is computed once and shared by the backends)."""

    device: torch.device
    seed: int
    _model: object = None
    _prompt: torch.Tensor | None = None
    _baselines: dict = field(default_factory=dict)

    def cases(self, backend: str, quick: bool) -> list[_Case]:
        configs = _GEN_CONFIGS[:1] if quick else _GEN_CONFIGS
        return [_Case("generate", backend, "float32", cfg.label(), lambda cfg=cfg: self._check(backend, cfg))
                for cfg in configs]

    def _setup(self):
        if self._model is None:
            from dvtp import models

            model = models.llada_lm(models.tiny_llada_config(), seed=0).to(self.device)
            g = _generator(self.seed, "generate prompt")
            ids = torch.randint(0, model.config.mask_token_id, (len(_GEN_SPANS), _GEN_PROMPT), generator=g)
            with torch.no_grad():
                prompt = model.get_input_embeddings()(ids.to(self.device)).clone()
            # a stand-in image: random features over each item's visual span
            feats = 0.5 * torch.randn(len(_GEN_SPANS), _GEN_PROMPT, model.config.hidden_size, generator=g)
            for b, (s, n) in enumerate(_GEN_SPANS):
                prompt[b, s : s + n] = feats[b, s : s + n].to(self.device)
            self._model, self._prompt = model, prompt

    def _generate(self, cfg: _GenConfig, pruning):
        import dvtp

        return dvtp.generate(
            self._model, self._prompt, visual_span=_GEN_SPANS, gen_length=cfg.gen_length, steps=cfg.steps,
            block_length=cfg.block_length, temperature=cfg.temperature, pruning=pruning,
            # the sampler draws its noise where the model runs
            generator=torch.Generator(device=self.device).manual_seed(_generator(self.seed, "generate noise", cfg).initial_seed()),
        )

    def _check(self, backend: str, cfg: _GenConfig) -> tuple[float, float, list[str]]:
        import dvtp

        self._setup()
        if cfg not in self._baselines:
            self._baselines[cfg] = self._generate(cfg, None).sequences
        base = self._baselines[cfg]
        out = self._generate(cfg, dvtp.PruningConfig(keep_ratio=1.0, backend=backend))
        problems = []
        if out.sequences.shape != base.shape:
            return math.inf, 0.0, [f"sequences shape {tuple(out.sequences.shape)}, expected {tuple(base.shape)}"]
        differ = int((out.sequences != base).sum())
        if differ:
            problems.append(f"{differ} of {base.numel()} tokens differ from unpruned generation")
        if out.pruned_at_step is None:
            problems.append("no pruning step ran (the kernels were not exercised)")
        kept = [None if k is None else k.tolist() for k in out.kept_indices]
        if kept != [list(range(n)) for _, n in _GEN_SPANS]:
            problems.append("kept_indices are not every visual token")
        if out.seq_len_after != out.seq_len_before:
            problems.append(f"sequence lengths changed: {out.seq_len_before} -> {out.seq_len_after}")
        return float(differ), 0.0, problems
