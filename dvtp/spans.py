"""Visual spans of a batch: validation, and the score geometry of items with several images.

`resolve_visual_spans` is the one place where a ``visual_span`` argument is checked. Each
item gets a list of ``(start, length)`` pairs in *item coordinates* (indices into that
item's prompt, without any padding), sorted by start and non-overlapping; ``[]`` for a
text-only item.

Several spans in one item (several images in one prompt) prune as follows:

* the item's visual tokens are the union of its spans; "visual-local" index j counts
  them in span order (the concatenation of the spans), which is what a pruning policy
  sees (`dvtp.policies.PolicyContext`: ``key_len`` = number of visual tokens) and what
  ``GenerationOutput.kept_indices`` holds;
* the score buffer of the scoring pass covers one contiguous *range* per item, from the
  first span's start to the last span's end (``key_start``, ``key_len`` of the dvtp ops);
  columns of that range that are not visual (text between images) are *protected*;
* selection is joint over all images of the item: it keeps
  ``n_protected + max(1, floor(n_visual * keep_ratio))`` columns of the range, where the
  protected columns carry the score `PROTECTED` (large and finite) and so are always
  among them; the rest are the ``max(1, floor(n_visual * keep_ratio))`` most important
  visual tokens, whichever image they belong to (ties to the lower index);
* an item whose still-masked row set is empty keeps everything (the op's rule).

With one span per item (or spans that touch, leaving no protected column) the range is
the visual-token run itself and `SpanGeometry.has_protected` is False, so the sampler
uses the plain ``keep_ratio=`` selection, unchanged.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Sequence

import torch

from dvtp_kernels.reference import requested_keep_count

__all__ = ["Span", "PROTECTED", "resolve_visual_spans", "SpanGeometry"]

Span = tuple[int, int]

#: Score given to protected (non-visual) columns of an item's score range: far above any
#: attention sum (at most layers * heads per row), finite so that sums over rows stay finite.
PROTECTED = 1e30


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _as_list(value):
    return value.tolist() if isinstance(value, torch.Tensor) else value


def _is_scalar(value) -> bool:
    return isinstance(value, numbers.Number) or (isinstance(value, torch.Tensor) and value.dim() == 0)


def _is_pair_like(value) -> bool:
    """A length-2 sequence of scalars: one ``(start, length)`` pair (maybe with bad values)."""
    value = _as_list(value)
    return isinstance(value, (tuple, list)) and len(value) == 2 and all(_is_scalar(v) for v in value)


def _check_pair(value, name: str, item: int, prompt_len: int) -> Span:
    value = _as_list(value)
    shown = tuple(value) if isinstance(value, (tuple, list)) else value
    if not _is_pair_like(value):
        raise ValueError(f"{name} = {shown!r}: each visual span of item {item} must be a (start, length) pair")
    start, length = (v.item() if isinstance(v, torch.Tensor) else v for v in value)
    if not (_is_int(start) and _is_int(length)):
        raise ValueError(f"{name} = {shown!r}: start and length must be ints")
    start, length = int(start), int(length)
    if start < 0 or length < 0 or start + length > prompt_len:
        raise ValueError(
            f"{name} = {(start, length)!r} falls outside the prompt of item {item} [0, {prompt_len}): "
            f"spans index into the item's own prompt (without padding)"
        )
    return start, length


def _item_spans(entry, name: str, item: int, prompt_len: int) -> list[Span]:
    """One item's entry (None, a pair, or a list of pairs) -> its sorted, disjoint spans."""
    if entry is None:
        return []
    entry = _as_list(entry)
    if _is_pair_like(entry):
        named = [(name, _check_pair(entry, name, item, prompt_len))]
    elif isinstance(entry, (tuple, list)):
        named = [(f"{name}[{k}]", _check_pair(v, f"{name}[{k}]", item, prompt_len)) for k, v in enumerate(entry)]
    else:
        raise ValueError(
            f"{name} = {entry!r}: an item's visual span must be None, a (start, length) pair or a list of pairs"
        )
    # Empty spans hold no visual token: they are checked to lie inside the prompt, then dropped.
    named = [(n, s) for n, s in named if s[1] > 0]
    for (prev_name, prev), (cur_name, cur) in zip(named, named[1:]):
        if cur[0] < prev[0]:
            raise ValueError(
                f"{cur_name} = {cur!r} starts before {prev_name} = {prev!r}: "
                f"the visual spans of item {item} must be sorted by start"
            )
        if cur[0] < prev[0] + prev[1]:
            raise ValueError(
                f"{cur_name} = {cur!r} overlaps {prev_name} = {prev!r}: "
                f"the visual spans of item {item} must not overlap"
            )
    return [s for _, s in named]


def resolve_visual_spans(visual_span, prompt_lengths: Sequence[int]) -> list[list[Span]]:
    """Check ``visual_span`` against the prompts; -> per item, its sorted disjoint spans.

    Accepted forms (B = ``len(prompt_lengths)``):

    * None: every item is text only;
    * one ``(start, length)`` pair of ints: the same span for every item;
    * a list (or tuple, or a ``[B, 2]`` tensor) of B entries, one per item, each None, one
      pair, or a list of pairs (several images, sorted by start, non-overlapping).

    Spans are in item coordinates: ``0 <= start`` and ``start + length <= prompt_lengths[b]``.
    Zero-length spans are accepted and dropped. Raises ValueError naming the entry, e.g.
    ``visual_span[1][0] = (1.5, 10): start and length must be ints``.
    """
    batch = len(prompt_lengths)
    if visual_span is None:
        return [[] for _ in range(batch)]
    visual_span = _as_list(visual_span)
    if _is_pair_like(visual_span):
        return [_item_spans(visual_span, "visual_span", b, p) for b, p in enumerate(prompt_lengths)]
    if not isinstance(visual_span, (tuple, list)):
        raise ValueError(
            f"visual_span must be None, a (start, length) pair or a list of one entry per item, got {visual_span!r}"
        )
    if len(visual_span) != batch:
        raise ValueError(
            f"visual_span must be one (start, length) pair for all items or a list of one entry per item "
            f"({batch} entries: None, a pair, or a list of pairs), got {len(visual_span)} entries"
            + (" (several spans of one item go in a nested list: [[(s, l), (s2, l2)]])" if batch == 1 else "")
        )
    return [_item_spans(v, f"visual_span[{b}]", b, p) for b, (v, p) in enumerate(zip(visual_span, prompt_lengths))]


@dataclass(frozen=True)
class SpanGeometry:
    """Where the scoring pass and the selection look, per item (host lists of B ints).

    Attributes:
        spans: per item, its spans (item coordinates) as from `resolve_visual_spans`.
        key_start: start of the item's score range (first span's start; 0 if text only).
        key_len: length of the range (last span's end - key_start; 0 if text only).
        n_visual: visual tokens of the item (sum of its span lengths).
    """

    spans: list[list[Span]]
    key_start: list[int]
    key_len: list[int]
    n_visual: list[int]

    @classmethod
    def from_spans(cls, spans: list[list[Span]]) -> "SpanGeometry":
        start = [s[0][0] if s else 0 for s in spans]
        end = [s[-1][0] + s[-1][1] if s else 0 for s in spans]
        return cls(
            spans=spans,
            key_start=start,
            key_len=[e - s for s, e in zip(start, end)],
            n_visual=[sum(length for _, length in s) for s in spans],
        )

    @property
    def n_protected(self) -> list[int]:
        """Non-visual columns inside each item's range (text between its images)."""
        return [r - v for r, v in zip(self.key_len, self.n_visual)]

    @property
    def has_protected(self) -> bool:
        return any(self.n_protected)

    def keep_counts(self, keep_ratio: float) -> list[int]:
        """Range columns to keep per item: every protected one plus the requested visual ones
        (`requested_keep_count`, the same floor rule as a single span)."""
        visual = requested_keep_count(self.n_visual, keep_ratio)
        return [p + v for p, v in zip(self.n_protected, visual)]

    def visual_columns(self, device: torch.device) -> torch.Tensor:
        """``[B, max(n_visual)]`` int64: range column of each visual-local index, in span
        order; padded with ``max(key_len)`` (one column past every item's range)."""
        pad = max(self.key_len, default=0)
        width = max(self.n_visual, default=0)
        cols = torch.full((len(self.spans), width), pad, dtype=torch.int64)
        for b, (k0, spans) in enumerate(zip(self.key_start, self.spans)):
            local = [s - k0 + j for s, length in spans for j in range(length)]
            cols[b, : len(local)] = torch.tensor(local, dtype=torch.int64)
        return cols.to(device)

    def visual_view(self, scores: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
        """Range-layout ``scores`` ``[B, R, max(key_len)]`` -> visual-local ``[B, R, max(n_visual)]``
        (a new tensor; entries past an item's ``n_visual`` are 0)."""
        B, R, width = scores.shape
        valid = columns < width
        index = torch.where(valid, columns, 0).unsqueeze(1).expand(B, R, columns.shape[1])
        return torch.gather(scores, 2, index).masked_fill(~valid.unsqueeze(1), 0.0)

    def range_scores(self, visual: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
        """Visual-local scores ``[B, R', max(n_visual)]`` (a policy's output) -> a new range-layout
        float32 ``[B, R', max(key_len)]`` with protected columns set to `PROTECTED`."""
        B, R, _ = visual.shape
        width = max(self.key_len, default=0)
        out = torch.full((B, R, width + 1), PROTECTED, dtype=torch.float32, device=visual.device)
        index = columns.unsqueeze(1).expand(B, R, columns.shape[1])
        out.scatter_(2, index, visual[..., : columns.shape[1]].to(torch.float32))
        return out[..., :width]

    def kept_visual(self, keep_index: torch.Tensor, keep_count: Sequence[int]) -> list[torch.Tensor | None]:
        """Kept range columns (``keep_index`` ``[B, K]`` on CPU, -1 padded) -> per item, ascending
        visual-local indices (int64, CPU), or None for an item without visual tokens."""
        kept: list[torch.Tensor | None] = []
        for b, (spans, k0) in enumerate(zip(self.spans, self.key_start)):
            if not self.n_visual[b]:
                kept.append(None)
                continue
            columns = keep_index[b, : keep_count[b]]
            if len(spans) == 1:
                kept.append(columns.clone())
                continue
            to_visual = torch.full((self.key_len[b],), -1, dtype=torch.int64)
            offset = 0
            for s, length in spans:
                to_visual[s - k0 : s - k0 + length] = torch.arange(offset, offset + length)
                offset += length
            local = to_visual[columns]
            kept.append(local[local >= 0].clone())
        return kept
