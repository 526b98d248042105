"""The pruning step: policy -> `select_visual_tokens` -> one `gather_compact`, and its record.

At the scoring step the forward has filled a float32 ``[B, G, Vmax]`` score buffer (for
policies that need scores). After that step's transfer, the response rows that were masked
before it and not transferred by it (the published RedVTP rows, docs/semantics.md) select
which rows count; the policy turns that into importance, `dvtp_kernels.select_visual_tokens`
keeps ``max(1, floor(n_visual * keep_ratio))`` tokens per item, and one
`dvtp_kernels.gather_compact` call compacts the sequence -- and, with a cache kept at its
original positions, every layer's cached K and V with it.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

import dvtp_kernels
from dvtp_kernels import dispatch

from ..config import PruningConfig
from ..policies import PolicyContext, PruningPolicy
from ..spans import SpanGeometry
from .kv_cache import DiffusionCache
from .state import SequenceState

__all__ = ["PruneEvent", "Scoring", "scoring_forward", "prune"]


@dataclass
class PruneEvent:
    """One pruning of the sequence.

    Attributes:
        step: index (0-based, over all steps) of the step after which it happened.
        kept_indices: per item, ascending visual-local indices (into the concatenation of
            the item's visual tokens in span order, as the item held them before this
            event) of the kept tokens, int64 on CPU; None for an item without visual tokens.
        importance: per item, float32 ``[n_visual_b]`` on CPU: what the tokens were ranked by
            (the policy's scores summed over its rows; for "redvtp" the attention the
            still-masked response rows pay to each token, summed over heads and scored
            layers); None where ``kept_indices`` is None.
        seq_len_before / seq_len_after: per item, tokens (prompt + response) before / after.
        backends: the kernel backend that ran each dvtp op (scoring included).
        scoring_time: wall time of the scoring forward (None for a policy without scores).
        prune_time: wall time of selection + compaction.
        scored_layers: layers whose attention fed the scores.
        lse_from_attention: whether every scored layer took its row log-sum-exp from the
            attention kernel (None without scores).
        cache: what happened to the K/V cache: None (no cache), "compacted" (kept at the
            original positions) or "refill" (positions renumbered: the next step refills it).
    """

    step: int
    kept_indices: list[torch.Tensor | None]
    importance: list[torch.Tensor | None]
    seq_len_before: list[int]
    seq_len_after: list[int]
    backends: dict[str, str] = field(default_factory=dict)
    scoring_time: float | None = None
    prune_time: float | None = None
    scored_layers: list[int] = field(default_factory=list)
    lse_from_attention: bool | None = None
    cache: str | None = None


@dataclass
class Scoring:
    """What a scoring forward gathered: ``scores`` ``[B, G, Vmax]`` float32 (response row i of
    item b against its visual-range column j, summed over heads and scored layers), the
    backend that ran the score op, its wall time and the scored layers."""

    scores: torch.Tensor
    backends: dict[str, str]
    time: float
    scored_layers: list[int]
    lse_from_attention: bool


def scoring_forward(hook, forward, state: SequenceState, geometry: SpanGeometry, pruning: PruningConfig):
    """Run ``forward()`` (a full forward) as a scoring pass -> (its logits, `Scoring`)."""
    t0 = time.perf_counter()
    device = state.embeds.device
    G = state.gen_length
    scores = torch.zeros((state.embeds.shape[0], G, max(geometry.key_len)), dtype=torch.float32, device=device)
    query_start = [n - G for n in state.layout.seq_lens]  # the response rows
    with dispatch.recording() as ran, hook.scoring(
        scores, query_start, geometry.key_start, geometry.key_len, layers=pruning.score_layers, backend=pruning.backend,
    ) as scoring_pass:
        logits = forward()
    _sync(device)
    lse = scoring_pass.lse_from_kernel
    return logits, Scoring(scores, dict(ran), time.perf_counter() - t0, list(scoring_pass.scored_layers),
                           bool(lse) and all(lse))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def prune(
    state: SequenceState, cache: DiffusionCache | None, scoring: Scoring | None, row_mask: torch.Tensor,
    geometry: SpanGeometry, pruning: PruningConfig, policy: PruningPolicy, step: int,
) -> PruneEvent:
    """Prune ``state`` (and ``cache``) after the scoring step; returns the event.

    ``scoring``: what the scoring forward gathered (None when the policy needs no scores);
    ``row_mask``: ``[B, G]`` bool, the still-masked response rows.
    """
    t0 = time.perf_counter()
    device = row_mask.device
    scores = None if scoring is None else scoring.scores
    seq_len_before = list(state.layout.seq_lens)
    # With text between an item's images the policy sees its visual tokens only
    # (visual-local columns); the text columns come back protected.
    columns = geometry.visual_columns(device) if geometry.has_protected else None
    visual_scores = scores if columns is None or scores is None else geometry.visual_view(scores, columns)
    ctx = PolicyContext(pruning, row_mask, geometry.n_visual, visual_scores, device)
    sel_scores, sel_rows = policy.importance(ctx)
    ranked_by = (sel_scores * sel_rows.unsqueeze(-1)).sum(dim=1)
    if columns is None:
        keep = dict(keep_ratio=pruning.keep_ratio)
    else:
        sel_scores = geometry.range_scores(sel_scores, columns)
        keep = dict(keep=geometry.keep_counts(pruning.keep_ratio))
    with dispatch.recording() as ran:
        gather_index, new_len, keep_index, keep_count = dvtp_kernels.select_visual_tokens(
            sel_scores, sel_rows, state.layout.seq_lens, geometry.key_start, geometry.key_len,
            backend=pruning.backend, **keep,
        )
        # Cached keys carry RoPE at their original positions: kept there they are compacted
        # with the sequence; renumbered, they would be wrong, so the next step refills them.
        compact_cache = cache is not None and not pruning.renumber_positions
        extra = cache.tensors() if compact_cache else []
        compacted = state.compact(gather_index, new_len, extra, [2] * len(extra), backend=pruning.backend)
    if compact_cache:
        cache.replace(compacted)
    elif cache is not None:
        cache.clear()
    kept = geometry.kept_visual(keep_index.cpu(), keep_count.tolist())
    ranked_by = ranked_by.cpu()
    _sync(device)
    return PruneEvent(
        step=step,
        kept_indices=kept,
        importance=[None if k is None else ranked_by[b, : geometry.n_visual[b]] for b, k in enumerate(kept)],
        seq_len_before=seq_len_before,
        seq_len_after=list(state.layout.seq_lens),
        backends={**(scoring.backends if scoring else {}), **ran},
        scoring_time=None if scoring is None else scoring.time,
        prune_time=time.perf_counter() - t0,
        scored_layers=[] if scoring is None else scoring.scored_layers,
        lse_from_attention=None if scoring is None else scoring.lse_from_attention,
        cache=None if cache is None else ("compacted" if compact_cache else "refill"),
    )
