"""PyTorch references for the three dvtp ops: the test oracle and the last fallback.

They take *normalised* arguments (what `dvtp_kernels.validation` produces): every
per-item quantity is an int64 ``[B]`` tensor on the device of the data, ``scale`` is a
float. They favour readability over speed, loop over batch items where spans differ,
and can compute in float64 (``compute_dtype``) so tests compare against an exact-ish
oracle.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

__all__ = [
    "accumulate_visual_scores",
    "requested_keep_count",
    "effective_keep_count",
    "select_visual_tokens",
    "select_from_importance",
    "nan_items",
    "gather_compact",
]


def accumulate_visual_scores(
    q: torch.Tensor,
    k: torch.Tensor,
    scores: torch.Tensor,
    query_start: torch.Tensor,
    key_start: torch.Tensor,
    key_len: torch.Tensor,
    scale: float,
    lse: torch.Tensor | None = None,
    key_valid: torch.Tensor | None = None,
    compute_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``scores[b, i, j] += sum_h softmax_h(scale * q k^T)[query_start[b] + i, key_start[b] + j]``.

    q ``[B, Hq, N, D]``, k ``[B, Hkv, N, D]`` (Hq % Hkv == 0; query head h reads kv head
    ``h // (Hq // Hkv)``), scores ``[B, R, Vmax]`` float32 updated in place for
    ``j < key_len[b]``. The softmax runs over all keys with ``key_valid[b, n]`` (``[B, N]``
    bool, default all True); ``lse`` ``[B, Hq, N]`` float32, when given, is used as the
    row log-sum-exp instead of computing it. Only the R query rows are formed:
    ``[Hq, R, N]`` per item, never N x N.
    """
    B, Hq, N, _ = q.shape
    group = Hq // k.shape[1]
    R = scores.shape[1]
    for b in range(B):
        q0, k0, kl = int(query_start[b]), int(key_start[b]), int(key_len[b])
        if kl == 0:
            continue
        qb = q[b, :, q0 : q0 + R].to(compute_dtype)  # [Hq, R, D]
        kb = k[b].to(compute_dtype).repeat_interleave(group, dim=0)  # [Hq, N, D]
        logits = scale * (qb @ kb.transpose(-1, -2))  # [Hq, R, N]
        if key_valid is not None:
            logits = logits.masked_fill(~key_valid[b].view(1, 1, N), float("-inf"))
        if lse is None:
            row_lse = torch.logsumexp(logits, dim=-1)  # [Hq, R]
        else:
            row_lse = lse[b, :, q0 : q0 + R].to(compute_dtype)
        row_lse = row_lse.unsqueeze(-1)  # [Hq, R, 1]
        probs = torch.exp(logits[..., k0 : k0 + kl] - row_lse)
        # Non-finite normalisers (see NONFINITE_RULES): -inf = the row attends to nothing
        # (no valid key) -> 0; NaN or +inf = the row's softmax is undefined -> NaN.
        probs = torch.where(row_lse == -math.inf, 0.0, probs)
        probs = torch.where(torch.isnan(row_lse) | (row_lse == math.inf), math.nan, probs)
        scores[b, :, :kl] += probs.sum(dim=0).to(scores.dtype)
    return scores


NONFINITE_RULES = """\
NaN / Inf in accumulate_visual_scores. Per (item b, query head h, query row i) the row's
normaliser is ``lse`` (given, or the log-sum-exp of ``scale * q k^T`` over the valid keys,
computed in float32) and each visual entry adds ``exp(logit_j - lse)``:
  * lse NaN or +inf -> every visual entry of the row becomes NaN (scores[b, i, :key_len]).
    Computed, that happens when any valid logit of the row is NaN or +inf: a NaN/inf in
    q's row, or in k at any valid key (key_valid True) -- padding keys are never read.
  * lse -inf -> the row adds 0 (it has no valid key; computed only when key_valid masks
    every key, or every valid logit is -inf).
  * lse finite -> IEEE arithmetic per entry: a NaN logit at visual key j gives NaN at j,
    +inf gives +inf, -inf gives 0 (only with a given lse can an entry's logit be
    non-finite while the lse is finite).
NaN then stays in scores (x + NaN = NaN), so select_visual_tokens refuses the item
(every backend flags it, see nan_items).
"""


def requested_keep_count(key_len: Sequence[int], keep_ratio: float) -> list[int]:
    """``max(1, floor(key_len * keep_ratio))`` per item (0 for an item without visual tokens).

    Python float arithmetic, as the published code computes ``int(n * ratio)``.
    """
    return [min(n, max(1, math.floor(n * keep_ratio))) for n in key_len]


def effective_keep_count(row_mask: torch.Tensor, key_len: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """How many visual tokens each item keeps, int64 ``[B]``: the requested ``keep``, or all
    ``key_len`` of them for an item whose ``row_mask`` ``[B, R]`` selects no row (with no
    still-masked response row there is no evidence to prune on)."""
    return torch.where(row_mask.any(dim=1), keep.to(torch.int64), key_len)


def selected_importance(scores: torch.Tensor, row_mask: torch.Tensor) -> torch.Tensor:
    """float64 ``[B, Vmax]``: the sum of ``scores[b, i, :]`` over rows with ``row_mask[b, i]``,
    added row by row in increasing i (the order every kernel uses, so sums are bit-identical
    across backends). Unselected rows are skipped, not multiplied by 0: a NaN there is never
    read."""
    importance = torch.zeros(scores.shape[0], scores.shape[2], dtype=torch.float64, device=scores.device)
    for i in range(scores.shape[1]):
        importance += torch.where(row_mask[:, i, None], scores[:, i].to(torch.float64), 0.0)
    return importance


def nan_items(importance: torch.Tensor, key_len: torch.Tensor) -> torch.Tensor:
    """bool ``[B]``: item b's importance (`selected_importance`) is NaN somewhere in its
    ``key_len[b]`` columns -- a NaN score in a selected row, or +inf and -inf summed in one
    column. Such an item has no defined selection; `dvtp_kernels.select_visual_tokens` raises."""
    cols = torch.arange(importance.shape[1], device=importance.device) < key_len.unsqueeze(1)
    return (torch.isnan(importance) & cols).any(dim=1)


def select_visual_tokens(
    scores: torch.Tensor,
    row_mask: torch.Tensor,
    seq_len: torch.Tensor,
    key_start: torch.Tensor,
    key_len: torch.Tensor,
    keep_count: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-``keep_count`` visual tokens per item and the sequence gather index.

    scores ``[B, R, Vmax]`` float32, row_mask ``[B, R]`` bool, seq_len/key_start/key_len/
    keep_count int64 ``[B]`` (keep_count already effective, see `effective_keep_count`).
    Importance of token j is the float64 sum of ``scores[b, i, j]`` over rows with
    ``row_mask[b, i]`` (`selected_importance`; ranks exactly like the mean); higher wins,
    equal importance goes to the lower index, +-inf rank as the extremes. An item with a NaN
    importance (`nan_items`) has no defined selection: every backend flags it and the public
    wrapper raises (here NaN would rank first, as torch.sort puts NaN first in descending
    order).

    Returns ``gather_index`` ``[B, max(new_len)]`` int64 (prefix, kept visual positions,
    suffix, in order; -1 padded), ``new_len`` ``[B]`` int64 and ``keep_index``
    ``[B, max(keep_count)]`` int64 ascending visual-local indices, -1 padded.
    """
    importance = selected_importance(scores, row_mask)
    return select_from_importance(importance, seq_len, key_start, key_len, keep_count)


def select_from_importance(importance, seq_len, key_start, key_len, keep_count):
    """`select_visual_tokens` from the float64 ``[B, Vmax]`` importance."""
    B = importance.shape[0]
    device = importance.device
    new_len = seq_len - key_len + keep_count
    max_new = int(new_len.max()) if B else 0
    max_keep = int(keep_count.max()) if B else 0
    gather_index = torch.full((B, max_new), -1, dtype=torch.int64, device=device)
    keep_index = torch.full((B, max_keep), -1, dtype=torch.int64, device=device)
    for b in range(B):
        k0, kl, kc, n = (int(t[b]) for t in (key_start, key_len, keep_count, seq_len))
        # A stable descending sort leaves equal values in index order: ties -> lower index.
        order = torch.sort(importance[b, :kl], descending=True, stable=True).indices
        kept = torch.sort(order[:kc]).values
        keep_index[b, :kc] = kept
        positions = torch.cat(
            [
                torch.arange(0, k0, device=device),
                k0 + kept,
                torch.arange(k0 + kl, n, device=device),
            ]
        )
        gather_index[b, : positions.numel()] = positions
    return gather_index, new_len, keep_index


def gather_compact(
    tensors: Sequence[torch.Tensor],
    gather_index: torch.Tensor,
    dims: Sequence[int],
    pad_value: float | int | bool = 0,
) -> list[torch.Tensor]:
    """``out[b, ..., p, ...] = t[b, ..., gather_index[b, p], ...]`` along ``dims[t]``.

    Each tensor has the batch in dim 0 and the sequence in ``dims[t]`` (>= 1);
    gather_index ``[B, M]`` int64 with -1 marking padding, which is filled with
    ``pad_value``. Output: same shape as the input but ``M`` along the sequence dim.
    """
    valid = gather_index >= 0
    index = gather_index.clamp(min=0)
    outs = []
    for t, d in zip(tensors, dims):
        shape = [1] * t.dim()
        shape[0], shape[d] = index.shape
        out_shape = (*t.shape[:d], index.shape[1], *t.shape[d + 1 :])
        if t.shape[d] == 0:  # nothing to gather from: every position is padding
            outs.append(torch.full(out_shape, pad_value, dtype=t.dtype, device=t.device))
            continue
        out = torch.gather(t, d, index.view(shape).expand(out_shape))
        out = out.masked_fill(~valid.view(shape), pad_value)
        outs.append(out)
    return outs
