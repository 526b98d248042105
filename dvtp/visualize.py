"""A picture of which visual tokens pruning kept (``dvtp visualize``).

`render_kept` draws one image's `dvtp.vlm.ImageTokens` after pruning: one panel per view
of the image (the base view, then the anyres grid; an image that shared its prompt with
others has one padded-square view), each showing the original image with

* every pruned token's region dimmed to a dark grey (``dim`` x its luma, R = G = B), and
* every kept token's region tinted by a heat map of its ``importance`` (``cmap``, blended
  with weight ``heat_alpha``): by default the token's rank among the kept tokens of the
  whole image, so both panels share one colour scale (the colour bar on the right gives
  the importance at its ends and middle).

A token's region is its box from `ImageLayout.boxes` (original-image pixels): the base
view's 27 x 27 cells cover the whole image (the view is the image squashed to 384 x 384),
the grid's unpadded, possibly shrunk cells cover the image through the anyres crops.
Newline tokens have no region and are not drawn (the panel titles count them apart).
A panel pixel belongs to the token whose box holds the pixel's centre, so each token
covers its box's area to within one pixel row and column; pixels no token of the view
covers (LLaDA-V's unpad truncates, so the grid of some images misses a few border rows)
are drawn as they are.

`visualize` runs the model with pruning and renders its first image.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .vlm.images import load_image
from .vlm.packing import BASE, GRID, NEWLINE

__all__ = ["render_kept", "visualize", "view_counts", "figure_size", "check_options", "ViewCount",
           "MARGIN", "GAP", "TITLE_HEIGHT", "HEADER_HEIGHT", "COLORBAR_WIDTH"]

#: Figure geometry in pixels (see `figure_size`).
MARGIN = 12
GAP = 12
TITLE_HEIGHT = 24
HEADER_HEIGHT = 24
COLORBAR_WIDTH = 84  # GAP + a 16-pixel bar + 56 pixels of labels
_BAR = 16
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


def _kept_mask(tokens) -> np.ndarray:
    """``[num_tokens]`` bool: True where the token was kept (checks ``tokens`` first)."""
    n = tokens.num_tokens
    if tokens.layout.num_tokens != n:
        raise ValueError(
            f"tokens: the layout has {tokens.layout.num_tokens} tokens but the span holds {n}"
        )
    if tokens.kept is None or tokens.importance is None:
        raise ValueError(
            "tokens: this image was not pruned (kept / importance are None); answer with "
            "pruning=dvtp.PruningConfig(keep_ratio=...) to get a picture of what was kept"
        )
    kept = np.asarray(tokens.kept, dtype=np.int64).reshape(-1)
    if kept.size and (kept.min() < 0 or kept.max() >= n):
        raise ValueError(f"tokens.kept must hold indices in [0, {n}), got {kept.min()}..{kept.max()}")
    importance = tokens.importance
    if tuple(importance.shape) != (n,):
        raise ValueError(f"tokens.importance must have shape [{n}], got {list(importance.shape)}")
    mask = np.zeros(n, dtype=bool)
    mask[kept] = True
    return mask


def _views(layout) -> list[tuple[str, int]]:
    """``(name, token kind)`` of the panels of ``layout``, in drawing order."""
    if not layout.anyres:
        return [("view", BASE)]
    return [("base", BASE), ("grid", GRID)]


def view_counts(tokens) -> list[ViewCount]:
    """Kept / total tokens per view of ``tokens`` (a pruned `ImageTokens`), then the
    newline tokens (``name="newline"``)."""
    kept = _kept_mask(tokens)
    kinds = tokens.layout.kinds().numpy()
    out = [ViewCount(name, int(kept[kinds == kind].sum()), int((kinds == kind).sum()))
           for name, kind in _views(tokens.layout)]
    out.append(ViewCount("newline", int(kept[kinds == NEWLINE].sum()), int((kinds == NEWLINE).sum())))
    return out


def _panel_size(size: tuple[int, int], panel: int) -> tuple[int, int]:
    """``(width, height)`` of a panel: the image scaled so its longer side is ``panel``."""
    H, W = size
    scale = panel / max(H, W)
    return max(1, round(W * scale)), max(1, round(H * scale))


def figure_size(image_size: tuple[int, int], views: int, *, panel: int = 512,
                colorbar: bool = True, title: bool = False) -> tuple[int, int]:
    """``(width, height)`` in pixels of what `render_kept` draws for an image of
    ``image_size = (height, width)`` with ``views`` panels:

    * a panel is ``(pw, ph) = (round(W * s), round(H * s))`` with ``s = panel / max(H, W)``;
    * width ``= 2 * MARGIN + views * pw + (views - 1) * GAP + COLORBAR_WIDTH`` (colour bar);
    * height ``= 2 * MARGIN + HEADER_HEIGHT`` (with a title) ``+ TITLE_HEIGHT + ph``.
    """
    pw, ph = _panel_size(image_size, panel)
    width = 2 * MARGIN + views * pw + (views - 1) * GAP + (COLORBAR_WIDTH if colorbar else 0)
    height = 2 * MARGIN + (HEADER_HEIGHT if title else 0) + TITLE_HEIGHT + ph
    return width, height


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


def _fit_text(draw, xy: tuple[int, int], candidates: list[str], width: int, anchor: str) -> None:
    """Draw the first of ``candidates`` (longest first) that fits ``width`` pixels, trying
    smaller fonts before cutting the last one short: small panels get short titles
    instead of titles running into their neighbours."""
    for size in (_FONT_SIZE, 12, 10):
        font = _font(size)
        for text in candidates:
            if draw.textlength(text, font=font) <= width:
                draw.text(xy, text, fill=_TEXT, font=font, anchor=anchor)
                return
    text = candidates[-1]
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    draw.text(xy, text + "..." if text else "", fill=_TEXT, font=font, anchor=anchor)


def render_kept(image: Any, tokens, *, panel: int = 512, dim: float = 0.3, heat_alpha: float = 0.5,
                cmap: str = "turbo", scale: str = "rank", colorbar: bool = True,
                title: str | None = None) -> Image.Image:
    """Draw which of ``image``'s visual tokens were kept, one panel per view.

    Args:
        image: the image the tokens came from (anything `dvtp.vlm.images.load_image`
            takes); its size must be ``tokens.layout.size``.
        tokens: a pruned `dvtp.vlm.ImageTokens` (``kept``: int64 ``[K]``,
            ``importance``: float32 ``[num_tokens]``), e.g. ``out.images[0][0]`` of
            ``model.answer(..., pruning=...)``.
        panel: the longer side of each panel in pixels (>= 16).
        dim: brightness factor of pruned regions (their luma times ``dim``, grey).
        heat_alpha: weight of the heat-map colour over kept regions (0 = no tint).
        cmap: a matplotlib colour-map name; pick one without grey colours (the default
            "turbo", "viridis", "jet") so that kept regions never look pruned.
        scale: "rank" (colour = rank among the kept tokens; the bar's middle label is
            their median) or "linear" (min-max over the kept tokens).
        colorbar: draw the importance scale at the right.
        title: a header line above the panels (None: no header).

    Returns:
        An RGB ``PIL.Image`` of exactly ``figure_size((H, W), views, panel=panel,
        colorbar=colorbar, title=title is not None)`` pixels, e.g. 1144 x 432 for a
        1024 x 768 image (2 views) at the default ``panel=512`` without a title.
        Panel ``i`` has its top-left corner at ``(MARGIN + i * (pw + GAP), MARGIN +
        HEADER_HEIGHT (with a title) + TITLE_HEIGHT)``.
    """
    colours = _check_render_args(panel, dim, heat_alpha, cmap, scale)
    if title is not None and not isinstance(title, str):
        raise ValueError(f"title must be a string or None, got {type(title).__name__}")
    image = load_image(image, name="image")
    layout = tokens.layout
    if tuple(layout.size) != (image.height, image.width):
        raise ValueError(
            f"image is {image.width}x{image.height} (WxH) but tokens.layout is for "
            f"{layout.size[1]}x{layout.size[0]}: pass the image the tokens came from"
        )
    kept = _kept_mask(tokens)
    kinds = layout.kinds().numpy()
    boxes = layout.boxes().numpy()
    importance = tokens.importance.detach().cpu().numpy().astype(np.float64)
    norm, labels = _normalised_importance(importance, kept & (kinds != NEWLINE), scale)

    views = _views(layout)
    counts = {c.name: c for c in view_counts(tokens)}
    pw, ph = _panel_size(layout.size, panel)
    width, height = figure_size(layout.size, len(views), panel=panel, colorbar=colorbar,
                                title=title is not None)
    canvas = Image.new("RGB", (width, height), _BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    font = _font(_FONT_SIZE)
    top = MARGIN
    if title is not None:
        _fit_text(draw, (MARGIN, top + HEADER_HEIGHT // 2), [title], width - 2 * MARGIN, "lm")
        top += HEADER_HEIGHT
    picture = np.asarray(image.resize((pw, ph), Image.Resampling.BICUBIC), dtype=np.float64)
    grey = picture @ _LUMA
    for i, (name, kind) in enumerate(views):
        owner = _token_map(boxes, np.flatnonzero(kinds == kind), layout.size, (pw, ph))
        covered = owner >= 0
        is_kept = covered & kept[np.maximum(owner, 0)]
        is_pruned = covered & ~is_kept
        out = picture.copy()
        out[is_pruned] = (dim * grey[is_pruned])[:, None]
        heat = colours(norm[owner[is_kept]])[:, :3] * 255.0
        out[is_kept] = (1.0 - heat_alpha) * picture[is_kept] + heat_alpha * heat
        x = MARGIN + i * (pw + GAP)
        canvas.paste(Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8)), (x, top + TITLE_HEIGHT))
        c = counts[name]
        label = {"base": "base view", "view": "view (padded square)"}.get(name)
        if label is None:
            rows, cols = layout.grid
            label = f"anyres grid {rows}x{cols} -> {layout.packed[0]}x{layout.packed[1]}"
        _fit_text(draw, (x, top + TITLE_HEIGHT // 2), [f"{label}: {c.kept}/{c.total} kept",
                  f"{name}: {c.kept}/{c.total} kept", f"{name} {c.kept}/{c.total}"], pw, "lm")
    if colorbar:
        _draw_colorbar(canvas, draw, font, colours, labels,
                       x=MARGIN + len(views) * pw + (len(views) - 1) * GAP + GAP,
                       y=top + TITLE_HEIGHT, length=ph)
    return canvas


def _draw_colorbar(canvas, draw, font, colours, labels: tuple[float, float, float], *, x: int, y: int,
                   length: int) -> None:
    """A vertical bar, high importance at the top, labelled with the importance at its
    bottom, middle and top; "importance" in the panel-title row above it."""
    ramp = colours(np.linspace(1.0, 0.0, length))[:, :3] * 255.0
    bar = np.repeat(np.rint(ramp).astype(np.uint8)[:, None, :], _BAR, axis=1)
    canvas.paste(Image.fromarray(bar), (x, y))
    lo, mid, hi = labels
    # the label may use the right margin: the bar's column is COLORBAR_WIDTH - GAP wide
    _fit_text(draw, (x, y - TITLE_HEIGHT // 2), ["importance", "imp."], COLORBAR_WIDTH - GAP + MARGIN - 2, "lm")
    draw.text((x + _BAR + 4, y), f"{hi:.3g}", fill=_TEXT, font=font, anchor="lt")
    draw.text((x + _BAR + 4, y + length // 2), f"{mid:.3g}", fill=_TEXT, font=font, anchor="lm")
    draw.text((x + _BAR + 4, y + length), f"{lo:.3g}", fill=_TEXT, font=font, anchor="lb")


def check_options(*, out=None, panel: int = 512, dim: float = 0.3, heat_alpha: float = 0.5, cmap: str = "turbo",
                  scale: str = "rank", title: str | None = None) -> str | None:
    """Check `visualize`'s output and drawing options (front ends call it before loading a
    model); returns ``out`` as a path string (None stays None). ``out`` must end in an
    extension Pillow writes and lie in an existing folder."""
    _check_render_args(panel, dim, heat_alpha, cmap, scale)
    if title is not None and not isinstance(title, str):
        raise ValueError(f"title must be a string or None, got {type(title).__name__}")
    if out is None:
        return None
    path = os.fspath(out)
    ext = os.path.splitext(path)[1].lower()
    if ext not in Image.registered_extensions():
        raise ValueError(f"out={path!r}: the file name must end in an image extension Pillow writes, e.g. .png")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise ValueError(f"out={path!r}: the folder {parent!r} does not exist")
    return path


def visualize(model, image: Any, question: str, *, keep_ratio: float, out: str | os.PathLike | None = None,
              policy: str = "redvtp", backend: str | None = None, panel: int = 512, dim: float = 0.3,
              heat_alpha: float = 0.5, cmap: str = "turbo", scale: str = "rank", colorbar: bool = True,
              title: str | None = None, **generation_kwargs):
    """Answer ``question`` about ``image`` with pruning and draw what was kept.

    Every argument (image, pruning settings, drawing options, ``out``'s folder and
    extension, the generation arguments) is checked before the model runs.

    Args:
        model: a LLaDA-V (`dvtp.load`, `dvtp.vlm.tiny_llada_v`).
        image: one image (PIL image, path, uint8 array); shown at its own aspect ratio.
        question: the question.
        keep_ratio, policy, backend: the `dvtp.PruningConfig`.
        out: where to save the picture (format from the extension), or None.
        panel, dim, heat_alpha, cmap, scale, colorbar: as in `render_kept`.
        title: the header line, or None; ``{kept}`` and ``{total}`` in it become the
            image's kept and total visual-token counts.
        generation_kwargs: `dvtp.vlm.answer`'s (``gen_length``, ``steps``, ...).

    Returns:
        ``(picture, answer_output)``: the `render_kept` image and the `AnswerOutput`.
    """
    from .config import PruningConfig

    image = load_image(image, name="image")
    pruning = PruningConfig(keep_ratio=keep_ratio, policy=policy, backend=backend)
    path = check_options(out=out, panel=panel, dim=dim, heat_alpha=heat_alpha, cmap=cmap, scale=scale, title=title)
    result = model.answer(image, question, pruning=pruning, **generation_kwargs)
    tokens = result.images[0][0]
    if title is not None:
        title = title.replace("{kept}", str(len(tokens.kept))).replace("{total}", str(tokens.num_tokens))
    picture = render_kept(image, tokens, panel=panel, dim=dim, heat_alpha=heat_alpha,
                          cmap=cmap, scale=scale, colorbar=colorbar, title=title)
    if path is not None:
        picture.save(path)
    return picture, result
