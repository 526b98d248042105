"""LLaDA-V's visual-token layout: how one image's views become a run of visual tokens.

Every view (a 384x384 crop) gives a 27 x 27 feature map (SigLIP patch 14). LLaDA-V
(``mm_patch_merge_type="spatial_unpad"``, ``image_aspect_ratio="anyres_max_4"``) packs
them as follows (docs/llada_v.md has the full statement):

* an image alone in its prompt ("anyres") has a base view (the whole image squashed to
  384x384) and a ``rows x cols`` grid of views of the padded, resized image. Its tokens
  are the base view's 729 features (row-major), then the grid's feature map
  ``[rows*27, cols*27]`` with the padding rows/columns removed ("unpad"), bilinearly
  shrunk when it holds more than ``1.1**2 * max_views`` views' worth of features, with
  one ``image_newline`` token appended to every row;
* an image that shares its prompt with others ("pad" mode) has one view: 729 features
  and one newline token.

transformers' LLaVA-OneVision implements the same packing, except that its unpad rounds
``round(x, 7)`` where LLaDA-V truncates ``int(x)``; for a few image sizes (e.g. 423x47,
820x369, 1375x750 as height x width) that changes the token count. `ImageLayout` follows
LLaDA-V, and `pack_image` builds the features from it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["ImageLayout", "image_layout", "pack_image", "BASE", "GRID", "NEWLINE"]

#: token kinds in `ImageLayout.kinds`
BASE, GRID, NEWLINE = 0, 1, 2


@dataclass(frozen=True)
class ImageLayout:
    """Where each visual token of one image comes from.

    Attributes:
        size: the original image's ``(height, width)`` in pixels.
        anyres: True = base view + grid (image alone in its prompt); False = one
            padded-square view (several images in one prompt).
        side: feature-map side of one view (27 for SigLIP 384/14).
        view: side of one view in pixels (384); places grid cells on the original image.
        grid: ``(rows, cols)`` of anyres views, or None.
        unpadded: ``(h, w)`` of the grid feature map after unpad (None unless anyres).
        packed: ``(h, w)`` of the grid feature map after the optional shrink, i.e. the
            rows and columns of grid tokens (a newline follows each of the h rows).
    """

    size: tuple[int, int]
    anyres: bool
    side: int
    view: int = 384
    grid: tuple[int, int] | None = None
    unpadded: tuple[int, int] | None = None
    packed: tuple[int, int] | None = None

    @property
    def num_base(self) -> int:
        return self.side * self.side

    @property
    def num_tokens(self) -> int:
        """Visual tokens of this image, newline tokens included."""
        if not self.anyres:
            return self.num_base + 1
        h, w = self.packed
        return self.num_base + h * (w + 1)

    def kinds(self) -> torch.Tensor:
        """``[num_tokens]`` int8: `BASE`, `GRID` or `NEWLINE` per token, in sequence order."""
        if not self.anyres:
            kinds = torch.full((self.num_tokens,), BASE, dtype=torch.int8)
            kinds[-1] = NEWLINE
            return kinds
        h, w = self.packed
        grid = torch.full((h, w + 1), GRID, dtype=torch.int8)
        grid[:, w] = NEWLINE
        return torch.cat([torch.full((self.num_base,), BASE, dtype=torch.int8), grid.flatten()])

    def boxes(self) -> torch.Tensor:
        """``[num_tokens, 4]`` float64 ``(x0, y0, x1, y1)``: the region of the ORIGINAL image,
        in pixels, that each token's feature cell covers (clipped to the image; a cell over
        padding only becomes an empty box on the border); NaN rows for newline tokens."""
        H, W = self.size
        s = self.side
        out = torch.full((self.num_tokens, 4), float("nan"), dtype=torch.float64)
        cells = torch.arange(s + 1, dtype=torch.float64)
        if self.anyres:  # the whole image squashed onto the view
            out[: s * s] = _boxes(cells * H / s, cells * W / s)
        else:  # pasted centred on a square of side L = max(H, W), then resized
            L = max(H, W)
            out[: s * s] = _boxes(cells * L / s - (L - H) // 2, cells * L / s - (L - W) // 2)
        if self.anyres:
            rows, cols = self.grid
            (uh, uw), (ph, pw) = self.unpadded, self.packed
            # LLaDA-V's resize-and-pad: the image resized to (nh, nw) sits centred on a
            # canvas of rows x cols views of `tile` pixels; a feature cell is tile/s pixels.
            tile = self.view
            ch, cw = rows * tile, cols * tile
            if cw / W < ch / H:
                nw, nh = cw, min(math.ceil(H * cw / W), ch)
            else:
                nh, nw = ch, min(math.ceil(W * ch / H), cw)
            oy, ox = (ch - nh) // 2, (cw - nw) // 2
            y_off, x_off = (rows * s - uh) // 2, (cols * s - uw) // 2  # unpad removed these
            # packed cell i spans unpadded cells [i*uh/ph, (i+1)*uh/ph) (the bilinear shrink)
            ys = (torch.arange(ph + 1, dtype=torch.float64) * uh / ph + y_off) * tile / s
            xs = (torch.arange(pw + 1, dtype=torch.float64) * uw / pw + x_off) * tile / s
            idx = self.num_base + torch.arange(ph).unsqueeze(1) * (pw + 1) + torch.arange(pw).unsqueeze(0)
            out[idx.flatten()] = _boxes((ys - oy) * H / nh, (xs - ox) * W / nw)
        out[:, 0::2] = out[:, 0::2].clamp(0, W)
        out[:, 1::2] = out[:, 1::2].clamp(0, H)
        return out


def _boxes(y_edges: torch.Tensor, x_edges: torch.Tensor) -> torch.Tensor:
    """Row-major ``[len(y)-1 * len(x)-1, 4]`` boxes of the cells between consecutive edges."""
    y0, y1 = y_edges[:-1], y_edges[1:]
    x0, x1 = x_edges[:-1], x_edges[1:]
    n, m = len(y0), len(x0)
    return torch.stack(
        [x0.expand(n, m), y0.unsqueeze(1).expand(n, m), x1.expand(n, m), y1.unsqueeze(1).expand(n, m)], dim=-1
    ).reshape(-1, 4)


def image_layout(size, grid, *, anyres: bool, side: int = 27, view: int = 384, max_views: int = 4) -> ImageLayout:
    """The `ImageLayout` of an image of ``size = (height, width)`` pixels (views of ``view``
    pixels, ``side x side`` features each).

    ``grid`` is the ``(rows, cols)`` of its anyres views (from the best-fit resolution);
    ignored when ``anyres`` is False.
    """
    H, W = int(size[0]), int(size[1])
    if H < 1 or W < 1:
        raise ValueError(f"image size must be positive (height, width), got {size!r}")
    if not anyres:
        return ImageLayout(size=(H, W), anyres=False, side=side, view=view)
    rows, cols = int(grid[0]), int(grid[1])
    ch, cw = rows * side, cols * side
    # LLaDA-V's unpad: the axis the image did not fill loses its padding, truncating int().
    if W / H > cw / ch:
        new_h = int(H * (cw / W))
        pad = (ch - new_h) // 2
        uh, uw = ch - 2 * pad, cw
    else:
        new_w = int(W * (ch / H))
        pad = (cw - new_w) // 2
        uh, uw = ch, cw - 2 * pad
    times = math.sqrt(uh * uw / (max_views * side**2))
    ph, pw = (int(uh // times), int(uw // times)) if times > 1.1 else (uh, uw)
    return ImageLayout(
        size=(H, W), anyres=True, side=side, view=view, grid=(rows, cols), unpadded=(uh, uw), packed=(ph, pw)
    )


def pack_image(features: torch.Tensor, layout: ImageLayout, newline: torch.Tensor) -> torch.Tensor:
    """Pack one image's projected view features into its visual-token run.

    Args:
        features: ``[V, side*side, D]`` projected features of the image's views (base view
            first, then the grid row-major; V = 1 when not anyres).
        layout: the image's `ImageLayout`.
        newline: ``[D]`` the model's ``image_newline`` parameter.
    Returns:
        ``[layout.num_tokens, D]``.
    """
    s = layout.side
    D = features.shape[-1]
    newline = newline.to(features.dtype)
    if not layout.anyres:
        if features.shape[0] != 1:
            raise ValueError(f"a padded-square image has one view, got {features.shape[0]}")
        return torch.cat([features[0], newline[None]], dim=0)
    rows, cols = layout.grid
    if features.shape[0] != 1 + rows * cols:
        raise ValueError(f"an anyres image with a {rows}x{cols} grid has {1 + rows * cols} views, got {features.shape[0]}")
    grid = features[1:].view(rows, cols, s, s, D).permute(4, 0, 2, 1, 3).reshape(D, rows * s, cols * s)
    uh, uw = layout.unpadded
    top = (rows * s - uh) // 2
    left = (cols * s - uw) // 2
    grid = grid[:, top : top + uh, left : left + uw]
    if layout.packed != layout.unpadded:
        grid = F.interpolate(grid[None], list(layout.packed), mode="bilinear")[0]
    ph, pw = layout.packed
    grid = torch.cat([grid, newline.view(D, 1, 1).expand(D, ph, 1)], dim=2)
    return torch.cat([features[0], grid.reshape(D, -1).t()], dim=0)
