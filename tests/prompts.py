"""Prompts for sampler tests: token embeddings with a random-feature 'image' run."""
from __future__ import annotations

import torch

MASK = 127  # the tiny models' mask id; prompt tokens are drawn below it


def image_prompts(model, lengths, spans, seed=0) -> list[torch.Tensor]:
    """Per-item prompt embeddings ``[n_i, hidden]``: random token ids' embeddings with the
    span ``(start, length)`` of each item replaced by random features (its visual tokens)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for n, (s, l) in zip(lengths, spans):
        ids = torch.randint(0, MASK, (n,), generator=g)
        with torch.no_grad():
            emb = model.get_input_embeddings()(ids).clone()
        emb[s : s + l] = torch.randn(l, model.config.hidden_size, generator=g) * 0.5
        out.append(emb)
    return out
