"""dvtp_kernels: the three ops behind RedVTP visual-token pruning, without N x N attention maps.

1. `accumulate_visual_scores`: attention probabilities from response query rows to the
   visual keys, summed over heads, added into a float32 ``[B, R, Vmax]`` buffer.
2. `select_visual_tokens`: top-r visual tokens by importance and the gather index of the
   compacted sequence.
3. `gather_compact`: compaction of many sequence-aligned tensors by that index.

Each runs on one of the backends "reference", "cpu", "triton", "cuda" (see
`dvtp_kernels.dispatch`); ``python -m dvtp_kernels.info`` shows what is built and usable.
Importing this package neither loads the compiled extension nor initialises CUDA (it only
registers the traceable wrapper ops of `dvtp_kernels._traceable`).
"""
from __future__ import annotations

from typing import Sequence

import torch

from . import _traceable, dispatch, reference, validation
from .dispatch import BACKENDS, BackendError
from .validation import ScoreSpans, check_accumulate, check_gather, check_select, score_spans

__all__ = [
    "accumulate_visual_scores",
    "select_visual_tokens",
    "gather_compact",
    "BACKENDS",
    "BackendError",
    "ScoreSpans",
    "score_spans",
    "reference",
    "dispatch",
]
__version__ = "0.1.0"


def accumulate_visual_scores(
    q: torch.Tensor,
    k: torch.Tensor,
    scores: torch.Tensor,
    query_start,
    key_start=None,
    key_len=None,
    *,
    scale: float | None = None,
    lse: torch.Tensor | None = None,
    key_valid: torch.Tensor | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """Add the response rows' attention to the visual keys, summed over heads, into ``scores``.

    ``scores[b, i, j] += sum_h P_h[b, query_start[b] + i, key_start[b] + j]`` for
    ``j < key_len[b]`` (entries ``j >= key_len[b]`` are untouched), where ``P_h`` is the
    row softmax of ``scale * q_h k_{h // G}^T`` over every valid key of the sequence.

    Args:
        q: ``[B, Hq, N, D]`` float32/float16/bfloat16 post-RoPE queries (any strides).
        k: ``[B, Hkv, N, D]`` keys of q's dtype and device; ``Hq % Hkv == 0`` (GQA: query
            head h reads kv head ``h // (Hq // Hkv)``).
        scores: ``[B, R, Vmax]`` float32, contiguous; updated in place and returned.
            R (the number of query rows) is ``scores.shape[1]``.
        query_start, key_start, key_len: int, sequence of B ints, or int64 ``[B]`` tensor:
            query rows ``[query_start, query_start + R)``, visual keys
            ``[key_start, key_start + key_len)``, ``key_len <= Vmax``. Or ``query_start``
            a `ScoreSpans` from `score_spans` (``key_start``/``key_len`` None): spans
            checked once for many calls of the same shapes (every layer of a scoring
            forward), which skips the per-call checks and their host round trip.
        scale: softmax scale, default ``D ** -0.5``.
        lse: optional float32 ``[B, Hq, N]`` natural-log row log-sum-exp of
            ``scale * q k^T`` over valid keys (as flash/SDPA kernels return); computed for
            the R rows only when absent.
        key_valid: optional bool ``[B, N]``; keys with False are excluded from the softmax.
        backend: "reference", "cpu", "triton", "cuda" or None (best usable).

    NaN / inf (identical on every backend): per query head and row the normaliser is the
    lse (given, or computed over the valid keys). A row whose lse is NaN or +inf -- computed,
    that is any NaN or +inf valid logit: a NaN/inf element in q's row, or in k at any key
    with ``key_valid`` True -- makes every visual entry of that row of ``scores`` NaN. A row
    whose lse is -inf (no valid key) adds 0. With a finite lse each entry adds
    ``exp(logit - lse)`` in IEEE arithmetic (NaN logit -> NaN, +inf -> +inf, -inf -> 0).
    Keys with ``key_valid`` False are never read, so NaN padding is harmless. NaN stays in
    ``scores``, and `select_visual_tokens` refuses an item whose selected rows hold it.

    Never allocates anything of size N x N or ``[B, H, R, N]``. Deterministic on a given
    backend (bit-identical reruns; on "cpu" also for any thread count). Not differentiable
    (scores are a selection signal). Traces under ``torch.compile(fullgraph=True)`` as one
    opaque op that validates and dispatches when the graph runs.
    """
    if torch.compiler.is_compiling():
        return _traceable.accumulate_visual_scores(
            q, k, scores, query_start, key_start, key_len, scale, lse, key_valid, backend
        )
    return _accumulate_eager(q, k, scores, query_start, key_start, key_len, scale, lse, key_valid, backend)


def _accumulate_eager(q, k, scores, query_start, key_start, key_len, scale, lse, key_valid, backend):
    args = check_accumulate(q, k, scores, query_start, key_start, key_len, scale, lse, key_valid)
    if scores.shape[1] == 0 or scores.shape[0] == 0:
        return scores
    name = dispatch.choose("accumulate_visual_scores", args, backend)
    dispatch.run(name, "accumulate_visual_scores", **args)
    return scores


def select_visual_tokens(
    scores: torch.Tensor,
    row_mask: torch.Tensor,
    seq_len,
    key_start,
    key_len,
    *,
    keep_ratio: float | None = None,
    keep=None,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keep the most-attended visual tokens and build the gather index of the shorter sequence.

    importance[b, j] = mean over rows i with ``row_mask[b, i]`` of ``scores[b, i, j]``
    (ranked through a float64 sum added in row order, which orders identically); the
    ``keep_count[b]`` highest are kept, equal importance going to the lower index, +-inf
    ranking as the extremes.

    Keep rule: with ``keep_ratio=r`` an item with ``n = key_len[b]`` visual tokens keeps
    ``min(n, max(1, floor(n * r)))`` computed as the Python float product ``int(n * r)``
    (so r=0.29 on 100 tokens keeps 28, as 100 * 0.29 = 28.999999999999996), and 0 when
    ``n == 0``. With ``keep`` it keeps exactly that many. An item with no selected row
    (``row_mask[b]`` all False) keeps all its ``n`` visual tokens whatever r or keep say.

    NaN: an item whose importance is NaN -- a NaN in ``scores[b, i, :key_len[b]]`` for a
    selected row i, or +inf and -inf in one such column -- raises ValueError naming the
    item and how many of its selected rows hold NaN (NaN in unselected rows or in columns
    ``>= key_len[b]`` is never read). Every backend detects it in its own pass over the
    selected rows and returns a per-item flag, read together with the output sizes: one
    device-to-host read per call (i.e. per generation), no extra pass over ``scores``.

    Args:
        scores: ``[B, R, Vmax]`` float32 accumulated scores.
        row_mask: ``[B, R]`` bool, the rows to average over (the still-masked response rows).
        seq_len, key_start, key_len: int, B ints or int64 ``[B]``: each item's sequence
            length and visual span ``[key_start, key_start + key_len)``.
        keep_ratio: ``0 < keep_ratio <= 1``, see the keep rule;
        keep: or exactly this many per item: one int (or 0-dim tensor) for every item,
            ``1 <= keep <= key_len[b]``, where items without visual tokens (key_len 0)
            keep 0; or B ints / an int64 ``[B]`` tensor, ``1 <= keep[b] <= key_len[b]``
            (``keep[b] == 0`` when ``key_len[b] == 0``). Give one of keep_ratio and keep.
        backend: "reference", "cpu", "triton", "cuda" or None (best usable).

    Returns:
        gather_index: ``[B, max(new_len)]`` int64 positions of the original sequence to
            keep, in order (prefix, kept visual tokens, suffix), -1 padded.
        new_len: ``[B]`` int64 compacted lengths.
        keep_index: ``[B, max(keep_count)]`` int64 ascending visual-local indices, -1 padded.
        keep_count: ``[B]`` int64 visual tokens kept per item.

    Under ``torch.compile(fullgraph=True)`` this is one opaque op (validated when the graph
    runs) whose gather_index and keep_index widths are data-dependent (unbacked) sizes.
    """
    if torch.compiler.is_compiling():
        return _traceable.select_visual_tokens(
            scores, row_mask, seq_len, key_start, key_len, keep_ratio, keep, backend
        )
    return _select_eager(scores, row_mask, seq_len, key_start, key_len, keep_ratio, keep, backend)


def _select_eager(scores, row_mask, seq_len, key_start, key_len, keep_ratio, keep, backend):
    args, requested, seq_len_host, key_len_host = validation.check_select_spans(
        scores, row_mask, seq_len, key_start, key_len, keep_ratio, keep
    )
    keep_count = reference.effective_keep_count(args["row_mask"], args["key_len"], requested)
    new_len = args["seq_len"] - args["key_len"] + keep_count
    # The backend writes outputs as wide as the host-known bounds (new_len <= seq_len,
    # keep_count <= key_len), so that its NaN flag and the exact widths come back in one
    # device-to-host read after it ran, instead of one read before and one after.
    args.update(keep_count=keep_count, max_new_len=max(seq_len_host, default=0),
                max_keep=max(key_len_host, default=0))
    name = dispatch.choose("select_visual_tokens", args, backend)
    gather_index, keep_index, nan_item = dispatch.run(name, "select_visual_tokens", **args)
    if scores.shape[0] == 0:
        return gather_index, new_len, keep_index, keep_count
    # The one device-to-host read: exact output widths and the number of NaN items.
    max_new_len, max_keep, any_nan = torch.stack([new_len, keep_count, nan_item]).amax(dim=1).tolist()
    if any_nan:
        bad = nan_item.nonzero().flatten().tolist()
        raise validation.nan_importance_error(args["scores"], args["row_mask"], key_len_host, bad)
    if gather_index.shape[1] != max_new_len:
        gather_index = gather_index[:, :max_new_len].contiguous()
    if keep_index.shape[1] != max_keep:
        keep_index = keep_index[:, :max_keep].contiguous()
    return gather_index, new_len, keep_index, keep_count


def gather_compact(
    tensors: Sequence[torch.Tensor],
    gather_index: torch.Tensor,
    new_len,
    *,
    dims: int | Sequence[int] = 1,
    pad_value: float | int | bool = 0,
    backend: str | None = None,
) -> list[torch.Tensor]:
    """Compact many sequence-aligned tensors along their sequence dim in one call.

    ``out[t][b, ..., p, ...] = tensors[t][b, ..., gather_index[b, p], ...]`` for
    ``p < new_len[b]``; the tail ``p >= new_len[b]`` is filled with ``pad_value``.

    Args:
        tensors: list of tensors of any dtype, batch ``B`` in dim 0 and the same sequence
            length N in their sequence dim, e.g. embeddings ``[B, N, D]`` and token ids
            ``[B, N]`` (dims=1), K/V caches ``[B, H, N, d]`` (dims=2).
        gather_index: ``[B, M]`` int64 from `select_visual_tokens` (-1 padded).
        new_len: ``[B]`` int64 (or ints) valid length of each row of gather_index.
        dims: the sequence dim, one int for all tensors or one per tensor (not 0).
        pad_value: fill of the padded tail (bool, int or float), checked against every
            tensor's dtype before any kernel runs (ValueError naming pad_value, the tensor
            and its dtype): bool tensors take 0, 1, False, True; integer dtypes an integral
            value within ``torch.iinfo(dtype)``; float dtypes a finite value with
            ``|pad_value| <= torch.finfo(dtype).max`` (rounded to the nearest
            representable value), or inf / -inf / nan, which float16, bfloat16, float32,
            float64, float8_e5m2 and complex dtypes store exactly (other float8 dtypes:
            finite only). Every backend fills the same bits.
        backend: "reference", "cpu", "triton", "cuda" or None (best usable).

    Returns:
        New contiguous tensors, each of its input's shape with M along the sequence dim.
    """
    if torch.compiler.is_compiling():
        return _traceable.gather_compact(tensors, gather_index, new_len, dims, pad_value, backend)
    return _gather_eager(tensors, gather_index, new_len, dims, pad_value, backend)


def _gather_eager(tensors, gather_index, new_len, dims, pad_value, backend):
    args = check_gather(tensors, gather_index, new_len, dims, pad_value)
    if not args["tensors"]:
        return []
    name = dispatch.choose("gather_compact", args, backend)
    return list(dispatch.run(name, "gather_compact", **args))
