"""LLaDA-V as a transformers model: `LLaDAVForConditionalGeneration`.

It is transformers' `LlavaOnevisionForConditionalGeneration` (SigLIP tower, projector,
``image_newline``, language model, LM head; the same parameter names, so
``from_pretrained``, ``device_map`` and ``save_pretrained`` work as for any transformers
model) with two LLaDA-V specifics:

* the language model is LLaDA: a Llama decoder run bidirectionally (no causal mask);
* image features are packed with LLaDA-V's exact layout (`dvtp.vlm.packing`), which
  differs from LLaVA-OneVision's for a few image sizes.

`encode_images` turns processed images into visual-token runs; `answer` is the
image + question -> text entry point (`dvtp.vlm.answer`). Under `dvtp.patched` only the
language model's attention is switched to dvtp's; the vision tower keeps its own.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from transformers import LlavaOnevisionConfig
from transformers.models.llava_onevision.modeling_llava_onevision import (
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionModel,
    LlavaOnevisionPreTrainedModel,
)

from ..config import PruningConfig
from ..models import StrictFromPretrained, make_bidirectional
from .answer import AnswerOutput, method_doc
from .answer import answer as _answer
from .packing import ImageLayout, image_layout, pack_image

__all__ = ["LLaDAVModel", "LLaDAVForConditionalGeneration"]


def _max_views(config: LlavaOnevisionConfig) -> int:
    return int(config.vision_aspect_ratio.removeprefix("anyres_max_"))


class LLaDAVModel(LlavaOnevisionModel):
    """`LlavaOnevisionModel` whose feature packing is LLaDA-V's (`dvtp.vlm.packing`)."""

    def layout(self, size, *, anyres: bool) -> ImageLayout:
        """The `ImageLayout` of an image of ``size = (height, width)`` pixels."""
        from transformers.image_processing_utils import select_best_resolution

        vision = self.config.vision_config
        grid = None
        if anyres:
            h, w = select_best_resolution((int(size[0]), int(size[1])), self.config.image_grid_pinpoints)
            grid = (h // vision.image_size, w // vision.image_size)
        return image_layout(
            size, grid, anyres=anyres, side=vision.image_size // vision.patch_size, view=vision.image_size,
            max_views=_max_views(self.config),
        )

    def pack_image_features(self, image_features, image_sizes, image_newline=None, vision_aspect_ratio=None):
        """LLaDA-V's packing of per-image view features ``[V_i, 729, D]`` (see
        `dvtp.vlm.packing`); an image with one view is a padded-square ("pad") image.
        Returns ``(list of [n_i, D], feature_lens [num_images])`` like transformers'."""
        if image_newline is None:
            raise ValueError("LLaDA-V packing needs the image_newline parameter")
        packed = []
        for features, size in zip(image_features, image_sizes):
            size = size.tolist() if isinstance(size, torch.Tensor) else size
            packed.append(pack_image(features, self.layout(size, anyres=features.shape[0] > 1), image_newline))
        lens = torch.tensor([p.shape[0] for p in packed], dtype=torch.long, device=image_features[0].device)
        return packed, lens


class LLaDAVForConditionalGeneration(StrictFromPretrained, LlavaOnevisionForConditionalGeneration):
    """LLaDA-V: SigLIP tower + ``mlp2x_gelu`` projector + bidirectional LLaDA.

    Build one from a config (`dvtp.vlm.config`), load a checkpoint folder with
    `dvtp.load`, or get the tiny preset from `dvtp.vlm.tiny_llada_v`. ``model.processor``
    (a `dvtp.vlm.processor.LLaDAVProcessor`, set by the loaders) turns images and
    questions into model inputs.
    """

    logits_shift = 0  # logits[:, i] predicts token i (LLaDA has no shift)

    def __init__(self, config: LlavaOnevisionConfig):
        config.text_config.is_causal = False
        LlavaOnevisionPreTrainedModel.__init__(self, config)
        self.model = LLaDAVModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()
        make_bidirectional(self.model.language_model)
        self.processor = None

    @torch.no_grad()
    def encode_images(
        self, pixel_values: Sequence[torch.Tensor], sizes: Sequence[Sequence[int]], anyres: Sequence[bool]
    ) -> list[torch.Tensor]:
        """Visual-token runs of several images in one vision forward.

        Args:
            pixel_values: per image ``[V_i, 3, S, S]`` normalised views (base view first).
            sizes: per image its original ``(height, width)``.
            anyres: per image whether it is an anyres image (base view + grid) or a
                padded-square one (one view).
        Returns:
            per image ``[n_i, hidden]`` in the language model's dtype, ``n_i =
            self.model.layout(sizes[i], anyres=anyres[i]).num_tokens``.
        """
        if not pixel_values:
            return []
        vision = self.model.vision_tower
        param = next(vision.parameters())
        views = torch.cat([p.to(device=param.device, dtype=param.dtype) for p in pixel_values], dim=0)
        hidden = vision(views, output_hidden_states=True).hidden_states[self.config.vision_feature_layer]
        features = self.model.multi_modal_projector(hidden)
        per_image = torch.split(features, [p.shape[0] for p in pixel_values], dim=0)
        newline = self.model.image_newline
        lm_dtype = self.get_input_embeddings().weight.dtype
        out = []
        for feats, size, is_anyres in zip(per_image, sizes, anyres):
            out.append(pack_image(feats, self.model.layout(size, anyres=is_anyres), newline).to(lm_dtype))
        return out

    # The signature is spelled out (for help(), IDEs and type checkers) and must equal
    # dvtp.vlm.answer.answer's after its model argument: tests/test_vlm_answer.py checks
    # that they have the same parameters, kinds, defaults and annotations. The docstring
    # is answer's own, less its model entry, so it is written once.
    def answer(
        self,
        images,
        questions: str | Sequence[str],
        *,
        pruning: PruningConfig | None = None,
        gen_length: int = 128,
        steps: int = 128,
        block_length: int | None = None,
        temperature: float = 0.0,
        remasking: str = "low_confidence",
        stop: bool = True,
        cache: str | None = None,
        refresh: str | int = "block",
        threshold: float | None = None,
        factor: float | None = None,
        generator: torch.Generator | None = None,
        progress: bool = False,
    ) -> AnswerOutput:
        return _answer(
            self,
            images,
            questions,
            pruning=pruning,
            gen_length=gen_length,
            steps=steps,
            block_length=block_length,
            temperature=temperature,
            remasking=remasking,
            stop=stop,
            cache=cache,
            refresh=refresh,
            threshold=threshold,
            factor=factor,
            generator=generator,
            progress=progress,
        )

    answer.__doc__ = method_doc(_answer.__doc__)
