"""Pruning policies: which visual tokens survive. A small registry is the extension point.

A policy turns what the sampler knows at the pruning step into an importance signal for
`dvtp_kernels.select_visual_tokens`, which then keeps the ``max(1, floor(n * keep_ratio))``
most important tokens per item (ties to the lower index) and builds the gather index.
Every policy therefore shares one selection and compaction path, the keep-count rule
and the "no still-masked row -> keep everything" rule.

To add one::

    @dvtp.policies.register_policy("my_policy")
    class MyPolicy(dvtp.policies.PruningPolicy):
        needs_scores = False          # True: run the attention scoring pass first

        def importance(self, ctx):
            ...                       # -> (scores [B, R', Vmax] float32, row_mask [B, R'] bool)

and use ``PruningConfig(policy="my_policy")``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from dvtp_kernels.reference import requested_keep_count

__all__ = [
    "PolicyContext",
    "PruningPolicy",
    "register_policy",
    "get_policy",
    "available_policies",
]


@dataclass
class PolicyContext:
    """What a policy sees at the pruning step.

    Attributes:
        config: the `PruningConfig`.
        row_mask: ``[B, R]`` bool, response rows masked before the pruning step and not
            transferred by it (the still-masked rows).
        key_len: visual tokens per item (0 for an item without a visual span).
        scores: ``[B, R, Vmax]`` float32 accumulated attention of every response row to
            every visual token, summed over heads and scored layers; None unless the
            policy ``needs_scores``.
        device: the device the selection runs on.
    """

    config: object
    row_mask: torch.Tensor
    key_len: list[int]
    scores: torch.Tensor | None
    device: torch.device

    @property
    def vmax(self) -> int:
        return max(self.key_len) if self.key_len else 0


class PruningPolicy:
    """Base class. Subclasses set ``needs_scores`` and implement `importance`."""

    name: str = ""
    needs_scores: bool = False

    def importance(self, ctx: PolicyContext) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(scores [B, R', Vmax] float32, row_mask [B, R'] bool)``.

        Importance of visual token j of item b is the sum of ``scores[b, i, j]`` over the
        rows i with ``row_mask[b, i]``; an item whose row_mask is all False keeps all
        its visual tokens.
        """
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


_POLICIES: dict[str, PruningPolicy] = {}


def register_policy(name: str) -> Callable[[type], type]:
    """Class decorator: register a `PruningPolicy` subclass under ``name``."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"policy name must be a non-empty str, got {name!r}")

    def decorate(cls: type) -> type:
        if not (isinstance(cls, type) and issubclass(cls, PruningPolicy)):
            raise TypeError(f"register_policy({name!r}) needs a PruningPolicy subclass, got {cls!r}")
        instance = cls()
        instance.name = name
        _POLICIES[name] = instance
        return cls

    return decorate


def get_policy(name: str) -> PruningPolicy:
    """The registered policy ``name`` (KeyError if unknown)."""
    return _POLICIES[name]


def available_policies() -> list[str]:
    return sorted(_POLICIES)


def _any_row(ctx: PolicyContext) -> torch.Tensor:
    """``[B, 1]`` bool: the item has a still-masked row (else it keeps everything)."""
    return ctx.row_mask.any(dim=1, keepdim=True)


@register_policy("redvtp")
class RedVTPPolicy(PruningPolicy):
    """RedVTP: importance = attention the still-masked response rows pay to each visual
    token, summed (equivalently averaged) over scored layers, heads and those rows."""

    needs_scores = True

    def importance(self, ctx):
        return ctx.scores, ctx.row_mask


@register_policy("random")
class RandomPolicy(PruningPolicy):
    """Baseline: a uniformly random keep set, reproducible from ``PruningConfig.seed``."""

    def importance(self, ctx):
        B, V = len(ctx.key_len), ctx.vmax
        generator = torch.Generator().manual_seed(int(ctx.config.seed))
        values = torch.rand((B, 1, V), generator=generator, dtype=torch.float32)
        return values.to(ctx.device), _any_row(ctx)


@register_policy("uniform")
class UniformPolicy(PruningPolicy):
    """Baseline: an evenly spaced keep set: of n tokens keeping k, the tokens
    ``floor((2i + 1) * n / (2k))`` for i < k (the centres of k equal bins)."""

    def importance(self, ctx):
        B, V = len(ctx.key_len), ctx.vmax
        values = torch.zeros((B, 1, V), dtype=torch.float32)
        for b, n in enumerate(ctx.key_len):
            k = requested_keep_count([n], ctx.config.keep_ratio)[0]
            if k:
                idx = [((2 * i + 1) * n) // (2 * k) for i in range(k)]
                values[b, 0, idx] = 1.0
        return values.to(ctx.device), _any_row(ctx)
