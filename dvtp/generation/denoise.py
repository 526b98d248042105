"""One LLaDA denoising step on the current block, and the per-block transfer schedule.

Semantics (docs/semantics.md): before a block's first step its masked positions are
counted and split into equal per-step transfer counts (the first ``count % steps`` steps
take one more). A step predicts every masked position of the block (argmax; Gumbel noise
on float64 logits when ``temperature > 0``) and transfers the ``k`` predictions with the
highest softmax probability ("low_confidence") or ``k`` random ones ("random"). With a
``threshold`` (Fast-dLLM's parallel decoding) it also transfers every other masked
position whose confidence is at least the threshold; with a ``factor`` f (Fast-dLLM's
factor rule, LLaDA-V's fast path) it transfers the ``max(k, n_f)`` most confident ones,
``n_f`` from `factor_counts`. Ties in confidence go to the lower position. Masks are detected by value, so a transferred prediction that *is* the mask id
stays masked.

Only the block's rows are ever predicted (``[B, block_length, V]`` logits), and the
confidence is ``exp(logit - logsumexp)`` in float32: no float64 copy of the logits except
the one Gumbel noise needs.
"""
from __future__ import annotations

import torch

from .request import GenerationRequest

__all__ = ["Denoiser", "factor_counts", "factor_thresholds", "num_transfer_tokens"]


def num_transfer_tokens(block_mask: torch.Tensor, steps: int) -> torch.Tensor:
    """``[B, steps]`` int64: equal split of each item's masked count, remainder to the first steps."""
    count = block_mask.sum(dim=1, keepdim=True)
    base, rem = count // steps, count % steps
    step = torch.arange(steps, device=block_mask.device).unsqueeze(0)
    return base + (step < rem).to(torch.int64)


def factor_thresholds(factor: float, length: int, device: torch.device) -> torch.Tensor:
    """``[length]`` float64: the confidence the n-th most confident candidate (n = 1 ..
    length, at index n - 1) needs under Fast-dLLM's factor rule, ``1 - factor / (n + 1)``;
    -1 for n = 1 (the most confident one always qualifies)."""
    n = torch.arange(1, length + 1, dtype=torch.float64, device=device)
    thresholds = 1 - factor / (n + 1)
    thresholds[0] = -1.0
    return thresholds


def factor_counts(ranked: torch.Tensor, candidates: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """``[B]`` int64: how many candidates Fast-dLLM's factor rule transfers.

    Args:
        ranked: ``[B, L]`` confidences sorted descending (non-candidates -inf, last).
        candidates: ``[B]`` int64 number of candidates (masked positions that may move).
        thresholds: ``[L]`` float64 from `factor_thresholds`.

    The count is the length of the leading run of ranked confidences that reach their
    threshold (the published loop stops at the first one below; as the thresholds rise
    with n and the confidences fall, that is also the largest qualifying n), at least one.
    As in the published code (``top_i == len - 1`` also covers a loop that broke at the
    last candidate), a run of all but the last candidate takes the last one too.
    """
    passed = (ranked.to(torch.float64) >= thresholds).to(torch.int64)
    run = passed.cumprod(dim=1).sum(dim=1)
    count = torch.where(run == candidates - 1, candidates, run)
    return torch.maximum(count, candidates.clamp(max=1))


class Denoiser:
    """The denoising step with its per-run constants (suppressed ids, index vectors) built once."""

    def __init__(self, request: GenerationRequest, device: torch.device):
        self.request = request
        self.mask_id = request.mask_id
        self.suppressed = torch.tensor(request.suppressed, dtype=torch.int64, device=device) if request.suppressed else None
        self.columns = torch.arange(request.block_length, device=device).unsqueeze(0)  # [1, L] block positions
        self.thresholds = None if request.factor is None else \
            factor_thresholds(request.factor, request.block_length, device)

    def schedule(self, block: torch.Tensor) -> torch.Tensor:
        """``[B, steps_per_block]`` transfer counts for a block whose ids are ``block`` ``[B, L]``."""
        return num_transfer_tokens(block == self.mask_id, self.request.steps_per_block)

    def candidates(self, block: torch.Tensor, limit: torch.Tensor | None) -> torch.Tensor:
        """``[B, L]`` bool: masked block positions that may be transferred (before ``limit``
        ``[B]``, block coordinates, when given)."""
        masked = block == self.mask_id
        return masked if limit is None else masked & (self.columns < limit.unsqueeze(1))

    def step(self, logits: torch.Tensor, block: torch.Tensor, k: torch.Tensor,
             limit: torch.Tensor | None, observe=None) -> tuple[torch.Tensor, torch.Tensor]:
        """One step: -> (transfer ``[B, L]`` bool, new block ids ``[B, L]``).

        Args:
            logits: ``[B, L, V]`` predictions of the block's positions (modified in place:
                suppressed ids get -inf at masked positions).
            block: ``[B, L]`` int64 current ids of the block.
            k: ``[B]`` int64 transfer count of this step (the schedule's; with a threshold
                or a factor, the minimum).
            limit: ``[B]`` int64 or None: no position at or beyond it (block coordinates)
                is transferred (an item's stop token; 0 once the item is finished).
            observe: None, or a callable given the ``[B, L]`` logit of each position's
                prediction (`dvtp.generation.health.FiniteWatch`): argmax picks a NaN or
                +inf wherever a row holds one, so these few values tell whether any row
                did -- no extra pass over the ``[B, L, V]`` logits.
        """
        req = self.request
        B, L, _ = logits.shape
        masked = block == self.mask_id
        if self.suppressed is not None:
            cols = logits[:, :, self.suppressed]
            logits[:, :, self.suppressed] = cols.masked_fill(masked.unsqueeze(-1), float("-inf"))
        if req.temperature > 0:
            # Gumbel-max in float64 (LLaDA: low-precision Gumbel noise hurts quality)
            noise = torch.rand(logits.shape, generator=req.generator, dtype=torch.float64, device=logits.device)
            x0 = (logits.to(torch.float64).exp() / (-torch.log(noise)) ** req.temperature).argmax(dim=-1)
        else:
            x0 = logits.argmax(dim=-1)
        top = None
        if req.remasking == "low_confidence" or observe is not None:
            top = logits.gather(-1, x0.unsqueeze(-1)).squeeze(-1)  # [B, L] the prediction's logit
        if observe is not None:
            observe(top)
        if req.remasking == "low_confidence":
            lse = torch.logsumexp(logits.float(), dim=-1)
            x0_p = (top.float() - lse).exp()
        else:
            x0_p = torch.rand((B, L), generator=req.generator, dtype=torch.float64, device=logits.device)
        x0 = torch.where(masked, x0, block)
        allowed = self.candidates(block, limit)
        confidence = torch.where(allowed, x0_p, torch.full_like(x0_p, float("-inf")))
        # top-k per item, equal confidence -> lower position (stable descending sort)
        ranked, order = torch.sort(confidence, dim=1, descending=True, stable=True)
        if self.thresholds is not None:
            k = torch.maximum(k, factor_counts(ranked, allowed.sum(dim=1), self.thresholds))
        take = (self.columns < k.unsqueeze(1)) & (ranked > float("-inf"))
        transfer = torch.zeros_like(masked).scatter(1, order, take)
        if req.threshold is not None:
            transfer |= allowed & (confidence >= req.threshold)
        return transfer, torch.where(transfer, x0, block)
