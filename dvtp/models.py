"""Bidirectional (diffusion) language models built from transformers parts.

* LLaDA (the language model of LLaDA-V and LaViDa-LLaDA): a Llama decoder without the
  causal mask -> `LLaDALM`, a `transformers.LlamaForCausalLM` subclass.
* Dream (LaViDa-Dream): a Qwen2 decoder without the causal mask whose logits are shifted
  one position right (``logits[:, i]`` predicts token i from position i-1) -> `DreamLM`,
  a `transformers.Qwen2ForCausalLM` subclass that applies the shift in ``forward`` so its
  ``logits[:, i]`` always predicts token i (what the sampler wants).

How the causal mask is removed (transformers 5.24 - 5.39; setting ``self_attn.is_causal = False``
alone is not enough because ``LlamaModel`` still builds a causal mask):

1. ``config.is_causal = False`` makes ``create_causal_mask`` defer to
   ``create_bidirectional_mask``, which returns None (no mask) for SDPA when nothing is
   padding, and every attention module gets ``is_causal = False`` so the stock "sdpa"
   path calls SDPA with ``is_causal=False``. So these models are bidirectional with the
   stock "sdpa" and "eager" implementations too.
2. Under `dvtp.patched` the model runs ``"dvtp_sdpa"``, which is bidirectional by
   construction whatever the config says (see `dvtp.attention`).

Sizes: `tiny_llada_config` / `tiny_dream_config` are test/demo presets;
`llada_8b_config` / `dream_7b_config` describe the published models (no weights are
downloaded; load local checkpoint folders with `dvtp.load(path)`).
"""
from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM
from transformers.utils.deprecation import deprecate_kwarg

from .attention import attention_modules
from .config import LLADA_SUPPRESSED_IDS

__all__ = [
    "StrictFromPretrained",
    "LLaDALM",
    "DreamLM",
    "llada_lm",
    "dream_lm",
    "tiny_llada_config",
    "tiny_dream_config",
    "llada_8b_config",
    "dream_7b_config",
    "make_bidirectional",
    "LLADA_MASK_ID",
    "DREAM_MASK_ID",
    "LLADA_SUPPRESSED_IDS",
]

LLADA_MASK_ID = 126336
DREAM_MASK_ID = 151666


def make_bidirectional(model: torch.nn.Module) -> torch.nn.Module:
    """Turn a transformers decoder into a bidirectional one (config flag + every attention module)."""
    model.config.is_causal = False
    for module in attention_modules(model):
        module.is_causal = False
    return model


class StrictFromPretrained:
    """``from_pretrained`` that never returns randomly initialised weights.

    transformers' ``from_pretrained`` only logs a table when weights are missing or
    unexpected and initialises the missing ones randomly. Here a local folder whose
    config.json names another model type (e.g. LLaDA's published ``"llada"`` or LLaDA-V's
    ``"llava_llada"``) is refused before anything is built, and any missing, unexpected or
    mis-shaped weight raises a ValueError. Published LLaDA / LLaDA-V folders load with
    `dvtp.load`. Passing ``output_loading_info=True`` returns transformers' report instead,
    for callers that check it themselves (as `dvtp.load` does).
    """

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        import json
        import os

        path = pretrained_model_name_or_path
        where = f"{cls.__name__}.from_pretrained({str(path)!r})"
        config_file = os.path.join(path, "config.json") if isinstance(path, (str, os.PathLike)) else None
        if kwargs.get("config") is None and config_file is not None and os.path.isfile(config_file):
            try:
                with open(config_file, encoding="utf-8") as f:
                    model_type = json.load(f).get("model_type")
            except (OSError, ValueError, AttributeError):
                model_type = None
            expected = cls.config_class.model_type
            if model_type != expected:
                raise ValueError(
                    f"{where}: config.json has model_type {model_type!r}, not transformers' {expected!r} layout; "
                    "published LLaDA and LLaDA-V checkpoint folders load with dvtp.load(path) (docs/llada_v.md)"
                )
        if kwargs.get("output_loading_info"):
            return super().from_pretrained(path, *args, **kwargs)
        model, info = super().from_pretrained(path, *args, output_loading_info=True, **kwargs)
        problems = []
        for key, what in (
            ("missing_keys", "weights missing (they would be randomly initialised)"),
            ("unexpected_keys", "unexpected weights"),
            ("mismatched_keys", "weights with the wrong shape"),
        ):
            keys = sorted(str(k[0] if isinstance(k, tuple) else k) for k in info.get(key) or ())
            if keys:
                shown = ", ".join(keys[:5]) + (f", ... ({len(keys)} in all)" if len(keys) > 5 else "")
                problems.append(f"{len(keys)} {what}: {shown}")
        if problems:
            raise ValueError(
                f"{where}: the weights do not match {cls.__name__}: " + "; ".join(problems)
                + ". Published LLaDA / LLaDA-V folders load with dvtp.load(path) (docs/llada_v.md)"
            )
        return model


class LLaDALM(StrictFromPretrained, LlamaForCausalLM):
    """LLaDA: ``LlamaForCausalLM`` with full bidirectional attention."""

    logits_shift = 0

    def __init__(self, config: LlamaConfig):
        config.is_causal = False
        super().__init__(config)
        make_bidirectional(self)
        self.processor = None  # set by dvtp.load: the tokenizer and prompt template for `answer`

    def answer(self, images, questions, **kwargs):
        """Answer text-only questions (``images`` must be None); see `dvtp.vlm.answer.answer`."""
        from .vlm.answer import answer

        return answer(self, images, questions, **kwargs)


class DreamLM(StrictFromPretrained, Qwen2ForCausalLM):
    """Dream: ``Qwen2ForCausalLM`` with bidirectional attention and right-shifted logits.

    ``forward`` returns ``logits[:, i]`` = the Qwen2 head's output at position ``i - 1``
    (position 0 repeats its own), i.e. the prediction of token i. ``logits_to_keep``
    keeps that meaning: an int k returns the shifted logits of the last k positions.
    """

    logits_shift = 1

    def __init__(self, config: Qwen2Config):
        config.is_causal = False
        if getattr(config, "use_sliding_window", False):
            raise ValueError("DreamLM: sliding-window attention is not part of Dream (use_sliding_window=False)")
        super().__init__(config)
        make_bidirectional(self)

    # the parent's forward takes the cache as ``cache=`` (transformers >= 5.24) and still
    # maps ``past_key_values=`` to it with a FutureWarning: do the same here, so the warning
    # names the caller that used the old name rather than this override
    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        cache=None,
        inputs_embeds=None,
        labels=None,
        use_cache=None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ):
        if labels is not None:
            raise ValueError("DreamLM.forward: labels (causal LM loss) are not supported by a diffusion LM")
        n = (input_ids if input_ids is not None else inputs_embeds).shape[1]
        if isinstance(logits_to_keep, torch.Tensor):
            keep = (logits_to_keep - 1).clamp(min=0)
        elif logits_to_keep and logits_to_keep < n:
            keep = logits_to_keep + 1
        else:
            keep = 0
        out = super().forward(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            logits_to_keep=keep,
            **kwargs,
        )
        logits = out.logits
        if isinstance(keep, torch.Tensor):
            shifted = logits
        elif keep:
            shifted = logits[:, :-1]
        else:
            shifted = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
            if logits_to_keep:
                shifted = shifted[:, -logits_to_keep:]
        out.logits = shifted
        return out


# Accepted besides a config class's own fields: dvtp's mask id, and legacy/loader spellings.
_EXTRA_CONFIG_KEYS = {"mask_token_id", "rope_theta", "rope_scaling", "is_causal", "attn_implementation", "torch_dtype"}
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}


def _check_config_keys(cls, keys, where: str) -> None:
    """A misspelt field (``hiden_size=``) would be stored and silently ignored: reject it."""
    import difflib

    known = set(cls().to_dict()) | _EXTRA_CONFIG_KEYS
    for key in keys:
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise TypeError(f"{where}: unknown {cls.__name__} field {key!r}{hint}")


def _config(cls, config, overrides):
    _check_config_keys(cls, overrides, "config override")
    if config is None:
        config = cls(**overrides)
    elif isinstance(config, dict):
        _check_config_keys(cls, config, "config")
        config = cls(**{**config, **overrides})
    elif isinstance(config, cls):
        if overrides:
            config = cls(**{**config.to_dict(), **overrides})
    else:
        raise TypeError(
            f"config must be a {cls.__name__}, a dict of its fields or None, got {type(config).__name__} "
            f"{config!r:.60} (the tiny presets are tiny_llada_config() / tiny_dream_config())"
        )
    return config


def _check_dtype(dtype) -> torch.dtype | None:
    if dtype is None or (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        return dtype
    if isinstance(dtype, str) and dtype.removeprefix("torch.") in _DTYPES:
        return _DTYPES[dtype.removeprefix("torch.")]
    raise ValueError(
        f"dtype must be a floating torch.dtype or one of {', '.join(map(repr, _DTYPES))}, got {dtype!r}"
    )


def _build(model_cls, config, seed, dtype):
    dtype = _check_dtype(dtype)
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise TypeError(f"seed must be an int or None, got {seed!r}")
    if seed is None:
        model = model_cls(config)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = model_cls(config)
    if dtype is not None:
        model = model.to(dtype)
    return model.eval()


def llada_lm(
    config: LlamaConfig | dict | None = None, *, seed: int | None = None, dtype: torch.dtype | None = None, **overrides
) -> LLaDALM:
    """Build a randomly initialised LLaDA-style LM (eval mode) from a `LlamaConfig` or dict.

    ``seed`` makes the initialisation reproducible without touching the global RNG;
    keyword overrides patch the config (e.g. ``num_hidden_layers=2``).
    """
    return _build(LLaDALM, _config(LlamaConfig, config, overrides), seed, dtype)


def dream_lm(
    config: Qwen2Config | dict | None = None, *, seed: int | None = None, dtype: torch.dtype | None = None, **overrides
) -> DreamLM:
    """Build a randomly initialised Dream-style LM (eval mode) from a `Qwen2Config` or dict."""
    return _build(DreamLM, _config(Qwen2Config, config, overrides), seed, dtype)


# Shared by the tiny presets: vocab 128 with mask id 127; a larger initializer_range than
# a real model's so the untrained network has peaked attention and logits.
_TINY = dict(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=4096,
    initializer_range=0.15,
    tie_word_embeddings=False,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
    mask_token_id=127,
)


def tiny_llada_config(**overrides) -> LlamaConfig:
    """A few-layer LLaDA-style config for tests and demos (vocab 128, mask id 127).

    ``initializer_range`` is larger than a real model's so that the untrained network has
    peaked attention and logits (distinct importance scores, confident predictions).
    """
    base = dict(
        _TINY,
        num_key_value_heads=4,
        rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
        rms_norm_eps=1e-5,
    )
    _check_config_keys(LlamaConfig, overrides, "config override")
    base.update(overrides)
    return LlamaConfig(**base)


def tiny_dream_config(**overrides) -> Qwen2Config:
    """A few-layer Dream-style config (GQA 4 query / 2 kv heads, QKV bias; vocab 128, mask id 127)."""
    base = dict(
        _TINY,
        num_key_value_heads=2,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        rms_norm_eps=1e-6,
        use_sliding_window=False,
    )
    _check_config_keys(Qwen2Config, overrides, "config override")
    base.update(overrides)
    return Qwen2Config(**base)


def llada_8b_config(**overrides) -> LlamaConfig:
    """The LLaDA-8B language model's shape (docs/llada_v.md)."""
    base = dict(
        vocab_size=126464,
        hidden_size=4096,
        intermediate_size=12288,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        max_position_embeddings=8192,
        rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        eos_token_id=126081,
        mask_token_id=LLADA_MASK_ID,
    )
    _check_config_keys(LlamaConfig, overrides, "config override")
    base.update(overrides)
    return LlamaConfig(**base)


def dream_7b_config(**overrides) -> Qwen2Config:
    """The Dream-7B language model's shape (Qwen2 without the causal mask, GQA 28/4 heads)."""
    base = dict(
        vocab_size=152064,
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        max_position_embeddings=131072,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        use_sliding_window=False,
        mask_token_id=DREAM_MASK_ID,
    )
    _check_config_keys(Qwen2Config, overrides, "config override")
    base.update(overrides)
    return Qwen2Config(**base)
