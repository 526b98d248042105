"""Benchmark cases of the three kernel ops: dvtp's backends against what a user would
otherwise write with stock PyTorch.

* "scores" (`dvtp_kernels.accumulate_visual_scores`), baseline "eager": the published
  approach, materialise ``softmax(q k^T)`` ``[B, H, N, N]`` and slice the response rows'
  visual columns; "rows_only": what a careful user writes, the logits of the R rows only
  ``[B, H, R, N]``, logsumexp, exp, slice.
* "select" (`dvtp_kernels.select_visual_tokens`), baseline "topk_sort_index": masked mean
  over rows, ``torch.topk``, sort, and the gather index built with ``torch.cat``.
* "compact" (`dvtp_kernels.gather_compact`), baseline "index_select": one
  ``index_select`` per tensor of a denoising step (embeddings, ids, mask, positions, and
  the K/V rows of some layers).

Every implementation of a case reads the same inputs and returns its result: "scores"
impls the ``[B, R, V]`` float32 buffer they add into (one per impl), "select" impls a tuple
whose first element is the ``[B, new_len]`` int64 gather index, "compact" impls the list
of compacted tensors -- so tests can check that all agree before trusting a speedup.

Shapes: B=1 (a denoising step of one request) unless a case says otherwise; the visual span
starts at KEY_START, the R response rows are the last R positions. Grids run from small to
LLaDA-V step-1 size (N ~ 3800 tokens with ~3500 visual) and N = 8192 with 7000 visual
tokens; the CPU grid stops at N = 3800 where the eager baseline alone would need GiBs.
"""
from __future__ import annotations

import functools

import torch

import dvtp_kernels
from dvtp_kernels import dispatch

from .harness import Case

KEY_START = 40  # the visual span's first position (after the system prompt)
KEEP_RATIO = 0.25
KERNEL_OPS = {"scores": "accumulate_visual_scores", "select": "select_visual_tokens", "compact": "gather_compact"}
# What a user would write instead, the first of each being the baseline.
USER_IMPLS = {"scores": ("eager", "rows_only"), "select": ("topk_sort_index",), "compact": ("index_select",)}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

# (N, V): sequence length and visual tokens per grid point.
SIZES = ((1024, 700), (2048, 1700), (3800, 3500), (8192, 7000))
CPU_SIZES = SIZES[:3]
QUICK_SIZES = ((160, 100), (320, 250))
STEP1 = (3800, 3500)  # LLaDA-V's first denoising step: ~3500 visual tokens of a ~3800-token sequence


def implementations(op: str, device: torch.device) -> tuple[list[str], dict[str, str]]:
    """(impl names measured for ``op`` on ``device``: the user-written ones, baseline first,
    then the usable dvtp backends; the device's other dvtp backends -> why not measured).

    Backends made for the other device type (cpu on CUDA, cuda on CPU) are left out.
    """
    names = list(USER_IMPLS[op])
    skipped = {}
    for backend in dispatch.BACKENDS:
        if (backend == "cpu" and device.type != "cpu") or (backend == "cuda" and device.type != "cuda"):
            continue
        if backend == "triton" and device.type == "cpu":
            reasons = ["on CPU Triton runs only in its interpreter, a correctness tool: not timed"]
        else:
            reasons = dispatch.not_supported_reasons(backend, KERNEL_OPS[op], device)
        if reasons:
            skipped[backend] = "; ".join(reasons)
        else:
            names.append(backend)
    return names, skipped


def _randn(g: torch.Generator, shape, dtype, device) -> torch.Tensor:
    return torch.randn(*shape, generator=g).to(dtype).to(device)


# ---------------------------------------------------------------------------------------
# scores
# ---------------------------------------------------------------------------------------


def _scores_eager(q, k, scores, query_start):
    """softmax over all N keys for all N rows ``[B, H, N, N]``, then the slice."""
    R, V = scores.shape[1], scores.shape[2]
    probs = torch.softmax((q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5, dim=-1)
    scores += probs[:, :, query_start : query_start + R, KEY_START : KEY_START + V].sum(1, dtype=torch.float32)
    return scores


def _scores_rows_only(q, k, scores, query_start):
    """Logits of the R rows only ``[B, H, R, N]`` (float32), logsumexp, exp of the slice."""
    R, V = scores.shape[1], scores.shape[2]
    logits = ((q[:, :, query_start : query_start + R] @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5).float()
    probs = torch.exp(logits[..., KEY_START : KEY_START + V] - torch.logsumexp(logits, dim=-1, keepdim=True))
    scores += probs.sum(1)
    return scores


def _scores_dvtp(backend, q, k, scores, query_start):
    return dvtp_kernels.accumulate_visual_scores(q, k, scores, query_start, KEY_START, scores.shape[2], backend=backend)


def scores_case(device: torch.device, *, N: int, V: int, R: int, H: int, D: int, dtype: str = "fp32", B: int = 1) -> Case:
    """q, k ``[B, H, N, D]`` of ``dtype`` (strided as attention modules hand them over:
    a transposed ``[B, N, H, D]``); each impl adds the R last rows' attention to the V
    visual keys into its own float32 ``[B, R, V]`` buffer."""
    if KEY_START + V > N - R:
        raise ValueError(f"visual span [{KEY_START}, {KEY_START + V}) overlaps the {R} response rows of N={N}")
    names, skipped = implementations("scores", device)

    def setup():
        g = torch.Generator().manual_seed(0)
        q = _randn(g, (B, N, H, D), DTYPES[dtype], device).transpose(1, 2)
        k = _randn(g, (B, N, H, D), DTYPES[dtype], device).transpose(1, 2)
        fns = {}
        for name in names:
            impl = {"eager": _scores_eager, "rows_only": _scores_rows_only}.get(name) or functools.partial(_scores_dvtp, name)
            fns[name] = functools.partial(impl, q, k, torch.zeros(B, R, V, device=device), N - R)
        return fns

    batch = f" B={B}" if B != 1 else ""
    return Case("scores", f"N={N} V={V} R={R} H={H} D={D} {dtype}{batch}",
                dict(B=B, N=N, V=V, R=R, H=H, D=D, dtype=dtype), "eager", setup, skipped=skipped)


def scores_cases(device: torch.device, quick: bool) -> list[Case]:
    if quick:
        return [scores_case(device, N=N, V=V, R=16, H=4, D=32) for N, V in QUICK_SIZES]
    if device.type == "cpu":
        return (
            [scores_case(device, N=N, V=V, R=32, H=8, D=128) for N, V in CPU_SIZES]
            + [scores_case(device, N=3800, V=3500, R=R, H=8, D=128) for R in (16, 128, 256)]
            + [scores_case(device, N=3800, V=3500, R=32, H=8, D=64),
               scores_case(device, N=2048, V=1700, R=32, H=8, D=128, dtype="bf16")]
        )
    return (
        [scores_case(device, N=N, V=V, R=32, H=32, D=128, dtype=dt) for dt in ("fp32", "bf16") for N, V in SIZES]
        + [scores_case(device, N=3800, V=3500, R=R, H=32, D=128, dtype="bf16") for R in (16, 128, 256)]
        + [scores_case(device, N=3800, V=3500, R=32, H=H, D=D, dtype="bf16") for H, D in ((8, 128), (32, 64))]
    )


# ---------------------------------------------------------------------------------------
# select
# ---------------------------------------------------------------------------------------


def _select_topk(scores, row_mask, seq_len):
    """Masked mean over rows, topk, sort, and the gather index (prefix, kept, suffix)."""
    B, _, V = scores.shape
    importance = (scores * row_mask.unsqueeze(-1)).sum(1) / row_mask.sum(1, keepdim=True)
    kept = torch.topk(importance, max(1, int(V * KEEP_RATIO)), dim=-1).indices.sort(dim=-1).values
    prefix = torch.arange(KEY_START, device=scores.device).expand(B, -1)
    suffix = torch.arange(KEY_START + V, seq_len, device=scores.device).expand(B, -1)
    return torch.cat([prefix, KEY_START + kept, suffix], dim=1), kept


def _select_dvtp(backend, scores, row_mask, seq_len):
    return dvtp_kernels.select_visual_tokens(scores, row_mask, seq_len, KEY_START, scores.shape[2],
                                             keep_ratio=KEEP_RATIO, backend=backend)


def select_case(device: torch.device, *, N: int, V: int, R: int, B: int = 1) -> Case:
    """Accumulated scores ``[B, R, V]`` float32 and a row mask ``[B, R]`` (about 80 % of
    the rows still masked); keep KEEP_RATIO of the V visual tokens of an N-token sequence."""
    names, skipped = implementations("select", device)

    def setup():
        g = torch.Generator().manual_seed(0)
        scores = torch.rand(B, R, V, generator=g).to(device)
        row_mask = torch.rand(B, R, generator=g) > 0.2
        row_mask[:, 0] = True  # every item has a selected row (else dvtp keeps all its tokens)
        row_mask = row_mask.to(device)
        return {name: functools.partial(_select_topk if name == "topk_sort_index" else
                                        functools.partial(_select_dvtp, name), scores, row_mask, N)
                for name in names}

    return Case("select", f"N={N} V={V} R={R} B={B}", dict(B=B, N=N, V=V, R=R, keep=KEEP_RATIO),
                "topk_sort_index", setup, skipped=skipped)


def select_cases(device: torch.device, quick: bool) -> list[Case]:
    if quick:
        return [select_case(device, N=N, V=V, R=16, B=B) for (N, V), B in zip(QUICK_SIZES, (1, 2))]
    return (
        [select_case(device, N=N, V=V, R=128, B=B) for B in (1, 8) for N, V in SIZES]
        + [select_case(device, N=3800, V=3500, R=R) for R in (16, 32, 256)]
    )


# ---------------------------------------------------------------------------------------
# compact
# ---------------------------------------------------------------------------------------


def _compact_index_select(tensors, dims, gather_index, new_len):
    index = gather_index[0, : int(new_len[0])]
    return [t.index_select(d, index) for t, d in zip(tensors, dims)]


def _compact_dvtp(backend, tensors, dims, gather_index, new_len):
    return dvtp_kernels.gather_compact(tensors, gather_index, new_len, dims=dims, backend=backend)


def compact_case(device: torch.device, *, N: int, V: int, hidden: int, H: int, D: int, layers: int,
                 dtype: str = "fp32") -> Case:
    """One step's tensors (B=1): embeddings ``[1, N, hidden]`` of ``dtype``, int64 token
    ids ``[1, N]``, a bool mask ``[1, N]``, int64 positions ``[1, N]``, and K and V
    ``[1, H, N, D]`` of ``dtype`` for ``layers`` layers, compacted to the prefix, KEEP_RATIO
    of the V visual tokens and the suffix."""
    names, skipped = implementations("compact", device)
    new_len = N - V + max(1, int(V * KEEP_RATIO))
    size = DTYPES[dtype].itemsize
    per_token = hidden * size + 8 + 1 + 8 + 2 * layers * H * D * size

    def setup():
        g = torch.Generator().manual_seed(0)
        tensors = [_randn(g, (1, N, hidden), DTYPES[dtype], device),
                   torch.randint(0, 126464, (1, N), generator=g).to(device),
                   (torch.rand(1, N, generator=g) > 0.5).to(device),
                   torch.arange(N, device=device).unsqueeze(0)]
        tensors += [_randn(g, (1, H, N, D), DTYPES[dtype], device) for _ in range(2 * layers)]
        dims = [1, 1, 1, 1] + [2] * (2 * layers)
        scores = torch.rand(1, 1, V, generator=g).to(device)
        gather_index, lens, _, _ = dvtp_kernels.select_visual_tokens(
            scores, torch.ones(1, 1, dtype=torch.bool, device=device), N, KEY_START, V, keep_ratio=KEEP_RATIO)
        return {name: functools.partial(_compact_index_select if name == "index_select" else
                                        functools.partial(_compact_dvtp, name), tensors, dims, gather_index, lens)
                for name in names}

    return Case("compact", f"N={N} V={V} hidden={hidden} H={H} D={D} layers={layers} {dtype}",
                dict(N=N, V=V, keep=KEEP_RATIO, hidden=hidden, H=H, D=D, layers=layers, dtype=dtype),
                "index_select", setup,
                # read + written: what a memory-bound copy moves
                metrics=lambda name, out: {"bytes_moved": 2 * new_len * per_token, "new_len": new_len},
                skipped=skipped)


# The scaled end-to-end model's sizes (hidden 256, 8 heads of 32) and LLaDA-8B's (4096, 32 of 128).
SCALED = dict(hidden=256, H=8, D=32)
LLADA_8B = dict(hidden=4096, H=32, D=128)


def compact_cases(device: torch.device, quick: bool) -> list[Case]:
    if quick:
        return [compact_case(device, N=N, V=V, hidden=32, H=2, D=16, layers=2) for N, V in QUICK_SIZES]
    if device.type == "cpu":
        return (
            [compact_case(device, N=N, V=V, layers=4, **SCALED) for N, V in SIZES]
            + [compact_case(device, N=3800, V=3500, layers=4, dtype="bf16", **SCALED),
               compact_case(device, N=3800, V=3500, layers=1, **LLADA_8B)]
        )
    return (
        [compact_case(device, N=N, V=V, layers=4, dtype="bf16", **LLADA_8B) for N, V in SIZES]
        + [compact_case(device, N=N, V=V, layers=4, **LLADA_8B) for N, V in (STEP1, SIZES[-1])]
    )


CASES = {"scores": scores_cases, "select": select_cases, "compact": compact_cases}


def step1_case(op: str, device: torch.device) -> Case:
    """The LLaDA-V step-1 case of ``op`` (the pytest-benchmark tests time this one)."""
    N, V = STEP1
    cuda = device.type == "cuda"
    if op == "scores":
        return scores_case(device, N=N, V=V, R=128, H=32 if cuda else 8, D=128, dtype="bf16" if cuda else "fp32")
    if op == "select":
        return select_case(device, N=N, V=V, R=128)
    if op == "compact":
        return (compact_case(device, N=N, V=V, layers=4, dtype="bf16", **LLADA_8B) if cuda
                else compact_case(device, N=N, V=V, layers=4, **SCALED))
    raise ValueError(f"op must be one of {', '.join(CASES)}, got {op!r}")
