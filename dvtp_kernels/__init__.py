"""dvtp_kernels: the three ops behind RedVTP visual-token pruning, without N x N attention maps.

1. `accumulate_visual_scores`: attention probabilities from response query rows to the
   visual keys, summed over heads, added into a float32 ``[B, R, Vmax]`` buffer.
2. `select_visual_tokens`: top-r visual tokens by importance and the gather index of the
   compacted sequence.
3. `gather_compact`: compaction of many sequence-aligned tensors by that index.

Each runs on one of the backends "reference", "cpu", "triton", "cuda" (see
`dvtp_kernels.dispatch`); ``python -m dvtp_kernels.info`` shows what is built and usable.
Importing this package neither loads the compiled extension nor initialises CUDA.
"""
from __future__ import annotations

from typing import Sequence

import torch

from . import dispatch, reference
from .dispatch import BACKENDS, BackendError
from .validation import check_accumulate, check_gather, check_select

__all__ = [
    "accumulate_visual_scores",
    "select_visual_tokens",
    "gather_compact",
    "BACKENDS",
    "BackendError",
    "reference",
    "dispatch",
]
__version__ = "0.1.0"


def accumulate_visual_scores(
    q: torch.Tensor,
    k: torch.Tensor,
    scores: torch.Tensor,
    query_start,
    key_start,
    key_len,
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
            ``[key_start, key_start + key_len)``, ``key_len <= Vmax``.
        scale: softmax scale, default ``D ** -0.5``.
        lse: optional float32 ``[B, Hq, N]`` natural-log row log-sum-exp of
            ``scale * q k^T`` over valid keys (as flash/SDPA kernels return); computed for
            the R rows only when absent.
        key_valid: optional bool ``[B, N]``; keys with False are excluded from the softmax.
        backend: "reference", "cpu", "triton", "cuda" or None (best usable).

    Never allocates anything of size N x N or ``[B, H, R, N]``. Deterministic on a given
    backend. Not differentiable (scores are a selection signal).
    """
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
    (ranked through a float64 sum, which orders identically); the ``keep_count[b]``
    highest are kept, equal importance going to the lower index.

    Args:
        scores: ``[B, R, Vmax]`` float32 accumulated scores.
        row_mask: ``[B, R]`` bool, the rows to average over (the still-masked response rows).
        seq_len, key_start, key_len: int, B ints or int64 ``[B]``: each item's sequence
            length and visual span ``[key_start, key_start + key_len)``.
        keep_ratio: keep ``max(1, floor(key_len * keep_ratio))`` tokens, ``0 < keep_ratio <= 1``;
        keep: or exactly this many (int or B ints, ``1 <= keep <= key_len``). Give one.
            An item with no selected row keeps all its visual tokens.
        backend: "reference", "cpu", "triton", "cuda" or None (best usable).

    Returns:
        gather_index: ``[B, max(new_len)]`` int64 positions of the original sequence to
            keep, in order (prefix, kept visual tokens, suffix), -1 padded.
        new_len: ``[B]`` int64 compacted lengths.
        keep_index: ``[B, max(keep_count)]`` int64 ascending visual-local indices, -1 padded.
        keep_count: ``[B]`` int64 visual tokens kept per item.
    """
    args, requested = check_select(scores, row_mask, seq_len, key_start, key_len, keep_ratio, keep)
    device = scores.device
    requested = torch.tensor(requested, dtype=torch.int64, device=device)
    keep_count = reference.effective_keep_count(args["row_mask"], args["key_len"], requested)
    new_len = args["seq_len"] - args["key_len"] + keep_count
    if scores.shape[0] == 0:
        max_new_len = max_keep = 0
    else:
        max_new_len, max_keep = torch.stack([new_len.max(), keep_count.max()]).tolist()
    args.update(keep_count=keep_count, max_new_len=max_new_len, max_keep=max_keep)
    name = dispatch.choose("select_visual_tokens", args, backend)
    gather_index, keep_index = dispatch.run(name, "select_visual_tokens", **args)
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
        pad_value: fill of the padded tail, representable in every tensor's dtype.
        backend: "reference", "cpu", "triton", "cuda" or None (best usable).

    Returns:
        New contiguous tensors, each of its input's shape with M along the sequence dim.
    """
    args = check_gather(tensors, gather_index, new_len, dims, pad_value)
    if not args["tensors"]:
        return []
    name = dispatch.choose("gather_compact", args, backend)
    return list(dispatch.run(name, "gather_compact", **args))
