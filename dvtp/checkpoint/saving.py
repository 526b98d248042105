"""`save_llada_v` / `save_llada`: write models back in the published folder formats."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch

from .formats import (
    REQUIRED_SPECIAL_TOKENS,
    _LLADA_TO_CHECKPOINT,
    _LLADA_V_TO_CHECKPOINT,
    _SO400M_NAME,
    _VISION_FIELDS,
    _rename,
)

# ----------------------------------------------------------------------------- save
def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _rope_fields(text, what: str) -> tuple[float, dict | None]:
    rope = dict(getattr(text, "rope_parameters", None) or {})
    theta = float(rope.get("rope_theta", getattr(text, "rope_theta", 10000.0)))
    kind = rope.get("rope_type", "default")
    if kind == "default":
        return theta, None
    if kind == "linear":
        return theta, {"type": "linear", "factor": float(rope["factor"])}
    raise ValueError(f"{what}: rope_type {kind!r} cannot be written (LLaDA configs support default or linear RoPE)")


def _special_token_dict(content: str) -> dict:
    return {"content": content, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False}


def _save_tokenizer(tokenizer, folder: Path) -> None:
    """tokenizer.json + tokenizer_config.json (chat template inside) + special_tokens_map.json."""
    from ..vlm.tokenizer import LLADA_CHAT_TEMPLATE

    vocab = tokenizer.get_vocab()
    missing = [t for t in REQUIRED_SPECIAL_TOKENS if t not in vocab]
    if missing:
        raise ValueError(f"the tokenizer lacks LLaDA's special token(s) {', '.join(map(repr, missing))}")
    tokenizer.save_pretrained(str(folder))
    cfg_path = folder / "tokenizer_config.json"
    with open(cfg_path, encoding="utf-8") as f:
        written = json.load(f)
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    template = tokenizer.chat_template if isinstance(getattr(tokenizer, "chat_template", None), str) else None
    named = {
        name: getattr(tokenizer, name, None)
        for name in ("bos_token", "eos_token", "pad_token", "unk_token")
        if getattr(tokenizer, name, None) is not None
    }
    extra = list(getattr(tokenizer, "extra_special_tokens", None) or [])
    if isinstance(extra, dict):  # named extra tokens
        extra = list(extra.values())
    extra = [str(t) for t in extra] or [t for t in REQUIRED_SPECIAL_TOKENS if t not in named.values()]
    decoder = {
        str(i): {
            "content": tok.content,
            "lstrip": tok.lstrip,
            "normalized": tok.normalized,
            "rstrip": tok.rstrip,
            "single_word": tok.single_word,
            "special": tok.special,
        }
        for i, tok in sorted(tokenizer.added_tokens_decoder.items())
    }
    config = {
        "add_bos_token": False,
        "add_eos_token": False,
        "added_tokens_decoder": decoder,
        "additional_special_tokens": extra,
        **{k: str(v) for k, v in named.items()},
        "chat_template": template or LLADA_CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": bool(written.get("clean_up_tokenization_spaces", False)),
        "model_input_names": ["input_ids", "attention_mask"],
        "model_max_length": written.get("model_max_length", tokenizer.model_max_length),
        "padding_side": tokenizer.padding_side,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    with open(cfg_path, "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2, ensure_ascii=False)
        f.write("\n")
    special = {"additional_special_tokens": extra, **{k: _special_token_dict(str(v)) for k, v in named.items()}}
    with open(folder / "special_tokens_map.json", "w", encoding="utf-8") as f:
        json.dump(special, f, indent=2, ensure_ascii=False)
        f.write("\n")


def _save_weights(state: dict[str, torch.Tensor], folder: Path, max_shard_size) -> None:
    """Sharded safetensors (+ index) the way transformers / LLaDA write them."""
    from huggingface_hub import split_torch_state_dict_into_shards
    from safetensors.torch import save_file

    for stale in folder.glob("model*.safetensors"):
        if stale.name == "model.safetensors" or re.fullmatch(r"model-\d{5}-of-\d{5}\.safetensors", stale.name):
            stale.unlink()
    (folder / "model.safetensors.index.json").unlink(missing_ok=True)
    split = split_torch_state_dict_into_shards(
        state, filename_pattern="model{suffix}.safetensors", max_shard_size=max_shard_size
    )
    seen: set[int] = set()
    for filename, names in split.filename_to_tensors.items():
        shard = {}
        for name in names:
            t = state[name].detach()
            if t.device.type == "meta":
                raise ValueError(f"cannot save {name!r}: it is on the meta device (offloaded weights are not supported)")
            t = t.to("cpu").contiguous()
            if t.untyped_storage().data_ptr() in seen:  # never two names on one storage
                t = t.clone()
            seen.add(t.untyped_storage().data_ptr())
            shard[name] = t
        save_file(shard, str(folder / filename), metadata={"format": "pt"})
        del shard
    if split.is_sharded:
        index = {"metadata": {"total_size": int(split.metadata.get("total_size", 0))}, "weight_map": split.tensor_to_filename}
        if not index["metadata"]["total_size"]:
            index["metadata"]["total_size"] = sum(t.numel() * t.element_size() for t in state.values())
        with open(folder / "model.safetensors.index.json", "w", encoding="utf-8") as f:
            json.dump(index, f, indent=2, sort_keys=True)
            f.write("\n")


def _write_config(folder: Path, config: dict) -> None:
    with open(folder / "config.json", "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
        f.write("\n")


def _tokenizer_of(model, tokenizer, what: str):
    if tokenizer is None:
        tokenizer = getattr(getattr(model, "processor", None), "tokenizer", None)
    if tokenizer is None:
        raise ValueError(f"{what}: the model has no processor with a tokenizer; pass tokenizer=")
    return tokenizer


def _param_dtype(model) -> torch.dtype:
    return next(model.parameters()).dtype


def save_llada_v(model, path: str | os.PathLike, *, max_shard_size: int | str = "2GB", tokenizer=None) -> None:
    """Write an `LLaDAVForConditionalGeneration` as a LLaDA-V checkpoint folder.

    Writes ``config.json`` (``model_type "llava_llada"``, Llama-style language fields and
    LLaVA fields, ``image_grid_pinpoints`` as ``[width, height]``), the weights under
    LLaDA-V's names as safetensors shards of at most ``max_shard_size`` (+
    ``model.safetensors.index.json`` when there are several; metadata ``{"format":
    "pt"}``) and the tokenizer (``model.processor.tokenizer`` unless ``tokenizer`` is
    given): ``tokenizer.json``, ``tokenizer_config.json`` with the chat template inside,
    ``special_tokens_map.json``. A tower that is not SigLIP so400m-patch14-384 is described
    by an extra ``dvtp_vision_config`` field. Previous weight files in ``path`` are removed.
    """
    from ..vlm.config import siglip_so400m_config
    from ..vlm.model import LLaDAVForConditionalGeneration

    what = "save_llada_v"
    if not isinstance(model, LLaDAVForConditionalGeneration):
        raise TypeError(f"{what}: expected an LLaDAVForConditionalGeneration, got {type(model).__name__}")
    tokenizer = _tokenizer_of(model, tokenizer, what)
    cfg = model.config
    text, vision = cfg.text_config, cfg.vision_config
    problems = []
    if cfg.vision_feature_layer != -1:
        problems.append(f"vision_feature_layer is {cfg.vision_feature_layer} (LLaDA-V uses the tower's last layer: -1)")
    if cfg.vision_feature_select_strategy != "full":
        problems.append(f"vision_feature_select_strategy is {cfg.vision_feature_select_strategy!r} (expected 'full')")
    if cfg.projector_hidden_act != "gelu" or not getattr(cfg, "multimodal_projector_bias", True):
        problems.append("the projector is not mlp2x_gelu (Linear with bias, exact GELU, Linear with bias)")
    aspect = getattr(cfg, "vision_aspect_ratio", None)
    if not (isinstance(aspect, str) and re.fullmatch(r"anyres_max_\d+", aspect)):
        problems.append(f"vision_aspect_ratio is {aspect!r} (expected 'anyres_max_N')")
    if getattr(text, "mlp_bias", False):
        problems.append("the language model's MLP has biases (LLaDA's has none)")
    if getattr(vision, "vision_use_head", False):
        problems.append("the SigLIP tower has a pooling head (LLaDA-V's has none)")
    if problems:
        raise ValueError(f"{what}: this model cannot be written in LLaDA-V's format: " + "; ".join(problems))
    theta, scaling = _rope_fields(text, what)

    folder = Path(path).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    state = {_rename(k, _LLADA_V_TO_CHECKPOINT): v for k, v in model.state_dict().items()}
    if text.tie_word_embeddings:
        state.pop("lm_head.weight", None)

    so400m = siglip_so400m_config(num_hidden_layers=vision.num_hidden_layers)
    is_so400m = all(getattr(vision, f) == getattr(so400m, f) for f in _VISION_FIELDS)
    pinpoints = [[int(w), int(h)] for h, w in cfg.image_grid_pinpoints]  # stored [h, w] -> LLaDA-V's [w, h]
    config = {
        "architectures": ["LlavaLLaDAModelLM"],
        "model_type": "llava_llada",
        "attention_bias": bool(getattr(text, "attention_bias", False)),
        "attention_dropout": 0.0,
        "bos_token_id": text.bos_token_id,
        "eos_token_id": text.eos_token_id,
        "pad_token_id": text.pad_token_id,
        "hidden_act": text.hidden_act,
        "hidden_size": text.hidden_size,
        "initializer_range": getattr(text, "initializer_range", 0.02),
        "intermediate_size": text.intermediate_size,
        "max_position_embeddings": text.max_position_embeddings,
        "num_attention_heads": text.num_attention_heads,
        "num_hidden_layers": text.num_hidden_layers,
        "num_key_value_heads": text.num_key_value_heads,
        "pretraining_tp": 1,
        "rms_norm_eps": text.rms_norm_eps,
        "rope_scaling": scaling,
        "rope_theta": theta,
        "tie_word_embeddings": bool(text.tie_word_embeddings),
        "torch_dtype": _dtype_name(_param_dtype(model)),
        "use_cache": False,
        "vocab_size": text.vocab_size,
        "image_aspect_ratio": aspect,
        "image_grid_pinpoints": pinpoints,
        "mm_hidden_size": vision.hidden_size,
        "mm_newline_position": "grid",
        "mm_patch_merge_type": "spatial_unpad",
        "mm_projector_type": "mlp2x_gelu",
        "mm_resampler_type": None,
        "mm_use_im_patch_token": False,
        "mm_use_im_start_end": False,
        "mm_vision_select_feature": "patch",
        "mm_vision_select_layer": -2,
        "mm_vision_tower": _SO400M_NAME if is_so400m else f"siglip-custom-patch{vision.patch_size}-{vision.image_size}",
        "tokenizer_model_max_length": int(min(tokenizer.model_max_length, 2**31 - 1)),
        "tokenizer_padding_side": tokenizer.padding_side,
        "use_mm_proj": True,
    }
    if not is_so400m:
        config["dvtp_vision_config"] = {f: getattr(vision, f) for f in _VISION_FIELDS}
    _save_weights(state, folder, max_shard_size)
    _write_config(folder, config)
    _save_tokenizer(tokenizer, folder)


def save_llada(model, path: str | os.PathLike, *, max_shard_size: int | str = "2GB", tokenizer=None) -> None:
    """Write an `LLaDALM` as an OLMo-style LLaDA-8B checkpoint folder.

    ``config.json`` has LLaDA-8B's fields (``model_type "llada"``, ``d_model``,
    ``n_heads``, ``n_kv_heads``, ``n_layers``, ``mlp_hidden_size``, ``embedding_size``,
    ``mask_token_id``, ...; no dtype field, as LLaDA-8B's: the stored tensors' dtype is the
    checkpoint's), weights under ``model.transformer.*`` names, tokenizer as in
    `save_llada_v`.
    """
    from ..models import LLaDALM

    what = "save_llada"
    if not isinstance(model, LLaDALM):
        raise TypeError(f"{what}: expected a dvtp.models.LLaDALM, got {type(model).__name__}")
    tokenizer = _tokenizer_of(model, tokenizer, what)
    cfg = model.config
    problems = []
    if getattr(cfg, "attention_bias", False) or getattr(cfg, "mlp_bias", False):
        problems.append("it has linear biases (LLaDA-8B's format has none)")
    if cfg.hidden_act != "silu":
        problems.append(f"hidden_act is {cfg.hidden_act!r} (expected 'silu')")
    head_dim = getattr(cfg, "head_dim", None)
    if head_dim is not None and head_dim * cfg.num_attention_heads != cfg.hidden_size:
        problems.append(f"head_dim {head_dim} * heads != hidden_size (the OLMo format has no head_dim field)")
    theta, scaling = _rope_fields(cfg, what)
    if scaling is not None:
        problems.append("it uses RoPE scaling (the OLMo format has none)")
    if problems:
        raise ValueError(f"{what}: this model cannot be written in LLaDA-8B's format: " + "; ".join(problems))
    mask = getattr(cfg, "mask_token_id", None)
    if mask is None:
        mask = tokenizer.convert_tokens_to_ids("<|mdm_mask|>")

    folder = Path(path).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    state = {_rename(k, _LLADA_TO_CHECKPOINT): v for k, v in model.state_dict().items()}
    if cfg.tie_word_embeddings:
        state.pop("model.transformer.ff_out.weight", None)
    config = {
        "architectures": ["LLaDAModelLM"],
        "model_type": "llada",
        "activation_type": "silu",
        "alibi": False,
        "attention_layer_norm": False,
        "bias_for_layer_norm": False,
        "block_type": "llama",
        "d_model": cfg.hidden_size,
        "embedding_size": cfg.vocab_size,
        "eos_token_id": cfg.eos_token_id,
        "include_bias": False,
        "include_qkv_bias": False,
        "input_emb_norm": False,
        "layer_norm_type": "rms",
        "layer_norm_with_affine": True,
        "mask_token_id": int(mask),
        "max_sequence_length": cfg.max_position_embeddings,
        "mlp_hidden_size": cfg.intermediate_size,
        "multi_query_attention": None,
        "n_heads": cfg.num_attention_heads,
        "n_kv_heads": cfg.num_key_value_heads,
        "n_layers": cfg.num_hidden_layers,
        "pad_token_id": cfg.pad_token_id,
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope": True,
        "rope_theta": theta,
        "scale_logits": False,
        "use_cache": False,
        "vocab_size": cfg.vocab_size,
        "weight_tying": bool(cfg.tie_word_embeddings),
    }
    _save_weights(state, folder, max_shard_size)
    _write_config(folder, config)
    _save_tokenizer(tokenizer, folder)
