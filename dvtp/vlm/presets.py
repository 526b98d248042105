"""Small LLaDA-V models with seeded random weights, built offline (tests, demo, benchmarks).

They have LLaDA-V's real view geometry (384 px views, patch 14: the visual-token counts
equal the published model's for the same image), its prompt template and special tokens
(a tiny tokenizer built with the `tokenizers` library), and a small vision tower and
language model. Their answers are noise: they exist to exercise and time the full
image -> answer path without a checkpoint.
"""

from __future__ import annotations

import torch

from .config import llada_v_config, siglip_so400m_config, tiny_llada_v_config
from .model import LLaDAVForConditionalGeneration

__all__ = ["tiny_llada_v", "scaled_llada_v"]


def _check_args(dtype, device) -> tuple[torch.dtype | None, torch.device | None]:
    """``dtype`` and ``device`` checked as `dvtp.load` checks them (ValueError naming the
    argument and what is accepted / usable here), before anything is built."""
    from ..checkpoint.formats import _check_dtype_arg  # the function, not at import: no cycle
    from ..devices import resolve_device

    return _check_dtype_arg(dtype), None if device is None else resolve_device(device, name="device")


def _build(
    config, tokenizer, seed: int, dtype: torch.dtype | None, device: torch.device | None
) -> LLaDAVForConditionalGeneration:
    from .processor import LLaDAVProcessor

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LLaDAVForConditionalGeneration(config)  # built on the CPU: the same weights anywhere
    if dtype is not None or device is not None:
        model = model.to(dtype=dtype, device=device)
    model.processor = LLaDAVProcessor(tokenizer)
    return model.eval()


def tiny_llada_v(
    *,
    seed: int = 0,
    dtype: torch.dtype | str | None = None,
    device: torch.device | str | int | None = None,
    **text_overrides,
) -> LLaDAVForConditionalGeneration:
    """A tiny LLaDA-V (2-layer 64-wide LLaDA, 2-layer 32-wide SigLIP) with its processor.

    ``dtype`` (None = float32; "float32", "bfloat16", "float16" or a floating
    ``torch.dtype``) and ``device`` ("cpu", "cuda", "cuda:N", ...) are checked as by
    `dvtp.load`. ``text_overrides`` patch the language model's config (e.g.
    ``num_hidden_layers=4``). The same seed gives the same weights on every device; the
    global RNG is left untouched.
    """
    from .tokenizer import build_tiny_tokenizer

    dtype, device = _check_args(dtype, device)

    tokenizer = build_tiny_tokenizer()
    mask = tokenizer.convert_tokens_to_ids("<|mdm_mask|>")
    config = tiny_llada_v_config(vocab_size=len(tokenizer), mask_token_id=mask, **text_overrides)
    return _build(config, tokenizer, seed, dtype, device)


def scaled_llada_v(
    *,
    seed: int = 0,
    dtype: torch.dtype | str | None = None,
    device: torch.device | str | int | None = None,
) -> LLaDAVForConditionalGeneration:
    """LLaDA-V scaled down for CPU timing: the language model of the bare-LM benchmark
    (hidden 256, 4 layers, 8 heads, head dim 32, intermediate 688) behind a 2-layer
    64-wide SigLIP; visual token counts are the real model's. ``dtype`` and ``device``
    as in `tiny_llada_v`."""
    from ..models import tiny_llada_config
    from .tokenizer import build_tiny_tokenizer

    dtype, device = _check_args(dtype, device)

    tokenizer = build_tiny_tokenizer()
    mask = tokenizer.convert_tokens_to_ids("<|mdm_mask|>")
    text = tiny_llada_config(
        vocab_size=len(tokenizer),
        mask_token_id=mask,
        hidden_size=256,
        intermediate_size=688,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=8,
        initializer_range=0.1,
    )
    vision = siglip_so400m_config(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2
    )
    return _build(llada_v_config(text, vision), tokenizer, seed, dtype, device)
