"""A picture of which visual tokens pruning kept (``dvtp visualize``).

`render_kept` draws the pruned `dvtp.vlm.ImageTokens` of one item's images (one image,
or the several images of one prompt): one row per image, one panel per view of the image
(the base view, then the anyres grid; an image that shared its prompt with others has one
padded-square view), each showing the original image with

* every pruned token's region dimmed to a dark grey (``dim`` x its luma, R = G = B), and
* every kept token's region tinted (blended with weight ``heat_alpha``) either by a heat
  map of its ``importance`` (``cmap``): by default the token's rank among the kept tokens
  of all the item's images (they were pruned jointly), so every panel shares one colour
  scale, given by the colour bar on the right with the importance at its ends and middle;
  or, with ``heatmap=False`` (policies whose importance ranks nothing: "uniform",
  "random"), by the one colour `KEPT_TINT`, with a kept/pruned legend instead of the bar.

A token's region is its box from `ImageLayout.boxes` (original-image pixels): the base
view's 27 x 27 cells cover the whole image (the view is the image squashed to 384 x 384),
the grid's unpadded, possibly shrunk cells cover the image through the anyres crops.
Newline tokens have no region and are not drawn (`view_counts` counts them apart).
A panel pixel belongs to the token whose box holds the pixel's centre, so each token
covers its box's area to within one pixel row and column; pixels no token of the view
covers (LLaDA-V's unpad truncates, so the grid of some images misses a few border rows)
are drawn as they are.

A panel shows its image at the image's aspect ratio, longer side ``panel`` pixels, except
that no side is shorter than ``min(panel, MIN_PANEL_SIDE)``: an extreme aspect ratio
(a 20000 x 10 strip) is stretched along its short side rather than letterboxed, because
the base view squashes any image to 27 x 27 cells and a letterboxed strip would show its
27 rows in one or two pixels.

`visualize` runs the model with pruning and renders the item's images.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .paths import pil_writes_rgb, unwritable_reason
from .vlm.images import load_image
from .vlm.packing import BASE, GRID, NEWLINE

__all__ = ["render_kept", "visualize", "view_counts", "figure_size", "check_options", "ViewCount",
           "MARGIN", "GAP", "TITLE_HEIGHT", "HEADER_HEIGHT", "COLORBAR_WIDTH", "MIN_PANEL_SIDE", "KEPT_TINT"]

#: Figure geometry in pixels (see `figure_size`).
MARGIN = 12
GAP = 12
TITLE_HEIGHT = 24
HEADER_HEIGHT = 24
COLORBAR_WIDTH = 84  # GAP + a 16-pixel bar + 56 pixels of labels
#: No panel side is shorter than ``min(panel, MIN_PANEL_SIDE)`` pixels: room for a panel
#: title with the counts, and a few pixels per base-view row even for a 20000 x 10 strip.
MIN_PANEL_SIDE = 128
#: The colour of kept regions without a heat map (``heatmap=False``): amber, far from
#: the greys of pruned regions.
KEPT_TINT = (255, 170, 0)
_BAR = 16
_LABEL_PAD = 4   # between the bar (or a swatch) and its label
# The colour bar is at least this long whatever the panels' height: its three labels
# (about 14 pixels tall each at _FONT_SIZE) then keep >= 2 pixels between them.
_MIN_BAR = 64
_SWATCH_STEP = 24  # legend rows (heatmap=False): a _BAR x _BAR swatch and its label
_FONT_SIZE = 14
_BACKGROUND = (255, 255, 255)
_TEXT = (20, 20, 20)
# ITU-R BT.601 luma weights: the grey a dimmed pixel keeps of its colour.
_LUMA = np.array([0.299, 0.587, 0.114])


@dataclass(frozen=True)
class ViewCount:
    """Kept and total tokens of one view (``name``: "base", "grid", "view") or of the
    newline tokens (``name``: "newline")."""

    name: str
    kept: int
    total: int

    @property
    def pruned_fraction(self) -> float:
        return 0.0 if self.total == 0 else 1.0 - self.kept / self.total


def _kept_mask(tokens, name: str = "tokens") -> np.ndarray:
    """``[num_tokens]`` bool: True where the token was kept (checks ``tokens`` first;
    ``name`` is the argument the messages give)."""
    n = tokens.num_tokens
    if tokens.layout.num_tokens != n:
        raise ValueError(f"{name}: the layout has {tokens.layout.num_tokens} tokens but the span holds {n}")
    if tokens.kept is None or tokens.importance is None:
        raise ValueError(
            f"{name}: this image was not pruned (kept / importance are None); answer with "
            "pruning=dvtp.PruningConfig(keep_ratio=...) to get a picture of what was kept"
        )
    kept = np.asarray(tokens.kept, dtype=np.int64).reshape(-1)
    if kept.size and (kept.min() < 0 or kept.max() >= n):
        raise ValueError(f"{name}.kept must hold indices in [0, {n}), got {kept.min()}..{kept.max()}")
    importance = tokens.importance
    if tuple(importance.shape) != (n,):
        raise ValueError(f"{name}.importance must have shape [{n}], got {list(importance.shape)}")
    mask = np.zeros(n, dtype=bool)
    mask[kept] = True
    return mask


def _views(layout) -> list[tuple[str, int]]:
    """``(name, token kind)`` of the panels of ``layout``, in drawing order."""
    if not layout.anyres:
        return [("view", BASE)]
    return [("base", BASE), ("grid", GRID)]


def view_counts(tokens) -> list[ViewCount]:
    """Kept / total tokens per view of ``tokens`` (one pruned `ImageTokens`), then the
    newline tokens (``name="newline"``)."""
    kept = _kept_mask(tokens)
    kinds = tokens.layout.kinds().numpy()
    out = [ViewCount(name, int(kept[kinds == kind].sum()), int((kinds == kind).sum()))
           for name, kind in _views(tokens.layout)]
    out.append(ViewCount("newline", int(kept[kinds == NEWLINE].sum()), int((kinds == NEWLINE).sum())))
    return out


# ---------------------------------------------------------------------------------------
# geometry
# ---------------------------------------------------------------------------------------


def _panel_size(size: tuple[int, int], panel: int) -> tuple[int, int]:
    """``(width, height)`` of a panel: the image scaled so its longer side is ``panel``,
    each side then raised to at least ``min(panel, MIN_PANEL_SIDE)`` (stretching the image)."""
    H, W = size
    scale = panel / max(H, W)
    least = min(panel, MIN_PANEL_SIDE)
    return max(least, round(W * scale)), max(least, round(H * scale))


@dataclass(frozen=True)
class _Geometry:
    """Where `render_kept` draws: ``size`` (width, height); ``panels[i][v]`` the
    ``(x0, y0, x1, y1)`` box of image ``i``'s view ``v``; ``column`` the box of the colour
    bar (or legend) column right of the panels, None without one; ``top`` the y of the
    first row's panel titles."""

    size: tuple[int, int]
    panels: list[list[tuple[int, int, int, int]]]
    column: tuple[int, int, int, int] | None
    top: int


def _geometry(sizes: Sequence[tuple[int, int]], views: Sequence[int], *, panel: int, colorbar: bool,
              title: bool) -> _Geometry:
    top = MARGIN + (HEADER_HEIGHT if title else 0)
    panels, y, content_width = [], top, 0
    for size, n in zip(sizes, views):
        pw, ph = _panel_size(size, panel)
        y0 = y + TITLE_HEIGHT
        panels.append([(MARGIN + v * (pw + GAP), y0, MARGIN + v * (pw + GAP) + pw, y0 + ph) for v in range(n)])
        content_width = max(content_width, n * pw + (n - 1) * GAP)
        y = y0 + ph + GAP
    bottom = y - GAP
    column = None
    if colorbar:
        x0, y0 = MARGIN + content_width + GAP, top + TITLE_HEIGHT
        column = (x0, y0, x0 + COLORBAR_WIDTH - GAP, max(bottom, y0 + _MIN_BAR))
        bottom = column[3]
    width = 2 * MARGIN + content_width + (COLORBAR_WIDTH if colorbar else 0)
    return _Geometry((width, bottom + MARGIN), panels, column, top)


def _as_list(value) -> list:
    """One item or a list / tuple of them -> a list (a list is never one image or one `ImageTokens`)."""
    return list(value) if isinstance(value, (list, tuple)) else [value]


def figure_size(image_size, views, *, panel: int = 512, colorbar: bool = True,
                title: bool = False) -> tuple[int, int]:
    """``(width, height)`` in pixels of what `render_kept` draws for images of
    ``image_size = (height, width)`` (one image, or a list: one row of panels each) with
    ``views`` panels (an int, or a list with one per image):

    * image ``i``'s panels are ``(pw_i, ph_i) = (max(m, round(W * s)), max(m, round(H * s)))``
      with ``s = panel / max(H, W)`` and ``m = min(panel, MIN_PANEL_SIDE)``;
    * width ``= 2 * MARGIN + max_i(views_i * pw_i + (views_i - 1) * GAP) + COLORBAR_WIDTH``
      (with the colour bar);
    * height ``= 2 * MARGIN + HEADER_HEIGHT`` (with a title) ``+ sum_i(TITLE_HEIGHT + ph_i)
      + (images - 1) * GAP``, raised where needed so that the colour bar (which starts at
      the first panel's top) is at least 64 pixels long.

    E.g. 1144 x 432 for one 1024 x 768 image with 2 views at ``panel=512``, no title.
    """
    one = len(image_size) == 2 and all(isinstance(v, (int, np.integer)) for v in image_size)
    sizes = [tuple(image_size)] if one else [tuple(s) for s in image_size]
    counts = _as_list(views)
    if len(counts) == 1 and len(sizes) > 1:
        counts = counts * len(sizes)
    if len(counts) != len(sizes):
        raise ValueError(f"views: {len(counts)} counts for {len(sizes)} images")
    return _geometry(sizes, counts, panel=panel, colorbar=colorbar, title=title).size


# ---------------------------------------------------------------------------------------
# checks
# ---------------------------------------------------------------------------------------

_SCALES = ("rank", "linear")


def _check_render_args(panel, dim, heat_alpha, cmap, scale):
    """Validate the drawing options; returns the colour map (a matplotlib ``Colormap``)."""
    if scale not in _SCALES:
        raise ValueError(f"scale must be one of {', '.join(map(repr, _SCALES))}, got {scale!r}")
    if isinstance(panel, bool) or not isinstance(panel, int) or panel < 16:
        raise ValueError(f"panel must be an int >= 16 (pixels of a panel's longer side), got {panel!r}")
    for name, value in (("dim", dim), ("heat_alpha", heat_alpha)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    import matplotlib  # only the colour maps: no pyplot, no figure

    try:
        return matplotlib.colormaps[cmap]
    except (KeyError, TypeError):
        raise ValueError(
            f"cmap={cmap!r} is not a matplotlib colour map (e.g. 'turbo', 'viridis', 'jet')"
        ) from None


@functools.lru_cache(maxsize=None)
def _check_out(out) -> str:
    """``out`` as a path string, after checking that the picture can be written there:
    an extension Pillow writes RGB pictures in, an existing folder in which a file can be
    created (tried with a temporary file, removed at once) or an existing writable file.
    Nothing is left behind and an existing file is not changed."""
    if not isinstance(out, (str, bytes, os.PathLike)):
        raise ValueError(f"out must be a file path (str or os.PathLike), got {type(out).__name__}")
    path = os.fsdecode(os.fspath(out))
    problem = unwritable_reason(path)
    if problem is not None:
        raise ValueError(f"out={path!r}: {problem}")
    ext = os.path.splitext(path)[1].lower()
    if not pil_writes_rgb(ext):
        raise ValueError(f"out={path!r}: the file name must end in an image extension Pillow writes, "
                         f"e.g. .png (got {ext or 'no extension'!r})")
    return path


def check_options(*, out=None, panel: int = 512, dim: float = 0.3, heat_alpha: float = 0.5, cmap: str = "turbo",
                  scale: str = "rank", title: str | None = None) -> str | None:
    """Check `visualize`'s output and drawing options (front ends call it before loading a
    model); returns ``out`` as a path string (None stays None).

    ``out`` must end in an extension Pillow writes RGB pictures in and be writable: its
    folder exists and a file can be created in it (or ``out`` is an existing writable
    file); this is tried, leaving nothing behind. Raises ``ValueError`` naming the option.
    """
    _check_render_args(panel, dim, heat_alpha, cmap, scale)
    if title is not None and not isinstance(title, str):
        raise ValueError(f"title must be a string or None, got {type(title).__name__}")
    return None if out is None else _check_out(out)


# ---------------------------------------------------------------------------------------
# drawing
# ---------------------------------------------------------------------------------------


def _normalised_importance(importance: np.ndarray, shown_kept: np.ndarray, scale: str
                           ) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Importance mapped to [0, 1] over the kept, drawn tokens, and the importance values
    at the colour bar's bottom, middle and top.

    ``scale="rank"``: a kept token's colour is its rank among them (ties share the lower
    rank), so the bar's middle is their median (attention importance is heavy-tailed: on a
    linear scale most kept tokens would get the bottom colour). ``scale="linear"``:
    min-max. ±inf (ranked as the extremes by the selection) map to 0 / 1; with one kept
    token, or all equal, every kept token gets 1. Returns (``[n]`` float64, (lo, mid, hi));
    entries of tokens not kept are meaningless.
    """
    values = importance[shown_kept]
    if np.isnan(values).any():
        raise ValueError("tokens.importance holds NaN for a kept token")
    norm = np.ones_like(importance)
    if values.size == 0:
        return norm, (0.0, 0.0, 0.0)
    ordered = np.sort(values)
    lo, mid, hi = float(ordered[0]), float(np.median(ordered)), float(ordered[-1])
    if scale == "rank":
        if ordered.size > 1:
            norm[shown_kept] = np.searchsorted(ordered, values, side="left") / (ordered.size - 1)
        return norm, (lo, mid, hi)
    finite = ordered[np.isfinite(ordered)]
    flo, fhi = (float(finite[0]), float(finite[-1])) if finite.size else (0.0, 0.0)
    if fhi > flo:
        with np.errstate(invalid="ignore"):
            norm[shown_kept] = np.clip((values - flo) / (fhi - flo), 0.0, 1.0)
    norm[shown_kept & (importance == -np.inf)] = 0.0
    return norm, (lo, (lo + hi) / 2 if np.isfinite(lo + hi) else mid, hi)


def _token_map(boxes: np.ndarray, indices: np.ndarray, size: tuple[int, int], panel: tuple[int, int]) -> np.ndarray:
    """``[ph, pw]`` int64: the token (from ``indices``) whose box holds each panel pixel's
    centre, -1 where none does."""
    H, W = size
    pw, ph = panel
    sx, sy = pw / W, ph / H
    out = np.full((ph, pw), -1, dtype=np.int64)
    # pixel k's centre (k + 0.5) / s lies in [e0, e1)  <=>  ceil(e0 * s - 0.5) <= k < ceil(e1 * s - 0.5):
    # neighbouring boxes share their edge values, so the pixel sets tile without gaps or overlap.
    x = np.clip(np.ceil(boxes[indices][:, 0::2] * sx - 0.5), 0, pw).astype(np.int64)
    y = np.clip(np.ceil(boxes[indices][:, 1::2] * sy - 0.5), 0, ph).astype(np.int64)
    for t, (x0, x1), (y0, y1) in zip(indices, x, y):
        out[y0:y1, x0:x1] = t
    return out


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: a fixed bitmap font
        return ImageFont.load_default()


@dataclass(frozen=True)
class _Text:
    """One piece of text `render_kept` drew: ``draw.text(xy, text, font=_font(size), anchor=anchor)``."""

    xy: tuple[int, int]
    text: str
    size: int
    anchor: str


def _fit_text(xy: tuple[int, int], candidates: list[str], width: int, anchor: str) -> _Text:
    """The first of ``candidates`` (longest first) that fits ``width`` pixels, trying
    smaller fonts before cutting the last one short: small panels get short titles
    instead of titles running into their neighbours."""
    for size in (_FONT_SIZE, 12, 10):
        font = _font(size)
        for text in candidates:
            if font.getlength(text) <= width:
                return _Text(xy, text, size, anchor)
    text = candidates[-1]
    while text and font.getlength(text + "...") > width:
        text = text[:-1]
    return _Text(xy, text + "..." if text else "", size, anchor)


def _panel_title(label: str, name: str, count: ViewCount, image: int | None) -> list[str]:
    """Title candidates of a panel, longest first; ``image``: the 1-based image number that
    labels the row (its first panel, when the item has several images), else None."""
    n = f"{count.kept}/{count.total}"
    if image is None:
        return [f"{label}: {n} kept", f"{name}: {n} kept", f"{name} {n}"]
    return [f"image {image}, {label}: {n} kept", f"image {image}, {name}: {n} kept", f"image {image}: {n}",
            f"{image}: {n}"]


def _render(image: Any, tokens, *, panel: int = 512, dim: float = 0.3, heat_alpha: float = 0.5,
            cmap: str = "turbo", scale: str = "rank", colorbar: bool = True, heatmap: bool = True,
            title: str | None = None) -> tuple[Image.Image, _Geometry, list[_Text]]:
    """`render_kept`, also returning where it drew: its `_Geometry` and every `_Text`."""
    colours = _check_render_args(panel, dim, heat_alpha, cmap, scale)
    if title is not None and not isinstance(title, str):
        raise ValueError(f"title must be a string or None, got {type(title).__name__}")
    token_list, image_list = _as_list(tokens), _as_list(image)
    if not token_list:
        raise ValueError("tokens: an empty list (give the pruned ImageTokens of at least one image)")
    if len(image_list) != len(token_list):
        raise ValueError(f"image: {len(image_list)} image(s) for {len(token_list)} ImageTokens in tokens: "
                         "pass the item's images in order, one per ImageTokens")
    several = len(token_list) > 1
    # messages name image[i] / tokens[i] when there are several
    suffixes = [f"[{i}]" if several else "" for i in range(len(token_list))]
    images = [load_image(im, name=f"image{s}") for im, s in zip(image_list, suffixes)]
    for im, t, s in zip(images, token_list, suffixes):
        if tuple(t.layout.size) != (im.height, im.width):
            raise ValueError(
                f"image{s} is {im.width}x{im.height} (WxH) but tokens{s}.layout is for "
                f"{t.layout.size[1]}x{t.layout.size[0]}: pass the image the tokens came from"
            )
    kept = [_kept_mask(t, name=f"tokens{s}") for t, s in zip(token_list, suffixes)]
    kinds = [t.layout.kinds().numpy() for t in token_list]
    # the item's images were pruned jointly: one colour scale over all their kept tokens
    importance = np.concatenate([t.importance.detach().cpu().numpy().astype(np.float64) for t in token_list])
    shown = np.concatenate([k & (c != NEWLINE) for k, c in zip(kept, kinds)])
    norm_all, labels = _normalised_importance(importance, shown, scale)
    norm = np.split(norm_all, np.cumsum([t.num_tokens for t in token_list])[:-1])

    geometry = _geometry([t.layout.size for t in token_list], [len(_views(t.layout)) for t in token_list],
                         panel=panel, colorbar=colorbar, title=title is not None)
    width, _ = geometry.size
    canvas = Image.new("RGB", geometry.size, _BACKGROUND)
    texts = []
    if title is not None:
        texts.append(_fit_text((MARGIN, MARGIN + HEADER_HEIGHT // 2), [title], width - 2 * MARGIN, "lm"))
    tint = np.asarray(KEPT_TINT, dtype=np.float64)
    for i, (im, t) in enumerate(zip(images, token_list)):
        layout, boxes = t.layout, t.layout.boxes().numpy()
        counts = {c.name: c for c in view_counts(t)}
        (x0, y0, x1, y1), *_ = geometry.panels[i]
        pw, ph = x1 - x0, y1 - y0
        picture = np.asarray(im.resize((pw, ph), Image.Resampling.BICUBIC), dtype=np.float64)
        grey = picture @ _LUMA
        for v, ((name, kind), (x, y, _, _)) in enumerate(zip(_views(layout), geometry.panels[i])):
            owner = _token_map(boxes, np.flatnonzero(kinds[i] == kind), layout.size, (pw, ph))
            covered = owner >= 0
            is_kept = covered & kept[i][np.maximum(owner, 0)]
            is_pruned = covered & ~is_kept
            out = picture.copy()
            out[is_pruned] = (dim * grey[is_pruned])[:, None]
            colour = colours(norm[i][owner[is_kept]])[:, :3] * 255.0 if heatmap else tint
            out[is_kept] = (1.0 - heat_alpha) * picture[is_kept] + heat_alpha * colour
            canvas.paste(Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8)), (x, y))
            label = {"base": "base view", "view": "view (padded square)"}.get(name)
            if label is None:
                rows, cols = layout.grid
                label = f"anyres grid {rows}x{cols} -> {layout.packed[0]}x{layout.packed[1]}"
            number = i + 1 if several and v == 0 else None
            texts.append(_fit_text((x, y - TITLE_HEIGHT // 2), _panel_title(label, name, counts[name], number),
                                   pw, "lm"))
    if geometry.column is not None:
        if heatmap:
            texts += _draw_colorbar(canvas, colours, labels, geometry.column)
        else:
            texts += _draw_legend(canvas, geometry.column, dim=dim, heat_alpha=heat_alpha)
    draw = ImageDraw.Draw(canvas)
    for text in texts:
        draw.text(text.xy, text.text, fill=_TEXT, font=_font(text.size), anchor=text.anchor)
    return canvas, geometry, texts


def _column_text_width(column: tuple[int, int, int, int], indent: int) -> int:
    """Pixels a text ``indent`` pixels into ``column`` may take: to the figure's right edge
    but for 2 pixels (the column is narrow; the right margin is free)."""
    return column[2] - column[0] + MARGIN - 2 - indent


def _draw_colorbar(canvas, colours, labels: tuple[float, float, float], column) -> list[_Text]:
    """A vertical bar down ``column``, high importance at the top; returns its texts: the
    importance at its top, middle and bottom, and "importance" in the title row above.
    The column is at least ``_MIN_BAR`` long, so the three labels never meet."""
    x, y0, _, y1 = column
    length = y1 - y0
    ramp = colours(np.linspace(1.0, 0.0, length))[:, :3] * 255.0
    canvas.paste(Image.fromarray(np.repeat(np.rint(ramp).astype(np.uint8)[:, None, :], _BAR, axis=1)), (x, y0))
    lo, mid, hi = labels
    indent = _BAR + _LABEL_PAD
    fit = _column_text_width(column, indent)
    return [
        _fit_text((x, y0 - TITLE_HEIGHT // 2), ["importance", "imp."], _column_text_width(column, 0), "lm"),
        _fit_text((x + indent, y0), [f"{hi:.3g}"], fit, "lt"),
        _fit_text((x + indent, y0 + length // 2), [f"{mid:.3g}"], fit, "lm"),
        _fit_text((x + indent, y1), [f"{lo:.3g}"], fit, "lb"),
    ]


def _draw_legend(canvas, column, *, dim: float, heat_alpha: float) -> list[_Text]:
    """Without a heat map: swatches of a kept and a pruned region (of mid grey) down
    ``column``; returns the texts: "kept", "pruned" and "no heat map" in the title row."""
    x, y0, _, _ = column
    draw = ImageDraw.Draw(canvas)
    grey = 128.0
    swatches = [("kept", (1.0 - heat_alpha) * grey + heat_alpha * np.asarray(KEPT_TINT, dtype=np.float64)),
                ("pruned", np.full(3, dim * grey))]
    indent = _BAR + _LABEL_PAD
    texts = [_fit_text((x, y0 - TITLE_HEIGHT // 2), ["no heat map", "no heat", "kept"],
                       _column_text_width(column, 0), "lm")]
    for k, (label, colour) in enumerate(swatches):
        y = y0 + k * _SWATCH_STEP
        draw.rectangle((x, y, x + _BAR - 1, y + _BAR - 1), fill=tuple(int(round(c)) for c in colour))
        texts.append(_fit_text((x + indent, y + _BAR // 2), [label], _column_text_width(column, indent), "lm"))
    return texts


def render_kept(image: Any, tokens, *, panel: int = 512, dim: float = 0.3, heat_alpha: float = 0.5,
                cmap: str = "turbo", scale: str = "rank", colorbar: bool = True, heatmap: bool = True,
                title: str | None = None) -> Image.Image:
    """Draw which visual tokens of an item's image(s) were kept: one row per image, one
    panel per view.

    Args:
        image: one image, or a list of the item's images in prompt order (anything
            `dvtp.vlm.images.load_image` takes); image ``i``'s size must be
            ``tokens[i].layout.size``.
        tokens: the pruned `dvtp.vlm.ImageTokens` of that image, or a list with one per
            image (``kept``: int64 ``[K_i]``, ``importance``: float32 ``[num_tokens_i]``),
            e.g. ``out.images[0]`` (all of item 0's images) or ``out.images[0][0]`` of
            ``model.answer(..., pruning=...)``.
        panel: the longer side of each panel in pixels (>= 16); no side is made shorter
            than ``min(panel, MIN_PANEL_SIDE)`` (the image is stretched instead).
        dim: brightness factor of pruned regions (their luma times ``dim``, grey).
        heat_alpha: weight of the tint over kept regions (0 = no tint).
        cmap: a matplotlib colour-map name; pick one without grey colours (the default
            "turbo", "viridis", "jet") so that kept regions never look pruned.
        scale: "rank" (colour = rank among the kept tokens of all the images; the bar's
            middle label is their median) or "linear" (min-max over those tokens).
        colorbar: draw the right-hand column: the importance scale, or without a heat map
            the kept / pruned legend.
        heatmap: tint kept regions by their importance (True) or all with `KEPT_TINT`
            (False: for policies whose importance ranks nothing, "uniform" and "random");
            ``cmap`` and ``scale`` are then unused.
        title: a header line above the panels (None: no header).

    Returns:
        An RGB ``PIL.Image`` of exactly ``figure_size([sizes], [views], panel=panel,
        colorbar=colorbar, title=title is not None)`` pixels, e.g. 1144 x 432 for one
        1024 x 768 image (2 views) at the default ``panel=512`` without a title. Image
        ``i``'s row starts below the previous row's panels and a ``GAP``; its panel
        ``v`` has its top-left corner at ``(MARGIN + v * (pw_i + GAP), row top +
        TITLE_HEIGHT)``, the first row's top being ``MARGIN`` (+ ``HEADER_HEIGHT`` with a
        title). With several images, each row's first panel title starts "image i".
    """
    return _render(image, tokens, panel=panel, dim=dim, heat_alpha=heat_alpha, cmap=cmap, scale=scale,
                   colorbar=colorbar, heatmap=heatmap, title=title)[0]


def visualize(model, image: Any, question: str, *, keep_ratio: float, out: str | os.PathLike | None = None,
              policy: str = "redvtp", backend: str | None = None, panel: int = 512, dim: float = 0.3,
              heat_alpha: float = 0.5, cmap: str = "turbo", scale: str = "rank", colorbar: bool = True,
              title: str | None = None, **generation_kwargs):
    """Answer ``question`` about ``image`` (one image, or several in one prompt) with
    pruning and draw what was kept.

    Every argument (images, pruning settings, drawing options, that ``out`` can be
    written, the generation arguments) is checked before the model runs.

    Args:
        model: a LLaDA-V (`dvtp.load`, `dvtp.vlm.tiny_llada_v`).
        image: one image (PIL image, path, uint8 array), or a list of them for one prompt
            with several images (as ``model.answer`` takes them); one row of panels each.
        question: the question.
        keep_ratio, policy, backend: the `dvtp.PruningConfig`. A policy that needs no
            attention scores ("uniform", "random") ranks nothing, so its picture has no
            heat map: kept regions get one tint and a kept / pruned legend replaces the
            colour bar (``render_kept(..., heatmap=False)``).
        out: where to save the picture (format from the extension), or None.
        panel, dim, heat_alpha, cmap, scale, colorbar: as in `render_kept`.
        title: the header line, or None; ``{kept}`` and ``{total}`` in it become the
            item's kept and total visual-token counts (all its images).
        generation_kwargs: `dvtp.vlm.answer`'s (``gen_length``, ``steps``, ``progress``, ...).

    Returns:
        ``(picture, answer_output)``: the `render_kept` image and the `AnswerOutput`
        (``answer_output.images[0]``: the per-image `ImageTokens`).
    """
    from .config import PruningConfig

    several = isinstance(image, (list, tuple))
    if several and not image:
        raise ValueError("image: an empty list (give one image or a list of images)")
    images = [load_image(im, name=f"image[{i}]" if several else "image") for i, im in enumerate(_as_list(image))]
    pruning = PruningConfig(keep_ratio=keep_ratio, policy=policy, backend=backend)
    path = check_options(out=out, panel=panel, dim=dim, heat_alpha=heat_alpha, cmap=cmap, scale=scale, title=title)
    # a list of one image is that image alone in its prompt (anyres), as model.answer reads it
    result = model.answer(images, question, pruning=pruning, **generation_kwargs)
    tokens = result.images[0]
    if title is not None:
        kept, total = sum(len(t.kept) for t in tokens), sum(t.num_tokens for t in tokens)
        title = title.replace("{kept}", str(kept)).replace("{total}", str(total))
    picture = render_kept(images, tokens, panel=panel, dim=dim, heat_alpha=heat_alpha, cmap=cmap, scale=scale,
                          colorbar=colorbar, heatmap=pruning.needs_scores, title=title)
    if path is not None:
        picture.save(path)
    return picture, result
