"""Loading and validating the images LLaDA-V is given.

:func:`load_image` turns whatever a caller passes as an image (a PIL image, a local path, the
bytes of an encoded image file or a binary file object, a uint8 array or tensor) into an
8-bit RGB ``PIL.Image.Image``, or raises a ``ValueError`` / ``TypeError`` that names the
argument and says what is accepted. Failures of PIL (missing file, truncated or corrupt
data) are reported as ``ValueError`` with PIL's own message included, not as a raw PIL
traceback.

- **Local data only.** dvtp never touches the network: a URL (``http://``, ``https://``,
  ``s3://``, ...) or a Hugging Face Hub reference is refused with a message saying so;
  download the file first and pass its path (or its bytes).

Deliberate behaviours, matching how LLaDA-V is used:

- **No EXIF rotation.** A JPEG whose EXIF orientation says "rotate 90°" is used as stored:
  LLaDA-V's pipeline (``Image.open(...).convert("RGB")``) never applies
  ``ImageOps.exif_transpose``. Rotate it yourself first if you want the displayed orientation.
- **Alpha is dropped, not composited.** RGBA / LA / PA / palette-with-transparency images
  keep their colour channels and lose alpha (PIL's ``convert("RGB")``). LLaDA-V's evaluation
  converts to RGB when it loads an image, as done here; only a non-RGB image handed straight
  to its image processor would be resized *before* its alpha is dropped (and a palette / "1"
  image resized with NEAREST, PIL's default for those modes), which can make semi-transparent
  or palette pixels differ slightly from the output here.
- **8-bit only.** 16/32-bit integer and float modes (``I``, ``I;16*``, ``F``) are rejected:
  the processor, like LLaDA-V's, works on 8-bit RGB, and there is no single right way to map
  a wider range to 0..255.
"""

from __future__ import annotations

import io
import os
import re
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

__all__ = ["load_image", "synthetic_photo"]

_ACCEPTED = (
    "a PIL.Image.Image, a local file path (str or os.PathLike), the bytes of an encoded image file "
    "(bytes, bytearray, memoryview, or a binary file object such as io.BytesIO or open(path, 'rb')), "
    "or a uint8 numpy array / torch tensor shaped [H, W], [H, W, 1], [H, W, 3] or [H, W, 4] "
    "(channels last)"
)

# "scheme://..." (http, https, s3, gs, hf, ftp, file, ...) and "data:" URIs
_URL = re.compile(r"^(?:[A-Za-z][A-Za-z0-9+.\-]*://|data:)")
# what a Hugging Face Hub reference looks like: "owner/name" or "owner/name/file.jpg",
# relative, no "./" or "../"
_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+(?:/[^/]+)*$")
_LOCAL_ONLY = (
    "dvtp reads local images only and never fetches URLs or hub images (no network access): "
    "download the file first and pass its local path (or its bytes)"
)


def load_image(image: Any, *, name: str = "images[0]") -> Image.Image:
    """Return ``image`` as an 8-bit RGB ``PIL.Image.Image`` (mode ``"RGB"``, size ``(W, H)``).

    Accepts
      - a ``PIL.Image.Image`` in any 8-bit mode (``RGB`` is returned as is; ``L``, ``LA``,
        ``P``, ``PA``, ``RGBA``, ``RGBa``, ``La``, ``RGBX``, ``CMYK``, ``YCbCr``, ``1``, ``HSV``,
        ``LAB`` are converted to RGB, alpha dropped);
      - a local file path (``str`` / ``os.PathLike``): opened and fully decoded here. A
        URL (``http://``, ``https://``, ``s3://``, ...) or a hub name is refused: dvtp
        does not fetch anything;
      - an encoded image file (PNG, JPEG, WebP, ... whatever PIL reads) as ``bytes``,
        ``bytearray`` or ``memoryview``, or as a binary file object (``io.BytesIO``,
        ``open(path, "rb")``; read from its current position, not closed here);
      - a ``numpy.ndarray`` or ``torch.Tensor`` of dtype uint8 shaped ``[H, W]`` (grey),
        ``[H, W, 1]`` (grey), ``[H, W, 3]`` (RGB) or ``[H, W, 4]`` (RGBA, alpha dropped).

    Raises ``ValueError`` (missing file, URL, undecodable bytes, unsupported mode or bit
    depth, zero width or height, wrong array shape) or ``TypeError`` (unsupported type or
    dtype, a text-mode file); every message starts with ``name``.
    """
    if isinstance(image, Image.Image):
        return _pil_to_rgb(image, name, source=None)
    if isinstance(image, (str, os.PathLike)):
        return _open_path(image, name)
    if isinstance(image, (bytes, bytearray, memoryview)):
        return _open_bytes(bytes(image), name)
    if callable(getattr(image, "read", None)):
        return _open_file_object(image, name)
    if isinstance(image, np.ndarray):
        return _array_to_rgb(image, name, kind="numpy array")
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency of dvtp
        torch = None
    if torch is not None and isinstance(image, torch.Tensor):
        if image.dtype != torch.uint8:
            raise TypeError(
                f"{name}: a torch tensor of dtype {image.dtype} (shape {list(image.shape)}) "
                f"is not accepted: images must be uint8 in 0..255. Accepted: {_ACCEPTED}."
            )
        return _array_to_rgb(image.detach().cpu().numpy(), name, kind="torch tensor")
    raise TypeError(f"{name}: got {type(image).__name__}; accepted: {_ACCEPTED}.")


def _open_path(path: str | os.PathLike, name: str) -> Image.Image:
    shown = os.fspath(path)
    if isinstance(shown, bytes):  # os.PathLike may give bytes
        shown = os.fsdecode(shown)
    if not os.path.exists(shown):
        if _URL.match(shown):
            raise ValueError(f"{name}: {shown!r} is a URL; {_LOCAL_ONLY}")
        if _HUB_NAME.match(shown) and not os.path.isdir(shown.split("/", 1)[0]):
            raise ValueError(
                f"{name}: no such file: {shown!r}; if that is a Hugging Face Hub name: {_LOCAL_ONLY}"
            )
        raise ValueError(f"{name}: no such file: {shown!r}")
    if os.path.isdir(shown):
        raise ValueError(f"{name}: {shown!r} is a directory, not an image file")
    return _decode(shown, name, f"read the image file {shown!r}", source=shown)


def _decode(src, name: str, what: str, *, source: str | None = None) -> Image.Image:
    """Open and fully decode an encoded image from ``src``, a file path or a binary file
    object; ``what`` completes the error message "could not ..." and ``source`` (a path)
    is named in later messages about the decoded picture."""
    img = None
    try:
        img = Image.open(src)
        img.load()
    except Exception as exc:  # PIL raises OSError, UnidentifiedImageError, SyntaxError, ...
        if img is not None:
            img.close()
        # PIL's message for an unknown format only names the file or our in-memory buffer
        why = (
            "no image format PIL reads recognises it"
            if isinstance(exc, UnidentifiedImageError)
            else f"{type(exc).__name__}: {exc}"
        )
        raise ValueError(
            f"{name}: could not {what}: {why} "
            "(expected the complete contents of an image file: PNG, JPEG, ...)"
        ) from None
    with img:
        return _pil_to_rgb(img, name, source=source, copy=True)


def _open_bytes(data: bytes, name: str) -> Image.Image:
    if not data:
        raise ValueError(f"{name}: the image bytes are empty (expected the contents of an image file)")
    head = data[:16]
    return _decode(io.BytesIO(data), name,
                   f"decode the {len(data)} bytes given (starting {head!r}) as an image")


def _open_file_object(fp: Any, name: str) -> Image.Image:
    mode = getattr(fp, "mode", None)
    if isinstance(fp, io.TextIOBase) or (isinstance(mode, str) and "b" not in mode):
        raise TypeError(f"{name}: a text-mode file object; open the image file in binary mode ('rb')")
    # read it all here, so that PIL never holds on to the caller's file
    try:
        data = fp.read()
    except Exception as exc:
        raise ValueError(f"{name}: could not read the file object: {type(exc).__name__}: {exc}") from None
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(
            f"{name}: the file object's read() gave {type(data).__name__}, not bytes; open the image file in "
            "binary mode ('rb')"
        )
    data = bytes(data)
    if not data:
        raise ValueError(
            f"{name}: the file object gave no bytes (empty, or already read to its end: seek(0) first?)"
        )
    source = getattr(fp, "name", None)
    what = f"the file object {source!r}" if isinstance(source, str) else f"the {len(data)} bytes read from the file object"
    return _decode(io.BytesIO(data), name, f"decode {what} as an image")


def _describe_wide_mode(mode: str) -> str | None:
    if mode.startswith("I;16"):
        return "16-bit"
    if mode == "I" or mode.startswith("I;32"):
        return "32-bit integer"
    if mode == "F" or mode.startswith("F;"):
        return "32-bit floating-point"
    return None


def _pil_to_rgb(
    img: Image.Image, name: str, *, source: str | None, copy: bool = False
) -> Image.Image:
    where = f" ({source!r})" if source is not None else ""
    width, height = img.size
    if width == 0 or height == 0:
        raise ValueError(f"{name}{where}: the image is empty (width {width}, height {height})")
    mode = img.mode
    wide = _describe_wide_mode(mode)
    if wide is not None:
        if wide == "16-bit":
            example = "Image.fromarray((np.asarray(img) >> 8).astype(np.uint8))"
        else:
            example = (
                "Image.fromarray(np.clip(np.asarray(img, dtype=np.float64) * 255 / white, 0, 255)"
                ".round().astype(np.uint8)) with `white` the value of full intensity"
            )
        raise ValueError(
            f"{name}{where} is a {wide} image (mode {mode!r}); LLaDA-V's processor works on "
            f"8-bit RGB: convert it first, e.g. {example}"
        )
    if source is None and not copy:
        try:
            img.load()  # lazily opened files: surface truncation here, not deep in the processor
        except Exception as exc:
            raise ValueError(
                f"{name}: could not decode the image: {type(exc).__name__}: {exc}"
            ) from None
    try:
        if mode == "RGB":
            return img.copy() if copy else img
        if mode in ("P", "PA"):
            # via RGBA so that palette transparency is dropped without PIL's warning
            return img.convert("RGBA").convert("RGB")
        if mode == "La":
            return img.convert("LA").convert("RGB")
        return img.convert("RGB")
    except Exception as exc:
        raise ValueError(
            f"{name}{where}: cannot convert an image of mode {mode!r} to RGB "
            f"({type(exc).__name__}: {exc}); convert it to 8-bit RGB first"
        ) from None


def _array_to_rgb(arr: np.ndarray, name: str, *, kind: str) -> Image.Image:
    shape = list(arr.shape)
    if arr.dtype != np.uint8:
        raise TypeError(
            f"{name}: a {kind} of dtype {arr.dtype} (shape {shape}) is not accepted: images must "
            f"be uint8 in 0..255. Accepted: {_ACCEPTED}."
        )
    if arr.ndim == 3 and arr.shape[-1] not in (1, 3, 4) and arr.shape[0] in (1, 3, 4):
        fix = "tensor.permute(1, 2, 0)" if kind == "torch tensor" else "array.transpose(1, 2, 0)"
        raise ValueError(
            f"{name}: a {kind} of shape {shape} looks channels-first ([C, H, W]); images must be "
            f"channels last: [H, W], [H, W, 1], [H, W, 3] or [H, W, 4] (use {fix})"
        )
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] in (1, 3, 4))):
        raise ValueError(
            f"{name}: a {kind} of shape {shape} is not an image; accepted shapes (uint8, channels "
            "last): [H, W], [H, W, 1], [H, W, 3] or [H, W, 4]"
        )
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(
            f"{name}: the {kind} of shape {shape} is empty "
            f"(height {arr.shape[0]}, width {arr.shape[1]})"
        )
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    elif arr.ndim == 3 and arr.shape[-1] == 4:
        arr = arr[..., :3]  # alpha dropped, as PIL's RGBA -> RGB conversion does
    img = Image.fromarray(np.ascontiguousarray(arr))
    return img if img.mode == "RGB" else img.convert("RGB")


def synthetic_photo(width: int, height: int, *, seed: int = 0) -> np.ndarray:
    """A photo-like ``[height, width, 3]`` uint8 RGB image (sky gradient, textured ground,
    a few coloured discs, sensor noise) for demos and benchmarks that must run offline.

    Width first, as PIL's ``Image.size`` and the command line's ``synthetic:WxH``."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    img = np.empty((height, width, 3))
    sky = y < height * 0.55
    img[..., 0] = np.where(sky, 90 + 80 * y / height, 70 + 40 * x / width)
    img[..., 1] = np.where(sky, 140 + 60 * y / height, 120 + 30 * np.sin(x / 37.0))
    img[..., 2] = np.where(sky, 230 - 40 * y / height, 60 + 20 * np.cos(y / 23.0))
    for _ in range(6):
        cy, cx, r = rng.uniform(0.2, 0.9) * height, rng.uniform(0.1, 0.9) * width, rng.uniform(0.04, 0.15) * height
        img[(y - cy) ** 2 + (x - cx) ** 2 < r**2] = rng.uniform(0, 255, 3)
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)
