"""`SequenceState`: the sequence the sampler denoises, and the one place that knows its layout.

Layout (`dvtp.batching.sequence_layout`): item b occupies the first ``seq_len[b]`` slots of
a ``[B, N]`` sequence as ``[prompt_b | response]`` followed by padding, so every item starts
at slot 0 and ``arange`` positions number it exactly as if it ran alone. Its response
occupies slots ``seq_len[b] - G .. seq_len[b] - 1`` (``layout.resp_idx``). Padding is
hidden by a ``[B, N]`` key-valid vector (never an N x N mask). Dream's one-position logit
shift stays correct because nothing is inserted between a prompt and its response.
"""
from __future__ import annotations

import torch

import dvtp_kernels

from ..batching import PromptBatch, SequenceLayout, sequence_layout

__all__ = ["SequenceState"]


class SequenceState:
    """The padded sequence and the response ids.

    Attributes:
        embeds: ``[B, N, hidden]`` input embeddings (the response rows rewritten from
            ``resp`` after every step).
        ids: ``[B, N]`` int64 token ids (-1 where the prompt was given as embeddings, and
            at padding).
        positions: ``[B, N]`` int64 original position ids, kept only when pruning keeps
            original positions (``renumber_positions=False``); None = ``arange`` over the
            current sequence.
        resp: ``[B, G]`` int64 response ids in response coordinates (the mask id where
            still masked).
        layout: the `SequenceLayout` of the current lengths.
    """

    def __init__(self, prompt: PromptBatch, gen_length: int, mask_id: int, embedding: torch.nn.Module,
                 keep_positions: bool):
        B, _, hidden = prompt.embeds.shape
        device = prompt.embeds.device
        G = gen_length
        self.gen_length = G
        self.embedding = embedding
        self.layout: SequenceLayout = sequence_layout([p + G for p in prompt.lengths], G, device)
        self.resp = torch.full((B, G), mask_id, dtype=torch.int64, device=device)
        self.embeds = torch.cat([prompt.embeds, prompt.embeds.new_zeros((B, G, hidden))], dim=1)
        self.ids = torch.cat([prompt.ids, torch.full((B, G), -1, dtype=torch.int64, device=device)], dim=1)
        N = self.layout.length
        self.positions = torch.arange(N, device=device).expand(B, N) if keep_positions else None
        self.write_response(0, G)

    @property
    def length(self) -> int:
        """N, the padded sequence length."""
        return self.embeds.shape[1]

    @property
    def position_ids(self) -> torch.Tensor | None:
        """What a full forward passes as ``position_ids`` (None = ``arange(N)``)."""
        return self.positions

    def write_response(self, start: int, end: int) -> None:
        """Write response positions ``[start, end)`` (ids and embeddings) into their slots."""
        idx = self.layout.resp_idx[:, start:end]
        part = self.resp[:, start:end]
        self.ids.scatter_(1, idx, part)
        self.embeds.scatter_(1, idx.unsqueeze(-1).expand(-1, -1, self.embeds.shape[2]), self.embedding(part))

    def block_rows(self, start: int, end: int) -> torch.Tensor:
        """What a full forward passes as ``logits_to_keep`` for response positions
        ``[start, end)``: ``[end - start]`` slots shared by every item when no item is padded
        (the response is every item's tail), else their ``[B, end - start]`` slots."""
        if self.layout.attention_mask is None:
            first = self.length - self.gen_length
            return torch.arange(first + start, first + end, device=self.resp.device)
        return self.layout.resp_idx[:, start:end]

    def response_slots(self, start: int, end: int) -> torch.Tensor:
        """``[B, end - start]`` int64 slots of response positions ``start .. end - 1``
        (``start`` may be negative: -1 is the prompt's last token)."""
        first = self.layout.resp_idx[:, :1]
        return first + torch.arange(start, end, device=first.device)

    def gather_rows(self, slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(embeddings ``[B, A, hidden]``, position ids ``[B, A]``) of the ``[B, A]`` ``slots``."""
        embeds = self.embeds.gather(1, slots.unsqueeze(-1).expand(-1, -1, self.embeds.shape[2]))
        positions = slots if self.positions is None else self.positions.gather(1, slots)
        return embeds, positions

    def compact(self, gather_index: torch.Tensor, new_len: torch.Tensor,
                extra: list[torch.Tensor] = (), extra_dims: list[int] = (), backend: str | None = None) -> list[torch.Tensor]:
        """Compact every sequence-aligned tensor by ``gather_index`` (``[B, N']`` from
        `dvtp_kernels.select_visual_tokens`) in ONE `dvtp_kernels.gather_compact` call:
        embeddings, ids, original positions, plus ``extra`` tensors (e.g. every cached K and
        V, sequence dim ``extra_dims``). Returns the compacted ``extra`` tensors. Reads the
        new lengths on the host (one sync: the next forward's shapes depend on them).
        ``backend``: the dvtp_kernels backend (None: the best usable)."""
        own = [self.embeds, self.ids] + ([self.positions] if self.positions is not None else [])
        tensors = own + list(extra)
        dims = [1] * len(own) + list(extra_dims)
        out = dvtp_kernels.gather_compact(tensors, gather_index, new_len, dims=dims, pad_value=0, backend=backend)
        self.embeds, self.ids = out[0], out[1]
        if self.positions is not None:
            self.positions = out[2]
        self.layout = sequence_layout(new_len.tolist(), self.gen_length, self.embeds.device)
        return out[len(own):]
