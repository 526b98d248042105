"""LLaDA-V's stopping rule, tracked on the device (docs/semantics.md).

Once an item's response holds a stop token, only the masks before its first stop token are
filled, and the item is done when none is left or the generation has moved past that
token's block. Generation ends when every item is done. The "every item is done" flag
reaches the host without blocking (`HostFlag`).
"""
from __future__ import annotations

import torch

__all__ = ["Stopping", "HostFlag"]


class HostFlag:
    """A device bool read on the host without blocking: `read` gives the last posted value
    whose copy has landed (False while none has). On CPU that is the value just posted; on
    CUDA it may lag a step behind the stream, which is harmless for a flag that, once set,
    stays set and whose lag only costs steps that change nothing (finished items transfer
    nothing)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.host = torch.zeros((), dtype=torch.bool, pin_memory=self.cuda)
        self.event = None

    def post(self, value: torch.Tensor) -> None:
        self.host.copy_(value, non_blocking=self.cuda)
        if self.cuda:
            self.event = torch.cuda.Event()
            self.event.record()

    def read(self) -> bool:
        if self.cuda and (self.event is None or not self.event.query()):
            return False
        return bool(self.host)


class Stopping:
    """Per-item stop state. ``stop_pos`` ``[B]`` int64: the first response index holding a
    stop token (G while none)."""

    def __init__(self, stop_ids: tuple[int, ...], batch: int, gen_length: int, mask_id: int, device: torch.device):
        self.ids = torch.tensor(stop_ids, dtype=torch.int64, device=device)
        self.G = gen_length
        self.mask_id = mask_id
        self.stop_pos = torch.full((batch,), gen_length, dtype=torch.int64, device=device)
        self.positions = torch.arange(gen_length, device=device).unsqueeze(0)
        self.all_done = HostFlag(device)

    def limit(self, resp: torch.Tensor, block_start: int, block_end: int) -> torch.Tensor:
        """``[B]`` int64, in block coordinates: no position at or beyond it may be transferred
        this step (the block's end; an item's stop position once it has one; 0 when done).
        Posts the "every item is done" flag (see `done`)."""
        found = self.stop_pos < self.G
        masked = resp == self.mask_id
        pending = (masked & (self.positions < self.stop_pos.unsqueeze(1))).any(dim=1) & (self.stop_pos > block_start)
        active = ~found | pending
        self.all_done.post(~active.any())
        bound = torch.where(found, self.stop_pos, block_end) - block_start
        return torch.where(active, bound.clamp(0, block_end - block_start), 0)

    @property
    def done(self) -> bool:
        return self.all_done.read()

    def update(self, resp: torch.Tensor) -> None:
        """Record stop tokens the last step wrote into ``resp`` ``[B, G]``."""
        hits = torch.isin(resp, self.ids)
        first = torch.where(hits.any(dim=1), hits.to(torch.int64).argmax(dim=1), self.G)
        self.stop_pos = torch.minimum(self.stop_pos, first)

    def positions_or_none(self) -> list[int]:
        """Per item, the first response index holding a stop token, or -1 (host list)."""
        return torch.where(self.stop_pos < self.G, self.stop_pos, -1).tolist()
