"""Configurations of LLaDA-V as a transformers `LlavaOnevisionConfig`.

LLaDA-V is a LLaVA-OneVision-style model: a SigLIP so400m/14 tower at 384 px with its
last encoder layer removed (26 layers, no pooling head; the features are the last
remaining layer's output, i.e. ``mm_vision_select_layer=-2`` of the full tower), a
``mlp2x_gelu`` projector, an ``image_newline`` vector, and a bidirectional Llama-style
language model (LLaDA-8B). `dvtp.vlm.model.LLaDAVForConditionalGeneration` runs it.

Grid pinpoints: LLaDA-V lists them as ``[width, height]`` pairs and reads image sizes as
``(width, height)``; transformers reads both as ``(height, width)``. Both select the best
resolution with "the first of exact ties wins", so the config stores LLaDA-V's list with
every pair swapped (same order), which makes transformers visit the same candidates in
the same order and pick the same grid for every image size.
"""
from __future__ import annotations

from transformers import LlamaConfig, LlavaOnevisionConfig, SiglipVisionConfig

from ..models import LLADA_MASK_ID, llada_8b_config, tiny_llada_config
from .processor import IMAGE_PLACEHOLDER, llada_v_pinpoints

__all__ = [
    "IMAGE_PLACEHOLDER",
    "llada_v_pinpoints",
    "llada_v_config",
    "llada_v_8b_config",
    "tiny_llada_v_config",
    "siglip_so400m_config",
]


def siglip_so400m_config(**overrides) -> SiglipVisionConfig:
    """SigLIP(2) so400m patch14 384 as LLaDA-V uses it: 26 of its 27 layers, no head."""
    base = dict(
        hidden_size=1152,
        intermediate_size=4304,
        num_hidden_layers=26,
        num_attention_heads=16,
        image_size=384,
        patch_size=14,
        hidden_act="gelu_pytorch_tanh",
        layer_norm_eps=1e-6,
        vision_use_head=False,
    )
    base.update(overrides)
    return SiglipVisionConfig(**base)


def llada_v_config(
    text_config: LlamaConfig,
    vision_config: SiglipVisionConfig,
    *,
    grid_pinpoints: list[list[int]] | None = None,
    max_views: int = 4,
    mask_token_id: int | None = None,
) -> LlavaOnevisionConfig:
    """A `LlavaOnevisionConfig` that describes LLaDA-V.

    Args:
        text_config: the language model (LLaDA: a Llama config, run bidirectionally).
        vision_config: the SigLIP tower as stored (last layer already removed).
        grid_pinpoints: LLaDA-V's ``[width, height]`` list (default `llada_v_pinpoints`
            at the tower's image size); stored swapped, see the module docstring.
        max_views: N of ``anyres_max_N``: the grid is shrunk when it holds more than
            about N views' worth of features.
        mask_token_id: the mask id (default: ``text_config.mask_token_id``).
    """
    if grid_pinpoints is None:
        grid_pinpoints = llada_v_pinpoints(vision_config.image_size)
    text_config.is_causal = False
    mask = mask_token_id if mask_token_id is not None else getattr(text_config, "mask_token_id", None)
    text_config.mask_token_id = mask
    config = LlavaOnevisionConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_index=IMAGE_PLACEHOLDER,
        projector_hidden_act="gelu",  # nn.GELU(): the exact (erf) GELU of mlp2x_gelu
        vision_feature_select_strategy="full",  # SigLIP has no CLS token to drop
        vision_feature_layer=-1,  # the tower already lacks its last layer
        multimodal_projector_bias=True,
        image_grid_pinpoints=[[h, w] for w, h in grid_pinpoints],
        vision_aspect_ratio=f"anyres_max_{int(max_views)}",
        tie_word_embeddings=False,
    )
    config.mask_token_id = mask  # the sampler reads it from the top-level config
    return config


def llada_v_8b_config() -> LlavaOnevisionConfig:
    """The published LLaDA-V's shape: SigLIP so400m (26 layers) + LLaDA-8B."""
    return llada_v_config(llada_8b_config(max_position_embeddings=16384), siglip_so400m_config(), mask_token_id=LLADA_MASK_ID)


def tiny_llada_v_config(vocab_size: int, mask_token_id: int, **text_overrides) -> LlavaOnevisionConfig:
    """A tiny LLaDA-V for tests and demos: real view geometry (384 px, patch 14, so the
    visual token counts equal the real model's), a 2-layer 32-wide tower and a tiny
    LLaDA-style language model (`dvtp.models.tiny_llada_config` plus ``text_overrides``)."""
    text = tiny_llada_config(vocab_size=vocab_size, mask_token_id=mask_token_id, **text_overrides)
    vision = siglip_so400m_config(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    return llada_v_config(text, vision)
