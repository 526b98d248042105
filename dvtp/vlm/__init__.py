"""LLaDA-V: image + question -> answer, with RedVTP pruning through the multimodal path.

* `LLaDAVForConditionalGeneration` - the model (transformers' LLaVA-OneVision with a
  bidirectional LLaDA language model and LLaDA-V's exact feature packing).
* `LLaDAVProcessor` - images -> views, questions -> prompt ids, ids -> answer text.
* `answer` / `prepare` - the batched pipeline (``model.answer(...)`` calls `answer`).
* `tiny_llada_v` / `scaled_llada_v` - seeded small models with the real view geometry.
* `ImageLayout` - where each visual token of an image comes from.

Load a published checkpoint folder with `dvtp.load(path)`. See docs/llada_v.md.
"""
from __future__ import annotations

from .answer import AnswerOutput, ImageTokens, MultimodalBatch, answer, prepare
from .config import IMAGE_PLACEHOLDER, llada_v_8b_config, llada_v_config, tiny_llada_v_config
from .model import LLaDAVForConditionalGeneration
from .packing import ImageLayout, image_layout
from .presets import scaled_llada_v, tiny_llada_v
from .processor import LLaDAVProcessor, ProcessedImage

__all__ = [
    "LLaDAVForConditionalGeneration",
    "LLaDAVProcessor",
    "ProcessedImage",
    "answer",
    "prepare",
    "AnswerOutput",
    "MultimodalBatch",
    "ImageTokens",
    "ImageLayout",
    "image_layout",
    "tiny_llada_v",
    "scaled_llada_v",
    "llada_v_config",
    "llada_v_8b_config",
    "tiny_llada_v_config",
    "IMAGE_PLACEHOLDER",
]
