"""Non-finite logits: detected on the device, reported at the loop's existing syncs.

A checkpoint with NaN (or inf) weights, or a dtype that overflows, gives NaN/inf logits.
Left alone that ends as an empty answer (NaN confidences transfer nothing useful) or, with
pruning, as a kernel error about NaN importance. `FiniteWatch` folds each step's verdict
into one device int (the first bad step) without a host sync, and the sampler reads it
only where it synchronises anyway: before the pruning selection, at a parallel-decoding
step's "is the block done?" check, and at the end of generation.

What is checked is the ``[B, L]`` logit of each block position's prediction (the argmax,
which the step gathers anyway): argmax picks a NaN or +inf wherever a row holds one, and a
row that is -inf throughout has no finite prediction. So a NaN or +inf anywhere in the
block's logits is caught without another pass over ``[B, L, V]``; a single -inf logit is
a valid "never this token" and is not an error.
"""
from __future__ import annotations

import torch

__all__ = ["FiniteWatch", "NonFiniteLogitsError"]


class NonFiniteLogitsError(FloatingPointError):
    """The model produced NaN or infinite logits."""


class FiniteWatch:
    """The first denoising step whose logits held a NaN or +-inf.

    Attributes:
        first: ``[]`` int64 on the model's device: that step's index over all steps, `NONE`
            while every logit seen was finite (a large value, so that one ``minimum`` per
            step keeps the earliest).
        where: host list, per step index, its ``(block, step in block)``.
    """

    NONE = 2**62

    def __init__(self, device: torch.device):
        self.first = torch.full((), self.NONE, dtype=torch.int64, device=device)
        self.where: list[tuple[int, int]] = []

    def observe(self, top_logits: torch.Tensor, block: int, step: int) -> None:
        """Record step ``(block, step)``: ``top_logits`` ``[B, L]`` is the logit of each block
        position's prediction (`dvtp.generation.denoise.Denoiser.step`)."""
        index = len(self.where)
        self.where.append((block, step))
        # four small device ops, no sync: isfinite, all, where, minimum
        finite = torch.isfinite(top_logits).all()
        self.first = torch.minimum(self.first, torch.where(finite, self.NONE, index))

    def raise_if_bad(self, first: int) -> None:
        """Raise for ``first`` (a value of `first` already on the host) when it is a step."""
        if first != self.NONE:
            block, step = self.where[first]
            raise NonFiniteLogitsError(
                f"the model produced NaN/inf logits (check the weights and dtype): first at denoising step "
                f"{first} (block {block}, step {step} of the block)"
            )

    def check(self) -> None:
        """Read `first` (one host sync) and raise if a step's logits were not finite."""
        self.raise_if_bad(int(self.first))
