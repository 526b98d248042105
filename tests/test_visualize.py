"""`dvtp.visualize`: the picture of kept tokens, checked pixel by pixel (no model needed).

The images are grey noise, so a pixel is dimmed exactly when R == G == B: `render_kept`
dims pruned regions to a grey (dim x luma) and blends kept ones half-and-half with a
"turbo" colour, whose channels differ by >= 40 (so a kept pixel's by >= 20 - 1 after
rounding). Every check below reads the rendered image only.
"""
from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from dvtp.visualize import (
    COLORBAR_WIDTH, GAP, HEADER_HEIGHT, KEPT_TINT, MARGIN, MIN_PANEL_SIDE, TITLE_HEIGHT, _render, check_options,
    figure_size, render_kept, view_counts, visualize,
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


def _panel_wh(size, panel):
    """(pw, ph) of `figure_size`'s docstring: longer side `panel`, no side under min(panel, MIN_PANEL_SIDE)."""
    H, W = size
    scale = panel / max(H, W)
    least = min(panel, MIN_PANEL_SIDE)
    return max(least, round(W * scale)), max(least, round(H * scale))


def _rows(picture: Image.Image, layouts, panel: int, title: bool):
    """Crop each image's panels out of the figure (geometry of `render_kept`'s docstring):
    per image, (list of [ph, pw, 3] crops, (pw, ph))."""
    arr = np.asarray(picture)
    rows, top = [], MARGIN + (HEADER_HEIGHT if title else 0)
    for layout in layouts:
        pw, ph = _panel_wh(layout.size, panel)
        y = top + TITLE_HEIGHT
        views = 2 if layout.anyres else 1
        rows.append(([arr[y : y + ph, MARGIN + i * (pw + GAP) : MARGIN + i * (pw + GAP) + pw] for i in range(views)],
                     (pw, ph)))
        top = y + ph + GAP
    return rows


def _panels(picture: Image.Image, layout, panel: int, title: bool):
    """Crop each panel of a one-image figure."""
    return _rows(picture, [layout], panel, title)[0]


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
    # 250 x 100 at the image's aspect ratio, the shorter side raised to MIN_PANEL_SIDE
    assert picture.size == (2 * MARGIN + 250, 2 * MARGIN + TITLE_HEIGHT + 128)
    (crop,), _ = _panels(picture, layout, panel, title=False)
    crop = crop.astype(np.int64)
    dimmed = (crop[..., 0] == crop[..., 1]) & (crop[..., 1] == crop[..., 2])
    owner = _owner_by_centre(layout.boxes().numpy(), np.flatnonzero(layout.kinds().numpy() == BASE), size, (250, 128))
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
    (dict(out="/proc/kept.png"), "cannot write"),
    (dict(image=[]), "image: an empty list"),
    (dict(image=[_grey_image((64, 80), 0), np.zeros((4, 4), np.float32)]), r"image\[1\]"),
    (dict(keep_ratio=0.0), "keep_ratio"),
    (dict(cmap="nope"), "cmap"),
    (dict(dim=2.0), "dim"),
])
def test_visualize_checks_before_the_model_runs(kwargs, match):
    args = dict(image=_grey_image((64, 80), 0), keep_ratio=0.25, out=None) | kwargs
    with pytest.raises((ValueError, TypeError), match=match):
        visualize(_NoForward(), question="q?", **args)


# ---------------------------------------------------------------------------------------
# several images of one item (one row each)
# ---------------------------------------------------------------------------------------


def _dimmed(crop: np.ndarray) -> np.ndarray:
    crop = crop.astype(np.int64)
    return (crop[..., 0] == crop[..., 1]) & (crop[..., 1] == crop[..., 2])


def _kept_by_pixel(layout, tokens, kind, panel_size):
    """[ph, pw] bool (True: the pixel's token was kept) and the covered mask."""
    owner = _owner_by_centre(layout.boxes().numpy(), np.flatnonzero(layout.kinds().numpy() == kind), layout.size,
                             panel_size)
    kept = np.zeros(layout.num_tokens, dtype=bool)
    kept[tokens.kept.numpy()] = True
    return kept[np.maximum(owner, 0)], owner >= 0


def test_render_kept_draws_a_row_per_image_of_an_item():
    """Two images of one prompt (one padded-square view each), of different sizes: each
    gets its row, its pixels dimmed exactly where its own tokens were pruned, and a title
    "image i" with its own counts; one colour scale over both (joint ranks)."""
    sizes, panel = [(300, 500), (700, 260)], 300
    layouts = [image_layout(s, None, anyres=False) for s in sizes]
    tokens = [_tokens(layout, seed=11 + i, keep_fraction=0.2 + 0.3 * i) for i, layout in enumerate(layouts)]
    images = [_grey_image(s, seed=i) for i, s in enumerate(sizes)]
    picture, geometry, texts = _render(images, tokens, panel=panel, title="two")
    assert picture.size == figure_size(sizes, [1, 1], panel=panel, title=True)
    # rows stacked under each other: width of the wider row, heights summed
    (w0, h0), (w1, h1) = _panel_wh(sizes[0], panel), _panel_wh(sizes[1], panel)
    assert (w0, h0, w1, h1) == (300, 180, 128, 300)
    assert picture.size == (2 * MARGIN + 300 + COLORBAR_WIDTH,
                            2 * MARGIN + HEADER_HEIGHT + 2 * TITLE_HEIGHT + 180 + 300 + GAP)
    rows = _rows(picture, layouts, panel, title=True)
    for layout, t, ((crop,), wh) in zip(layouts, tokens, rows):
        kept, covered = _kept_by_pixel(layout, t, BASE, wh)
        assert covered.all()
        np.testing.assert_array_equal(_dimmed(crop), ~kept)
    titles = [x.text for x in texts]
    for i, t in enumerate(tokens):
        c = view_counts(t)[0]
        # the full title where it fits (300 pixels), a short one in the 128-pixel panel
        want = ["image 1, view (padded square): {}/{} kept", "image 2: {}/{}"][i].format(c.kept, c.total)
        assert [x for x in titles if x.startswith(f"image {i + 1}")] == [want]
    # the bar's ends are the extremes over both images' kept tokens
    values = np.concatenate([t.importance.numpy()[t.kept.numpy()[t.kept.numpy() < 729]] for t in tokens])
    assert f"{values.max():.3g}" in titles and f"{values.min():.3g}" in titles
    # the same call with one image of the two draws only that row, as before
    one = render_kept(images[1], tokens[1], panel=panel)
    assert one.size == figure_size(sizes[1], 1, panel=panel) == (2 * MARGIN + 128 + COLORBAR_WIDTH,
                                                                  2 * MARGIN + TITLE_HEIGHT + 300)


def test_render_kept_names_mismatched_lists():
    layouts = [image_layout((64, 64), None, anyres=False)] * 2
    tokens = [_tokens(layout, seed=i) for i, layout in enumerate(layouts)]
    image = _grey_image((64, 64), 0)
    with pytest.raises(ValueError, match="image: 1 image"):
        render_kept(image, tokens)
    with pytest.raises(ValueError, match=r"image\[1\] is 32x64"):
        render_kept([image, image[:, :32]], tokens)
    with pytest.raises(ValueError, match=r"tokens\[0\]: this image was not pruned"):
        render_kept([image, image], [ImageTokens(layout=layouts[0], span=(0, layouts[0].num_tokens)), tokens[1]])


@pytest.fixture(scope="module")
def tiny():
    from dvtp.vlm import tiny_llada_v

    return tiny_llada_v(seed=0)


SCHEDULE = dict(gen_length=4, steps=4, block_length=4)


def test_visualize_draws_every_image_of_the_prompt(tiny):
    """Two grey-noise images in one prompt, 384 x 384 and 400 wide x 768 tall: each has its
    row, dimmed exactly where its own tokens were pruned; the square one's 27 x 27 cells are
    18 x 18 pixels at panel 486, so its dimmed area is exactly its pruned count x 324."""
    # 400 wide, not 384: at 384 some pixel centres fall exactly on box edges (a float tie)
    sizes, panel = [(384, 384), (768, 400)], 486
    images = [_grey_image(s, seed=i) for i, s in enumerate(sizes)]
    picture, result = visualize(tiny, images, "What is in the pictures?", keep_ratio=0.3, panel=panel,
                                title="{kept}/{total}", **SCHEDULE)
    tokens = result.images[0]
    assert [t.layout.size for t in tokens] == sizes
    assert picture.size == figure_size(sizes, [1, 1], panel=panel, title=True)
    assert sum(len(t.kept) for t in tokens) == result.kept_counts[0]
    rows = _rows(picture, [t.layout for t in tokens], panel, True)
    for i, (t, ((crop,), wh)) in enumerate(zip(tokens, rows)):
        view, _ = view_counts(t)
        assert view.name == "view" and view.total == 729 and 0 < view.kept < 729
        kept, covered = _kept_by_pixel(t.layout, t, BASE, wh)
        np.testing.assert_array_equal(_dimmed(crop)[covered], ~kept[covered])
        if i == 0:
            assert int(_dimmed(crop).sum()) == (view.total - view.kept) * 18 * 18


# ---------------------------------------------------------------------------------------
# readable at any size: panels and text
# ---------------------------------------------------------------------------------------


def _text_boxes(picture, texts):
    from dvtp.visualize import _font

    draw = ImageDraw.Draw(picture)
    return [draw.textbbox(t.xy, t.text, font=_font(t.size), anchor=t.anchor) for t in texts]


def _meet(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


@pytest.mark.parametrize("size", [(10, 20000), (20000, 10), (1, 1), (384, 384)])
@pytest.mark.parametrize("panel,title,heatmap", [(512, True, True), (16, True, True), (64, False, True),
                                                 (96, True, False)])
def test_panels_are_readable_and_no_text_overlaps(size, panel, title, heatmap):
    layout = _layout(size)
    tokens = _tokens(layout, seed=5)
    picture, geometry, texts = _render(_grey_image(size, 2), tokens, panel=panel, heatmap=heatmap,
                                       title="a header line" if title else None)
    assert picture.size == geometry.size == figure_size(size, 2, panel=panel, title=title)
    width, height = picture.size
    pw, ph = _panel_wh(size, panel)
    assert min(pw, ph) >= min(panel, MIN_PANEL_SIDE) and max(pw, ph) == panel
    top = MARGIN + (HEADER_HEIGHT if title else 0) + TITLE_HEIGHT
    assert geometry.panels == [[(MARGIN, top, MARGIN + pw, top + ph),
                                (MARGIN + pw + GAP, top, MARGIN + 2 * pw + GAP, top + ph)]]
    x0, y0, _, y1 = geometry.column
    assert x0 == MARGIN + 2 * pw + 2 * GAP and y0 == top and y1 - y0 >= 64 and y1 + MARGIN <= height
    boxes = _text_boxes(picture, texts)
    assert all(t.text for t in texts)
    # titles: one per panel, the header, the column's title and labels (3 or 2)
    assert len(texts) == (1 if title else 0) + 2 + 1 + (3 if heatmap else 2)
    solids = [*geometry.panels[0], (x0, y0, x0 + 16, y1)]  # panels and the bar / swatch strip
    for i, a in enumerate(boxes):
        assert 0 <= a[0] and 0 <= a[1] and a[2] <= width and a[3] <= height, (texts[i], a)
        for s in solids:
            assert not _meet(a, s), (texts[i], a, s)
        for j in range(i):
            assert not _meet(a, boxes[j]), (texts[i], texts[j])
    # and nothing is drawn outside those boxes (1 pixel of anti-aliasing around text)
    ink = np.any(np.asarray(picture) != 255, axis=-1)
    for l, t, r, b in boxes:
        ink[max(t - 1, 0) : b + 1, max(l - 1, 0) : r + 1] = False
    for l, t, r, b in solids:
        ink[t:b, l:r] = False
    assert not ink.any()


# ---------------------------------------------------------------------------------------
# no heat map for policies that rank nothing
# ---------------------------------------------------------------------------------------


def _column_colours(picture, geometry) -> int:
    x0, y0, _, y1 = geometry.column
    strip = np.asarray(picture)[y0:y1, x0 : x0 + 16].reshape(-1, 3)
    return len(np.unique(strip, axis=0))


def test_kept_without_a_heat_map_is_one_tint():
    size, panel = (768, 1024), 400
    layout = _layout(size)
    tokens = _tokens(layout, seed=9)
    picture, geometry, texts = _render(_grey_image(size, 3), tokens, panel=panel, heatmap=False)
    assert _column_colours(picture, geometry) == 3  # background, kept swatch, pruned swatch
    assert [t.text for t in texts[-3:]] == ["no heat map", "kept", "pruned"]
    crops, (pw, ph) = _panels(picture, layout, panel, title=False)
    for crop, kind in zip(crops, (BASE, GRID)):
        kept, covered = _kept_by_pixel(layout, tokens, kind, (pw, ph))
        crop = crop.astype(np.int64)
        kept &= covered
        # a grey pixel p becomes (p + tint) / 2: R - B = (255 - 0) / 2 for every kept pixel
        np.testing.assert_allclose(crop[kept][:, 0] - crop[kept][:, 2], (KEPT_TINT[0] - KEPT_TINT[2]) / 2, atol=1)
        np.testing.assert_array_equal(_dimmed(crop)[covered], ~kept[covered])
    heat, geometry, _ = _render(_grey_image(size, 3), tokens, panel=panel)
    assert _column_colours(heat, geometry) > 100  # the colour bar's ramp


@pytest.mark.parametrize("policy", ["uniform", "random", "redvtp"])
def test_visualize_draws_a_heat_map_only_for_scored_policies(tiny, policy):
    """384 x 384 grey noise at panel 486: 18 x 18-pixel cells in both views."""
    picture, result = visualize(tiny, _grey_image((384, 384), 4), "q?", keep_ratio=0.25, policy=policy,
                                panel=486, **SCHEDULE)
    tokens = result.images[0][0]
    _, geometry, _ = _render(_grey_image((384, 384), 4), tokens, panel=486)  # where the column is
    assert picture.size == geometry.size
    assert (_column_colours(picture, geometry) == 3) == (policy != "redvtp")
    crops, _ = _panels(picture, tokens.layout, 486, title=False)
    arr = np.asarray(picture).astype(np.int64)
    for crop, count in zip(crops, view_counts(tokens)):
        assert int(_dimmed(crop).sum()) == (count.total - count.kept) * 18 * 18
        if policy != "redvtp":  # every kept pixel has the tint's hue
            kept = ~_dimmed(crop)
            assert (crop[kept][:, 0] - crop[kept][:, 2] >= 126).all()
    assert arr.shape[:2] == picture.size[::-1]


# ---------------------------------------------------------------------------------------
# out: writable, checked before the model runs, nothing left behind
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,match", [
    ("kept.txt", "image extension"),
    ("kept", "image extension"),
    ("kept.xbm", "image extension"),  # registered, but Pillow writes no RGB picture as XBM
    ("kept.psd", "image extension"),  # registered, read-only
    ("missing/kept.png", "does not exist"),
    ("afile.png/kept.png", "not a folder"),
    (".", "is a folder"),
])
def test_check_options_rejects_unwritable_out(tmp_path, name, match):
    (tmp_path / "afile.png").write_bytes(b"x")
    before = sorted(p.name for p in tmp_path.iterdir())
    out = tmp_path / name if name != "." else tmp_path
    with pytest.raises(ValueError, match=rf"out=.*{match}"):
        check_options(out=out)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.parametrize("out", ["/proc/kept.png", "/proc/self/kept.png"])
def test_check_options_tries_the_folder(out):
    # /proc exists and its permission bits let root write: only trying tells
    with pytest.raises(ValueError, match=r"out='/proc.*cannot write"):
        check_options(out=out)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes in read-only folders")
def test_check_options_rejects_a_read_only_folder(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(ValueError, match="cannot write"):
            check_options(out=folder / "kept.png")
    finally:
        folder.chmod(0o755)


def test_check_options_accepts_writable_out_and_leaves_no_file(tmp_path):
    assert check_options(out=tmp_path / "kept.png") == str(tmp_path / "kept.png")
    assert check_options(out=str(tmp_path / "KEPT.JPG")) == str(tmp_path / "KEPT.JPG")
    assert list(tmp_path.iterdir()) == []
    existing = tmp_path / "old.png"
    existing.write_bytes(b"old")
    stamp = existing.stat().st_mtime_ns
    assert check_options(out=existing) == str(existing)
    assert existing.read_bytes() == b"old" and existing.stat().st_mtime_ns == stamp
    assert check_options(out=None) is None
