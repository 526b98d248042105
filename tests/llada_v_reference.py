"""An independent statement of LLaDA-V's image geometry for the tests: best-resolution grid
selection and the spatial_unpad / anyres_max packing of its `llava_arch`, written from its
description (docs/llada_v.md) without using dvtp or transformers.

Conventions are LLaDA-V's: image sizes and pinpoints are (width, height).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

VIEW = 384  # view side in pixels
S = 27  # feature cells per view side (384 / 14)
# LLaDA-V's config: image_grid_pinpoints as [width, height], i outer, j inner.
REF_PINPOINTS = [(i * VIEW, j * VIEW) for i in range(1, 7) for j in range(1, 7)]


def ref_select_best(W: int, H: int, pinpoints=REF_PINPOINTS) -> tuple[int, int]:
    """LLaDA-V's select_best_resolution on (width, height), in list order; returns (w, h)."""
    best, best_eff, best_waste = None, 0, float("inf")
    for w, h in pinpoints:
        scale = min(w / W, h / H)
        eff = min(int(W * scale) * int(H * scale), W * H)
        waste = w * h - eff
        if eff > best_eff or (eff == best_eff and waste < best_waste):
            best, best_eff, best_waste = (w, h), eff, waste
    return best


def ref_unpad(t: torch.Tensor, W: int, H: int) -> torch.Tensor:
    """LLaDA-V's unpad_image on a [C, h, w] map of an image of W x H pixels (int() truncation)."""
    ch, cw = t.shape[1:]
    if W / H > cw / ch:
        new_h = int(H * (cw / W))
        p = (ch - new_h) // 2
        return t[:, p : ch - p, :]
    new_w = int(W * (ch / H))
    p = (cw - new_w) // 2
    return t[:, :, p : cw - p]


def ref_pack(feats: torch.Tensor, W: int, H: int, newline: torch.Tensor, max_views: int = 4) -> torch.Tensor:
    """LLaDA-V's packing of one image's [V, 729, D] view features (V = 1: padded square)."""
    D = feats.shape[-1]
    if feats.shape[0] == 1:
        return torch.cat([feats[0], newline[None]])
    bw, bh = ref_select_best(W, H)
    cols, rows = bw // VIEW, bh // VIEW
    assert feats.shape[0] == 1 + rows * cols
    big = torch.empty(D, rows * S, cols * S, dtype=feats.dtype)
    for r in range(rows):
        for c in range(cols):
            big[:, r * S : (r + 1) * S, c * S : (c + 1) * S] = feats[1 + r * cols + c].t().reshape(D, S, S)
    big = ref_unpad(big, W, H)
    _, h, w = big.shape
    times = math.sqrt(h * w / (max_views * S * S))
    if times > 1.1:
        big = F.interpolate(big[None], [int(h // times), int(w // times)], mode="bilinear")[0]
    rows_out = []
    for i in range(big.shape[1]):
        rows_out.append(big[:, i, :].t())
        rows_out.append(newline[None])
    return torch.cat([feats[0]] + rows_out)


def ref_count(W: int, H: int, max_views: int = 4) -> int:
    """Visual tokens of an anyres image of W x H pixels."""
    bw, bh = ref_select_best(W, H)
    t = ref_unpad(torch.empty(0, bh // VIEW * S, bw // VIEW * S), W, H)
    h, w = t.shape[1:]
    times = math.sqrt(h * w / (max_views * S * S))
    if times > 1.1:
        h, w = int(h // times), int(w // times)
    return S * S + h * (w + 1)
