"""`GenerationOutput`: what `dvtp.generate` returns."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .pruning import PruneEvent

__all__ = ["GenerationOutput"]


@dataclass
class GenerationOutput:
    """Result and statistics of `dvtp.generate`.

    Attributes:
        sequences: ``[B, gen_length]`` int64 generated ids (positions left unfinished by
            an early stop keep the mask id).
        num_forwards: model forwards run (one per denoising step).
        full_forwards: of those, forwards over the whole sequence (every step without a
            cache; with one, the refreshes, the scoring step and the refill after a
            renumbering prune).
        forwards_per_block: forwards of each block (data dependent with ``threshold``).
        step_times: wall time of each denoising step in seconds (forward, sampling and,
            at the pruning step, scoring and compaction).
        tokens_per_step: tokens each step's forward ran its layers on (padded; a cached
            step runs only its active tokens).
        cache_len_per_step: cached keys each step attended to besides its own tokens (0
            for a full forward or without a cache).
        prune_events: every pruning of the sequence, in order (`PruneEvent`).
        seq_len_before: per item, tokens (prompt + response, padding excluded) at the start.
        visual_spans: per item, its resolved ``(start, length)`` pairs in item coordinates,
            sorted, zero-length ones dropped; ``[]`` for a text-only item.
        prompt_lengths: per item, its prompt length ``P_b`` (padding excluded).
        stop_positions: per item, first response index holding a stop token, or -1.
        stopped_early: generation ended before its last scheduled step (every item was done
            with its stop token, see ``stop_tokens``).

    The pruning of the (single) prune event is also exposed directly: ``kept_indices``,
    ``importance``, ``seq_len_after``, ``pruned_at_step``, ``backends``, ``scoring_time``,
    ``prune_time``, ``scored_layers``, ``lse_from_attention``.
    """

    sequences: torch.Tensor
    num_forwards: int = 0
    full_forwards: int = 0
    forwards_per_block: list[int] = field(default_factory=list)
    step_times: list[float] = field(default_factory=list)
    tokens_per_step: list[int] = field(default_factory=list)
    cache_len_per_step: list[int] = field(default_factory=list)
    prune_events: list[PruneEvent] = field(default_factory=list)
    seq_len_before: list[int] = field(default_factory=list)
    visual_spans: list[list[tuple[int, int]]] = field(default_factory=list)
    prompt_lengths: list[int] = field(default_factory=list)
    stop_positions: list[int] = field(default_factory=list)
    stopped_early: bool = False

    @property
    def total_time(self) -> float:
        return float(sum(self.step_times))

    @property
    def _event(self) -> PruneEvent | None:
        return self.prune_events[-1] if self.prune_events else None

    @property
    def kept_indices(self) -> list[torch.Tensor | None]:
        """Per item, ascending indices into the item's ORIGINAL visual tokens (span order)
        of those still held at the end; None when the item was never pruned."""
        kept: list[torch.Tensor | None] = [None] * len(self.seq_len_before)
        for event in self.prune_events:
            kept = [
                k if e is None else (e if k is None else k[e])
                for k, e in zip(kept, event.kept_indices)
            ]
        return kept

    @property
    def kept_counts(self) -> list[int | None]:
        return [None if k is None else int(k.numel()) for k in self.kept_indices]

    @property
    def importance(self) -> list[torch.Tensor | None]:
        """Per item, the importance its original visual tokens were ranked by at the first
        prune event (float32 ``[n_visual_b]``), or None."""
        first = self.prune_events[0] if self.prune_events else None
        return first.importance if first else [None] * len(self.seq_len_before)

    @property
    def seq_len_after(self) -> list[int]:
        return list(self._event.seq_len_after) if self._event else list(self.seq_len_before)

    @property
    def pruned_at_step(self) -> int | None:
        return self._event.step if self._event else None

    @property
    def backends(self) -> dict[str, str]:
        """The kernel backend that ran each dvtp op (empty without pruning)."""
        ran: dict[str, str] = {}
        for event in self.prune_events:
            ran.update(event.backends)
        return ran

    @property
    def scoring_time(self) -> float | None:
        return self._event.scoring_time if self._event else None

    @property
    def prune_time(self) -> float | None:
        return self._event.prune_time if self._event else None

    @property
    def scored_layers(self) -> list[int]:
        return list(self._event.scored_layers) if self._event else []

    @property
    def lse_from_attention(self) -> bool | None:
        return self._event.lse_from_attention if self._event else None
