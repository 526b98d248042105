"""LLaDA-V's input preparation: prompt ids with image placeholders, and image views.

:class:`LLaDAVProcessor` reproduces what LLaDA-V's own code does before the model runs:

**Images.** One image in a prompt is processed "anyres_max_4": the best grid resolution is
picked from the 36 pinpoints (``llada_v_pinpoints()``, [width, height] multiples of 384 up to
6x6) by ``select_best_resolution`` (largest effective resolution, then least waste; the first
exact tie in list order wins), the image is resized (bicubic, aspect kept) and centred on a
black canvas of that resolution, and the canvas is cut into 384x384 patches, row-major. The
views are ``[whole image squashed to 384x384] + patches``. Two or more images in one prompt
use "pad" mode instead (LLaDA-V's evaluation switches to it): each image is centred on a
square grey (127, 127, 127) canvas of side ``max(W, H)`` and resized to 384x384, one view per
image. Every view is scaled to [0, 1] and normalised with SigLIP's mean = std = 0.5, so
values lie in [-1, 1].

All of that is done by transformers' pillow backend
``LlavaOnevisionImageProcessorPil`` (same algorithm as LLaDA-V's ``process_anyres_image`` /
``expand2square``), configured with SigLIP's normalisation and with LLaDA-V's pinpoints
converted to the (height, width) order transformers reads, in LLaDA-V's list order so exact
ties resolve the same way. ``tests/test_vlm_processor.py`` checks the result against an
independent plain-PIL statement of LLaDA-V's steps.

**Prompts.** The question is wrapped as LLaDA-V does: messages ``[system, user]`` rendered
with LLaDA's chat template (bos, header tokens, ``<|eot_id|>`` after each message, the
assistant header appended), the user content being ``"<image>\\n" + question`` for one image
or ``"<image> <image> ...\\n" + question`` for several. The text is then split on
``"<image>"`` and each chunk tokenized with the tokenizer's plain call, the chunks joined by
:data:`IMAGE_PLACEHOLDER` (-200, LLaVA's ``IMAGE_TOKEN_INDEX``), exactly as LLaVA's
``tokenizer_image_token``. That function has a quirk reproduced here **on purpose**: when the
first chunk starts with the bos id (it always does with LLaDA's template), the first token of
*every* later chunk is dropped too, so the "\\n" right after ``<image>`` (and the " " between
two placeholders) never reaches the model. LLaDA-V was trained and evaluated with those
ids, so they are kept identical.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from dvtp.vlm.images import load_image
from dvtp.vlm.tokenizer import LLADA_CHAT_TEMPLATE, SPECIAL_TOKENS

__all__ = [
    "DEFAULT_SYSTEM_PROMPT",
    "IMAGE_PLACEHOLDER",
    "IMAGE_TOKEN",
    "LLaDAVProcessor",
    "ProcessedImage",
    "llada_v_pinpoints",
]

#: Id that marks where an image's visual tokens go in :meth:`LLaDAVProcessor.prompt_ids`
#: (LLaVA's ``IMAGE_TOKEN_INDEX``). Not a vocabulary id: the model replaces it by the image's
#: projected features.
IMAGE_PLACEHOLDER = -200

#: The placeholder string in question text.
IMAGE_TOKEN = "<image>"

#: LLaDA-V's system prompt.
DEFAULT_SYSTEM_PROMPT = (
    "You are a helpful language and vision assistant. You are able to understand the visual "
    "content that the user provides, and assist the user with a variety of tasks using "
    "natural language."
)


def llada_v_pinpoints(image_size: int = 384, max_grid: int = 6) -> list[list[int]]:
    """LLaDA-V's ``image_grid_pinpoints``: ``[i*S, j*S]`` for i, then j, in ``1..max_grid``.

    Each pair is ``[width, height]`` (LLaDA-V's order); ``S = image_size``. With the defaults:
    36 pairs from ``[384, 384]``, ``[384, 768]``, ... to ``[2304, 2304]``.
    """
    for arg, value in (("image_size", image_size), ("max_grid", max_grid)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{arg} must be a positive int, got {value!r}")
    return [
        [i * image_size, j * image_size]
        for i in range(1, max_grid + 1)
        for j in range(1, max_grid + 1)
    ]


@dataclass(frozen=True, eq=False)
class ProcessedImage:
    """One image of a prompt, ready for the vision tower.

    Attributes:
        pixel_values: float32 tensor ``[V, 3, S, S]`` (``S = image_size``, 384), values in
            [-1, 1] (``(x / 255 - 0.5) / 0.5``), channels RGB. Anyres: ``V = 1 + rows * cols``,
            view 0 the whole image squashed to ``S x S``, then the grid patches row-major
            (top row left to right, then the next row). Pad mode: ``V = 1``.
        size: ``(height, width)`` of the original image in pixels.
        anyres: True when the views are anyres (the prompt's only image), False in pad mode.
        grid: ``(rows, cols)`` of the anyres patch grid, i.e. the selected resolution is
            ``(rows * S, cols * S)`` as (height, width); None when not anyres.
    """

    pixel_values: torch.Tensor
    size: tuple[int, int]
    anyres: bool
    grid: tuple[int, int] | None

    @property
    def num_views(self) -> int:
        """``V``, the number of ``S x S`` views in ``pixel_values``."""
        return int(self.pixel_values.shape[0])


class LLaDAVProcessor:
    """Prompt ids and image views exactly as LLaDA-V builds them (see the module docstring).

    Args:
        tokenizer: LLaDA's tokenizer (or :func:`dvtp.vlm.tokenizer.build_tiny_tokenizer`). It
            must contain LLaDA's special tokens (looked up by string): ``<|startoftext|>``,
            ``<|endoftext|>``, ``<|mdm_mask|>``, ``<|start_header_id|>``,
            ``<|end_header_id|>``, ``<|eot_id|>``. Its ``chat_template`` is used when set,
            else LLaDA's (:data:`dvtp.vlm.tokenizer.LLADA_CHAT_TEMPLATE`).
        image_size: side ``S`` of every view (SigLIP-384: 384).
        grid_pinpoints: candidate anyres resolutions as ``[width, height]`` pairs (LLaDA-V's
            order and convention), each a multiple of ``image_size``; default
            ``llada_v_pinpoints(image_size)``.
        system_prompt: the system message.

    Attributes:
        tokenizer: the tokenizer.
        image_processor: the configured
            ``transformers...LlavaOnevisionImageProcessorPil`` doing the image work.
        grid_pinpoints: the pinpoints, ``[width, height]`` pairs.
        image_size: ``S``.
        system_prompt: the system message.
    """

    def __init__(
        self,
        tokenizer: Any,
        *,
        image_size: int = 384,
        grid_pinpoints: Sequence[Sequence[int]] | None = None,
        system_prompt: str = DEFAULT_SYSTEM_PROMPT,
    ) -> None:
        from transformers.image_utils import PILImageResampling
        from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
            LlavaOnevisionImageProcessorPil,
        )

        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
            raise ValueError(f"image_size must be a positive int, got {image_size!r}")
        if grid_pinpoints is None:
            grid_pinpoints = llada_v_pinpoints(image_size)
        pinpoints = self._check_pinpoints(grid_pinpoints, image_size)
        if not isinstance(system_prompt, str):
            raise TypeError(f"system_prompt must be a str, got {type(system_prompt).__name__}")
        if IMAGE_TOKEN in system_prompt:
            raise ValueError(f"system_prompt must not contain {IMAGE_TOKEN!r}")

        self.tokenizer = tokenizer
        self.image_size = image_size
        self.grid_pinpoints = pinpoints
        self.system_prompt = system_prompt
        self._ids = {role: self._lookup(tokenizer, text) for role, text in SPECIAL_TOKENS.items()}

        mean = [0.5, 0.5, 0.5]  # SigLIP: mean = std = 0.5 per channel
        self.image_processor = LlavaOnevisionImageProcessorPil(
            do_convert_rgb=True,
            do_resize=True,
            size={"height": image_size, "width": image_size},
            resample=PILImageResampling.BICUBIC,
            do_rescale=True,
            rescale_factor=1 / 255,
            do_normalize=True,
            image_mean=mean,
            image_std=mean,
            do_pad=False,  # no padding of the view count across images: we keep one tensor each
            # transformers reads pinpoints as (height, width): swap each pair, keep LLaDA-V's
            # list order so that exact ties in select_best_resolution resolve identically.
            image_grid_pinpoints=[[h, w] for w, h in pinpoints],
        )

    # ------------------------------------------------------------------ special ids
    @staticmethod
    def _lookup(tokenizer: Any, token: str) -> int:
        try:
            idx = tokenizer.convert_tokens_to_ids(token)
            ok = isinstance(idx, int) and tokenizer.convert_ids_to_tokens(idx) == token
        except Exception:  # noqa: BLE001 - any failure means "not there"
            ok = False
        if not ok:
            raise ValueError(
                f"tokenizer has no {token!r} token; LLaDA-V needs LLaDA's tokenizer (or "
                "dvtp.vlm.tokenizer.build_tiny_tokenizer() for tests)"
            )
        return idx

    @property
    def mask_id(self) -> int:
        """Id of ``<|mdm_mask|>``, the diffusion mask token."""
        return self._ids["mask"]

    @property
    def bos_id(self) -> int:
        """Id of ``<|startoftext|>``."""
        return self._ids["bos"]

    @property
    def eos_id(self) -> int:
        """Id of ``<|endoftext|>``."""
        return self._ids["eos"]

    @property
    def eot_id(self) -> int:
        """Id of ``<|eot_id|>``, which ends the answer."""
        return self._ids["eot"]

    @property
    def suppressed_ids(self) -> list[int]:
        """Ids never predicted at masked positions: ``<|endoftext|>``, ``<|startoftext|>``,
        ``<|start_header_id|>``, ``<|end_header_id|>``."""
        return [self._ids[k] for k in ("eos", "bos", "start_header", "end_header")]

    @property
    def stop_ids(self) -> list[int]:
        """Ids that end a generated answer: ``<|eot_id|>``, ``<|endoftext|>``."""
        return [self._ids["eot"], self._ids["eos"]]

    # ------------------------------------------------------------------ prompts
    def prompt_text(self, question: str, num_images: int) -> str:
        """The chat-templated prompt text (with ``"<image>"`` placeholders) for ``question``.

        ``num_images`` placeholders are prepended as ``"<image> <image> ...\\n"`` unless the
        question already contains ``"<image>"`` placeholders, whose number must then equal
        ``num_images`` (ValueError otherwise). ``num_images == 0`` gives a text-only prompt.
        """
        if not isinstance(question, str):
            raise TypeError(
                f"questions: each question must be a str, got {type(question).__name__}"
            )
        if not question.strip():
            # an empty prompt would still "answer" (noise conditioned on the image alone)
            raise ValueError(f"questions: the question is empty or whitespace only ({question!r})")
        if isinstance(num_images, bool) or not isinstance(num_images, int) or num_images < 0:
            raise ValueError(f"num_images must be an int >= 0, got {num_images!r}")
        placed = question.count(IMAGE_TOKEN)
        if placed:
            if placed != num_images:
                raise ValueError(
                    f"questions: the question contains {placed} {IMAGE_TOKEN!r} placeholder(s) "
                    f"but {num_images} image(s) were given for it; use one placeholder per image, "
                    f"or none (then they are put in front of the question): {question!r}"
                )
            user = question
        elif num_images:
            user = " ".join([IMAGE_TOKEN] * num_images) + "\n" + question
        else:
            user = question
        messages = [
            {"role": "system", "content": self.system_prompt},
            {"role": "user", "content": user},
        ]
        template = getattr(self.tokenizer, "chat_template", None) or LLADA_CHAT_TEMPLATE
        return self.tokenizer.apply_chat_template(
            messages, chat_template=template, tokenize=False, add_generation_prompt=True
        )

    def prompt_ids(self, question: str, num_images: int) -> list[int]:
        """Token ids of the prompt for ``question`` with ``num_images`` images.

        Returns a list of ``L`` ints: vocabulary ids, with :data:`IMAGE_PLACEHOLDER` (-200) at
        each image's position (``num_images`` of them, in order). Built as LLaVA's
        ``tokenizer_image_token``: the text of :meth:`prompt_text` is split on ``"<image>"``,
        each chunk is tokenized with the tokenizer's plain call, and when the first chunk
        starts with ``tokenizer.bos_token_id`` the first id of every later chunk is dropped
        (the reference's behaviour, reproduced on purpose: the "\\n" after the last
        placeholder, and the " " between placeholders, are not in the ids).
        """
        text = self.prompt_text(question, num_images)
        chunks = [list(self.tokenizer(chunk).input_ids) for chunk in text.split(IMAGE_TOKEN)]
        ids: list[int] = []
        offset = 0
        bos = getattr(self.tokenizer, "bos_token_id", None)
        if chunks[0] and bos is not None and chunks[0][0] == bos:
            offset = 1
            ids.append(chunks[0][0])
        for i, chunk in enumerate(chunks):
            if i:
                ids.append(IMAGE_PLACEHOLDER)
            ids.extend(chunk[offset:])
        return ids

    # ------------------------------------------------------------------ images
    def anyres_grid(self, size: tuple[int, int]) -> tuple[int, int]:
        """``(rows, cols)`` of the anyres grid for an image of ``size = (height, width)``.

        Uses transformers' ``select_best_resolution`` with the (height, width) pinpoints the
        image processor uses, so it is the grid :meth:`process_images` produces.
        """
        from transformers.image_processing_utils import select_best_resolution

        height, width = (int(v) for v in size)
        if height < 1 or width < 1:
            raise ValueError(f"size must be a positive (height, width), got {size!r}")
        best_h, best_w = select_best_resolution(
            (height, width), self.image_processor.image_grid_pinpoints
        )
        return best_h // self.image_size, best_w // self.image_size

    def process_images(self, images: Sequence[Any]) -> list[ProcessedImage]:
        """Views of ONE prompt's images, as LLaDA-V computes them.

        ``images``: a list of images accepted by :func:`dvtp.vlm.images.load_image` (PIL
        images, local paths, encoded image bytes / binary file objects, uint8 ``[H, W(, C)]``
        arrays / tensors). One image: anyres views,
        ``pixel_values [1 + rows * cols, 3, S, S]``. Two or more: pad mode, each
        ``pixel_values [1, 3, S, S]``. An empty list gives ``[]``. Returns one
        :class:`ProcessedImage` per image, in order.
        """
        if isinstance(images, (str, bytes, bytearray, memoryview)) or not isinstance(images, Sequence):
            raise TypeError(
                f"images must be a list of the images of one prompt, got {type(images).__name__}"
            )
        pil = [load_image(img, name=f"images[{i}]") for i, img in enumerate(images)]
        if not pil:
            return []
        anyres = len(pil) == 1
        # A flat one-image list is processed as "anyres"; a nested list of 2+ images as "pad".
        batch = pil if anyres else [pil]
        out = self.image_processor.preprocess(batch, return_tensors=None)
        views = out["pixel_values"]
        if len(views) != len(pil):  # pragma: no cover - guards a transformers behaviour change
            raise RuntimeError(
                f"image processor returned {len(views)} results for {len(pil)} images"
            )

        result = []
        for img, arr in zip(pil, views, strict=True):
            width, height = img.size
            pixel_values = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
            grid = self.anyres_grid((height, width)) if anyres else None
            expected = 1 + grid[0] * grid[1] if anyres else 1
            s = self.image_size
            if tuple(pixel_values.shape) != (expected, 3, s, s):  # pragma: no cover - guard
                raise RuntimeError(
                    f"image processor returned views of shape {tuple(pixel_values.shape)}, "
                    f"expected {(expected, 3, s, s)}"
                )
            result.append(
                ProcessedImage(
                    pixel_values=pixel_values, size=(height, width), anyres=anyres, grid=grid
                )
            )
        return result

    # ------------------------------------------------------------------ answers
    def decode(self, ids: Any) -> str:
        """Text of a generated answer.

        ``ids``: the generated ids, a sequence of ints or a 1-D integer tensor / array
        ``[T]``. Keeps the ids before the first stop id (``<|eot_id|>`` or
        ``<|endoftext|>``), decodes them with special tokens (mask included) skipped, and
        strips surrounding whitespace.
        """
        if isinstance(ids, torch.Tensor):
            if ids.dim() != 1 or ids.dtype.is_floating_point or ids.dtype == torch.bool:
                raise ValueError(
                    f"ids must be a 1-D integer tensor [T], got {ids.dtype} {list(ids.shape)}"
                )
            ids = ids.tolist()
        elif isinstance(ids, np.ndarray):
            if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
                raise ValueError(
                    f"ids must be a 1-D integer array [T], got {ids.dtype} {list(ids.shape)}"
                )
            ids = ids.tolist()
        ids = [int(i) for i in ids]
        stops = set(self.stop_ids)
        end = next((n for n, i in enumerate(ids) if i in stops), len(ids))
        kept = ids[:end]
        if any(i < 0 for i in kept):
            raise ValueError(
                "ids contain negative values (image placeholders?); pass only generated ids"
            )
        return self.tokenizer.decode(kept, skip_special_tokens=True).strip()

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _check_pinpoints(grid_pinpoints: Any, image_size: int) -> list[list[int]]:
        msg = (
            "grid_pinpoints must be a non-empty list of [width, height] pairs of positive "
            f"multiples of image_size={image_size}"
        )

        def ok(v: Any) -> bool:
            return isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= image_size

        seq = grid_pinpoints if isinstance(grid_pinpoints, (list, tuple)) else ()
        valid = len(seq) > 0 and all(
            isinstance(p, (list, tuple))
            and len(p) == 2
            and all(ok(v) and v % image_size == 0 for v in p)
            for p in seq
        )
        if not valid:
            raise ValueError(f"{msg}, got {grid_pinpoints!r}")
        pairs = [[int(w), int(h)] for w, h in seq]
        return pairs

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(tokenizer={type(self.tokenizer).__name__}, "
            f"image_size={self.image_size}, grid_pinpoints={len(self.grid_pinpoints)} resolutions)"
        )
