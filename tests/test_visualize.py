"""`dvtp.visualize`: the picture of kept tokens, checked pixel by pixel (no model needed).

The images are grey noise, so a pixel is dimmed exactly when R == G == B: `render_kept`
dims pruned regions to a grey (dim x luma) and blends kept ones half-and-half with a
"turbo" colour, whose channels differ by >= 40 (so a kept pixel's by >= 20 - 1 after
rounding). Every check below reads the rendered image only.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from dvtp.visualize import (
    COLORBAR_WIDTH, GAP, HEADER_HEIGHT, MARGIN, TITLE_HEIGHT, figure_size, render_kept, view_counts, visualize,
)
from dvtp.vlm import ImageTokens, image_layout
from dvtp.vlm.packing import BASE, GRID, NEWLINE
from llada_v_reference import ref_select_best

# (height, width), panel: a 4:3 photo whose grid is shrunk (2x3 views -> 46x62 cells, the
# border columns clipped), a wide image, a tall one, with panel sides that do not divide
# into whole cells (the rounding case); base-view cells of 9 to 13 panel pixels.
CASES = [((768, 1024), 333), ((300, 1000), 950), ((900, 350), 700)]


def _grey_image(size, seed) -> np.ndarray:
    g = np.random.default_rng(seed)
    return g.integers(0, 256, size=size, dtype=np.uint8)  # [H, W] grey, RGB after load_image


def _layout(size, anyres=True):
    H, W = size
    bw, bh = ref_select_best(W, H)
    return image_layout(size, (bh // 384, bw // 384), anyres=anyres)


def _tokens(layout, seed, keep_fraction=0.3) -> ImageTokens:
    """Fresh random pruning: a random kept set (newline tokens included at random) and
    heavy-tailed importance, as attention importance is."""
    g = torch.Generator().manual_seed(seed)
    n = layout.num_tokens
    kept = torch.nonzero(torch.rand(n, generator=g) < keep_fraction).flatten()
    importance = torch.rand(n, generator=g).pow(4).float()
    return ImageTokens(layout=layout, span=(5, n), kept=kept, importance=importance)


def _panels(picture: Image.Image, layout, panel: int, title: bool):
    """Crop each panel out of the figure (geometry of `figure_size`'s docstring)."""
    H, W = layout.size
    scale = panel / max(H, W)
    pw, ph = max(1, round(W * scale)), max(1, round(H * scale))
    top = MARGIN + (HEADER_HEIGHT if title else 0) + TITLE_HEIGHT
    views = 2 if layout.anyres else 1
    arr = np.asarray(picture)
    return [arr[top : top + ph, MARGIN + i * (pw + GAP) : MARGIN + i * (pw + GAP) + pw] for i in range(views)], (pw, ph)


def _owner_by_centre(boxes: np.ndarray, indices: np.ndarray, size, panel_size) -> np.ndarray:
    """[ph, pw]: which token's box holds each pixel centre (-1: none), found by searching
    the boxes' sorted edges (independently of the renderer's edge rounding)."""
    H, W = size
    pw, ph = panel_size
    cx = (np.arange(pw) + 0.5) * W / pw
    cy = (np.arange(ph) + 0.5) * H / ph
    b = boxes[indices]
    nonempty = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
    b, idx = b[nonempty], indices[nonempty]
    xs, ys = np.unique(b[:, 0]), np.unique(b[:, 1])
    table = np.full((len(ys), len(xs)), -1)
    table[np.searchsorted(ys, b[:, 1]), np.searchsorted(xs, b[:, 0])] = idx
    col = np.searchsorted(xs, cx, side="right") - 1
    row = np.searchsorted(ys, cy, side="right") - 1
    owner = table[np.clip(row, 0, None)[:, None], np.clip(col, 0, None)[None, :]]
    owner[(row < 0)[:, None] | (col < 0)[None, :]] = -1
    inside = (cx[None, :] < boxes[np.maximum(owner, 0), 2]) & (cy[:, None] < boxes[np.maximum(owner, 0), 3])
    return np.where(inside & (owner >= 0), owner, -1)


def _rounding_slack(w: float) -> float:
    """A box w pixels wide holds floor(w) or ceil(w) pixel centres, exactly w when w is whole."""
    return 0.0 if abs(w - round(w)) < 1e-9 else max(w - math.floor(w), math.ceil(w) - w)


@pytest.mark.parametrize("size,panel", CASES)
def test_dimmed_pixels_are_exactly_the_pruned_tokens(size, panel):
    layout = _layout(size)
    tokens = _tokens(layout, seed=size[0] + panel)
    picture = render_kept(_grey_image(size, seed=panel), tokens, panel=panel, title="t")
    assert picture.size == figure_size(size, 2, panel=panel, title=True)
    crops, (pw, ph) = _panels(picture, layout, panel, title=True)
    kinds = layout.kinds().numpy()
    boxes = layout.boxes().numpy()
    kept = np.zeros(layout.num_tokens, dtype=bool)
    kept[tokens.kept.numpy()] = True
    sx, sy = pw / size[1], ph / size[0]
    for crop, kind in zip(crops, (BASE, GRID)):
        crop = crop.astype(np.int64)
        dimmed = (crop[..., 0] == crop[..., 1]) & (crop[..., 1] == crop[..., 2])
        spread = crop.max(-1) - crop.min(-1)
        assert spread[~dimmed].min() >= 19  # kept pixels are clearly coloured
        indices = np.flatnonzero(kinds == kind)
        owner = _owner_by_centre(boxes, indices, size, (pw, ph))
        covered = owner >= 0
        # LLaDA-V's unpad truncates, so the grid of a tall image misses a few border rows;
        # those pixels are drawn as they are (grey here, like dimmed ones: left out below)
        assert covered.mean() > (1.0 if kind == BASE else 0.98) - 1e-12
        np.testing.assert_array_equal(dimmed[covered], ~kept[owner[covered]])
        dimmed &= covered

        # dimmed area vs pruned tokens: a box w x h panel pixels holds w*h pixels up to the
        # rounding of its edges to pixel centres (_rounding_slack per side).
        b = boxes[indices] * [sx, sy, sx, sy]
        w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
        pruned = ~kept[indices]
        dx = np.array([_rounding_slack(v) for v in w])
        dy = np.array([_rounding_slack(v) for v in h])
        slack = float((dx * h + dy * w + dx * dy)[pruned].sum())
        area_pruned = float((w * h)[pruned].sum())
        assert abs(int(dimmed.sum()) - area_pruned) <= slack + 1e-6
        if kind == BASE:  # equal cells covering the panel: the area fraction is the token fraction
            pruned_fraction = pruned.mean()
            assert abs(dimmed.mean() - pruned_fraction) <= slack / (pw * ph) + 1e-9
            assert slack / (pw * ph) < 0.12  # the bound is informative at these cell sizes


def test_heat_colours_follow_importance_rank():
    size, panel = (768, 1024), 512
    layout = _layout(size)
    tokens = _tokens(layout, seed=3)
    grey = np.full(size, 128, dtype=np.uint8)
    picture = render_kept(grey, tokens, panel=panel, title=None)
    (base, _), (pw, ph) = _panels(picture, layout, panel, title=False)
    import matplotlib

    turbo = matplotlib.colormaps["turbo"]
    boxes = layout.boxes().numpy()
    kept_base = [int(t) for t in tokens.kept if layout.kinds()[t] == BASE]
    values = tokens.importance.numpy()
    drawn = [int(t) for t in tokens.kept if layout.kinds()[t] != NEWLINE]
    rank = {t: sorted(values[drawn]).index(values[t]) / (len(drawn) - 1) for t in kept_base}
    for t in kept_base[:40]:
        x0, y0, x1, y1 = boxes[t] * ([pw / size[1], ph / size[0]] * 2)
        pixel = base[int((y0 + y1) / 2), int((x0 + x1) / 2)].astype(float)
        want = 0.5 * 128 + 0.5 * np.asarray(turbo(rank[t])[:3]) * 255
        np.testing.assert_allclose(pixel, want, atol=1.01)


def test_one_panel_for_a_padded_square_view():
    size, panel = (200, 500), 250
    layout = image_layout(size, None, anyres=False)
    tokens = _tokens(layout, seed=7)
    picture = render_kept(_grey_image(size, 1), tokens, panel=panel, colorbar=False)
    assert picture.size == (2 * MARGIN + 250, 2 * MARGIN + TITLE_HEIGHT + 100)
    (crop,), _ = _panels(picture, layout, panel, title=False)
    crop = crop.astype(np.int64)
    dimmed = (crop[..., 0] == crop[..., 1]) & (crop[..., 1] == crop[..., 2])
    owner = _owner_by_centre(layout.boxes().numpy(), np.flatnonzero(layout.kinds().numpy() == BASE), size, (250, 100))
    kept = np.zeros(layout.num_tokens, dtype=bool)
    kept[tokens.kept.numpy()] = True
    np.testing.assert_array_equal(dimmed, ~kept[owner])
    counts = view_counts(tokens)
    assert [c.name for c in counts] == ["view", "newline"]
    assert counts[0].total == 729 and counts[1].total == 1


def test_documented_size():
    # the example of render_kept's docstring: 1024 x 768, two views, panel 512, no title
    assert figure_size((768, 1024), 2) == (1144, 432)
    assert figure_size((768, 1024), 2, title=True, colorbar=False) == (2 * 12 + 2 * 512 + 12, 2 * 12 + 24 + 24 + 384)
    assert COLORBAR_WIDTH == 84


def test_bad_input_is_named():
    layout = _layout((768, 1024))
    tokens = _tokens(layout, seed=0)
    image = _grey_image((768, 1024), 0)
    with pytest.raises(ValueError, match="not pruned"):
        render_kept(image, ImageTokens(layout=layout, span=(0, layout.num_tokens)))
    with pytest.raises(ValueError, match="image is 1023x768"):
        render_kept(image[:, :1023], tokens)
    with pytest.raises(ValueError, match="cmap"):
        render_kept(image, tokens, cmap="no-such-map")
    with pytest.raises(ValueError, match="panel"):
        render_kept(image, tokens, panel=8)
    with pytest.raises(ValueError, match="importance must have shape"):
        render_kept(image, ImageTokens(layout=layout, span=(0, layout.num_tokens), kept=tokens.kept,
                                       importance=tokens.importance[:-1]))


class _NoForward:
    def answer(self, *args, **kwargs):
        raise AssertionError("the model ran before the arguments were checked")


@pytest.mark.parametrize("kwargs,match", [
    (dict(out="kept.txt"), "image extension"),
    (dict(out="/no/such/folder/kept.png"), "does not exist"),
    (dict(keep_ratio=0.0), "keep_ratio"),
    (dict(cmap="nope"), "cmap"),
    (dict(dim=2.0), "dim"),
])
def test_visualize_checks_before_the_model_runs(kwargs, match):
    args = dict(keep_ratio=0.25, out=None) | kwargs
    with pytest.raises(ValueError, match=match):
        visualize(_NoForward(), _grey_image((64, 80), 0), "q?", **args)
