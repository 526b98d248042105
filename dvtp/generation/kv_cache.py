"""`DiffusionCache`: Fast-dLLM's approximate K/V cache for a bidirectional diffusion LM,
as a transformers `Cache` (the model's attention layers call its ``update``).

A *refresh* step runs the whole sequence through the model while the cache is filling:
each layer's post-RoPE keys and values ``[B, Hkv, N, D]`` are stored. The other steps run
only the *active* tokens (prefix mode: the current block and everything after it; dual
mode: the current block alone) and attend to ``[cached keys | fresh keys of the active
tokens]``; a ``[B, N + A]`` key-valid vector hides the cached rows of the active tokens
(stale), of padding, and of nothing else. Cached keys keep the RoPE of the positions they
were computed at, which is why pruning with ``renumber_positions=True`` refills the cache
(docs/semantics.md).

After pruning, `tensors` / `replace` let the sampler compact every layer's K and V in the
same `dvtp_kernels.gather_compact` call as the sequence itself.
"""
from __future__ import annotations

import contextlib

import torch
from transformers.cache_utils import Cache, DynamicLayer

__all__ = ["DiffusionCache", "DiffusionCacheLayer"]


def _join(cached: torch.Tensor, fresh: torch.Tensor, readable: torch.Tensor) -> torch.Tensor:
    """``[cached rows (zero where not readable) | fresh rows]`` along the sequence, in the one
    pass a concatenation costs anyway. Zeroing matters beyond the key mask: a masked row's
    weight is 0, but 0 * NaN is NaN, so whatever a row the step must not read holds (stale,
    padding, pruned) never reaches the output."""
    B, H, N, D = cached.shape
    out = cached.new_empty((B, H, N + fresh.shape[2], D))
    torch.where(readable[:, None, :, None], cached, cached.new_zeros(()), out=out[:, :, :N])
    out[:, :, N:] = fresh
    return out


class DiffusionCacheLayer(DynamicLayer):
    """One layer's cached ``keys`` / ``values`` ``[B, Hkv, N, D]``. While its cache fills,
    `update` stores what it gets; otherwise it returns the cached rows followed by the
    fresh ones without storing them."""

    def __init__(self, owner: "DiffusionCache"):
        super().__init__()
        self._owner = owner

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if self._owner.filling:
            self.keys, self.values = key_states, value_states
            self.dtype, self.device = key_states.dtype, key_states.device
            self.is_initialized = True
            return key_states, value_states
        if not self.is_initialized:
            raise RuntimeError("DiffusionCache: a cached step ran before the cache was filled by a full forward")
        valid = self._owner.readable
        if valid is None:
            raise RuntimeError("DiffusionCache: a cached step needs the readable rows (DiffusionCache.read_rows)")
        return _join(self.keys, key_states, valid), _join(self.values, value_states, valid)

    def get_seq_length(self) -> int:
        # a filling forward starts from nothing (its positions and mask start at 0)
        if self._owner.filling or not self.is_initialized:
            return 0
        return self.keys.shape[-2]

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.get_seq_length() + query_length, 0


class DiffusionCache(Cache):
    """Per-layer K/V of the last refresh (see the module docstring).

    Args:
        num_layers: attention layers of the language model.
    """

    def __init__(self, num_layers: int):
        self.filling = False
        self.readable: torch.Tensor | None = None  # [B, N] bool: the rows cached steps may read
        super().__init__(layers=[DiffusionCacheLayer(self) for _ in range(num_layers)])

    def read_rows(self, readable: torch.Tensor) -> None:
        """Set the ``[B, N]`` bool rows the next cached steps may read (everything else is
        masked out of the attention and zeroed in the keys/values it sees)."""
        self.readable = readable

    @contextlib.contextmanager
    def fill(self):
        """Forwards inside the block (full forwards) store their K/V in the cache."""
        self.filling = True
        try:
            yield self
        finally:
            self.filling = False

    @property
    def is_filled(self) -> bool:
        return all(layer.is_initialized for layer in self.layers)

    def tensors(self) -> list[torch.Tensor]:
        """Every layer's keys then every layer's values, ``[B, Hkv, N, D]`` each."""
        return [layer.keys for layer in self.layers] + [layer.values for layer in self.layers]

    def replace(self, tensors: list[torch.Tensor]) -> None:
        """Install tensors in the order of `tensors` (e.g. compacted ones)."""
        n = len(self.layers)
        for i, layer in enumerate(self.layers):
            layer.keys, layer.values = tensors[i], tensors[n + i]

    def clear(self) -> None:
        """Drop every layer's K/V (the next step must refill)."""
        self.readable = None
        for layer in self.layers:
            layer.keys = layer.values = None
            layer.is_initialized = False

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors() if t is not None)
