"""`load`: a checkpoint folder -> a ready model, with every weight name and shape checked
against the model before and after transformers' ``from_pretrained``."""
from __future__ import annotations

import os
from typing import Any, Iterable, Mapping

import torch

from .formats import (
    LLADA_KEY_MAPPING,
    LLADA_V_KEY_MAPPING,
    _Folder,
    _LLADA_TO_CHECKPOINT,
    _LLADA_V_TO_CHECKPOINT,
    _SHOW,
    _Weights,
    _accelerate_available,
    _check_dtype_arg,
    _checkpoint_dtype,
    _detect,
    _llada_v_config,
    _llama_text_config,
    _load_tokenizer,
    _model_type,
    _olmo_text_config,
    _rename,
    _show,
)

# ----------------------------------------------------------------------------- checks
def _named(keys: Iterable[str], to_checkpoint: Mapping[str, str] | None) -> list[str]:
    return [_rename(k, to_checkpoint) if to_checkpoint else k for k in keys]


def _raise_key_problems(
    folder: _Folder,
    *,
    missing: Iterable[str],
    unexpected: Iterable[str],
    mismatched: Iterable[tuple[str, tuple, tuple]],
    index_only: set[str] = frozenset(),
) -> None:
    """Raise one ValueError describing the missing / unexpected / mismatched keys (all in
    checkpoint naming; mismatched as (key, checkpoint shape, expected shape))."""
    missing, unexpected, mismatched = sorted(set(missing)), sorted(set(unexpected)), sorted(set(mismatched))
    if not (missing or unexpected or mismatched):
        return
    parts = []
    if missing:
        note = ""
        listed = index_only & set(missing)
        if listed:
            note = (
                f"; model.safetensors.index.json lists {len(listed)} of them, but the shard files it names "
                "do not contain them"
            )
        parts.append(
            f"{len(missing)} weight(s) the model needs are missing from the checkpoint (they would be left "
            f"randomly initialised): {_show(missing)}{note}"
        )
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected tensor(s) the model has no place for: {_show(unexpected)}")
    if mismatched:
        shown = ", ".join(
            f"{k} has shape {list(got)}, expected {list(want)}" for k, got, want in mismatched[:_SHOW]
        )
        more = f", ... ({len(mismatched)} in all)" if len(mismatched) > _SHOW else f" ({len(mismatched)} in all)"
        parts.append(f"{len(mismatched)} tensor(s) with the wrong shape: {shown}{more}")
    raise folder.error(
        "the weights do not match the model described by config.json: " + "; ".join(parts) + " (names as stored in the checkpoint)"
    )


def _precheck(folder, cls, config, weights: _Weights, key_mapping, to_checkpoint) -> None:
    """Compare the stored tensor names/shapes with the model (built on the meta device)."""
    import copy

    with torch.device("meta"):
        meta = cls(copy.deepcopy(config))
    expected = {k: tuple(v.shape) for k, v in meta.state_dict().items()}
    tied = set()
    if getattr(config.get_text_config(), "tie_word_embeddings", False):
        tied = {"lm_head.weight"}
    renamed = {(_rename(k, key_mapping) if key_mapping else k): k for k in weights.shapes}
    missing = [k for k in expected if k not in renamed and k not in tied]
    unexpected = [orig for new, orig in renamed.items() if new not in expected]
    mismatched = [
        (orig, weights.shapes[orig], expected[new])
        for new, orig in renamed.items()
        if new in expected and weights.shapes[orig] != expected[new]
    ]
    _raise_key_problems(
        folder,
        missing=_named(missing, to_checkpoint),
        unexpected=unexpected,
        mismatched=mismatched,
        index_only=weights.index_only,
    )


def _check_loading_info(folder, info: dict, weights: _Weights, key_mapping, to_checkpoint) -> None:
    """Re-raise transformers' loading report (model naming) in the checkpoint's naming."""
    back = {(_rename(k, key_mapping) if key_mapping else k): k for k in weights.shapes}
    missing = _named(info.get("missing_keys") or (), to_checkpoint)
    unexpected = [back.get(k, k) for k in info.get("unexpected_keys") or ()]
    mismatched = []
    for entry in info.get("mismatched_keys") or ():
        key, first, second = entry[0], tuple(entry[1]), tuple(entry[2])
        orig = back.get(key, key)
        stored = weights.shapes.get(orig)
        # transformers reports (key, checkpoint shape, model shape)
        if stored is not None and stored == second and stored != first:
            first, second = second, first
        mismatched.append((orig, first, second))
    _raise_key_problems(folder, missing=missing, unexpected=unexpected, mismatched=mismatched)
    errors = info.get("error_msgs") or []
    if errors:
        raise folder.error("transformers reported errors while loading the weights: " + "; ".join(map(str, errors)))


# ----------------------------------------------------------------------------- load
def load(
    path: str | os.PathLike,
    *,
    dtype: torch.dtype | str | None = None,
    device: torch.device | str | int | None = None,
    device_map: str | dict | None = None,
):
    """Load a LLaDA-V or LLaDA checkpoint folder (see the module docstring for the formats).

    Args:
        path: the local checkpoint folder.
        dtype: None or "auto" = the checkpoint's (config.json ``torch_dtype``/``dtype``,
            else the dtype of the stored tensors); "float32", "bfloat16", "float16" or a
            floating ``torch.dtype``.
        device: put every weight on this device (loaded straight there when accelerate is
            installed). Exclusive with ``device_map``.
        device_map: transformers' ``device_map`` (e.g. "auto", "cpu", a dict); needs
            accelerate.
    Returns:
        `dvtp.vlm.model.LLaDAVForConditionalGeneration` (LLaDA-V) or `dvtp.models.LLaDALM`
        (LLaDA), in eval mode, with ``model.processor`` and ``model.config.mask_token_id``.
    Raises:
        FileNotFoundError: the folder does not exist.
        ValueError: anything that is not a supported, complete checkpoint (the message
            names the folder, the field/file/key and what is expected).
    """
    torch_dtype = _check_dtype_arg(dtype)
    if device is not None and device_map is not None:
        raise ValueError(
            f"pass device or device_map, not both (got device={device!r}, device_map={device_map!r})"
        )
    if device_map is not None and not _accelerate_available():
        raise ImportError(f"device_map={device_map!r} needs accelerate: pip install accelerate")
    folder = _Folder(path)
    _model_type(folder)
    weights = _Weights(folder)
    fmt = _detect(folder, weights)
    from ..vlm.processor import LLaDAVProcessor

    # config.json (with the weight names) is checked first, then the tokenizer, then the
    # weights against the model (meta device), and only then are tensors read
    processor_kwargs: dict[str, Any] = {}
    if fmt == "llada_v":
        from ..vlm.model import LLaDAVForConditionalGeneration

        cls = LLaDAVForConditionalGeneration
        config, pinpoints = _llada_v_config(folder, weights, None)
        key_mapping, to_checkpoint = LLADA_V_KEY_MAPPING, _LLADA_V_TO_CHECKPOINT
        processor_kwargs = {"image_size": config.vision_config.image_size, "grid_pinpoints": pinpoints}
    else:
        from ..models import LLaDALM

        cls = LLaDALM
        if fmt == "llada_olmo":
            config = _olmo_text_config(folder, None)
            key_mapping, to_checkpoint = LLADA_KEY_MAPPING, _LLADA_TO_CHECKPOINT
        else:
            config = _llama_text_config(folder, None)
            key_mapping, to_checkpoint = None, None
    if torch_dtype is None:
        torch_dtype = _checkpoint_dtype(folder, weights)

    tokenizer = _load_tokenizer(folder)
    mask_id = int(tokenizer.convert_tokens_to_ids("<|mdm_mask|>"))
    vocab = config.get_text_config().vocab_size
    if mask_id >= vocab:
        raise folder.error(
            f"the tokenizer's '<|mdm_mask|>' id {mask_id} is outside the model's vocabulary (vocab_size {vocab})"
        )
    cfg_mask = folder.config.get("mask_token_id") if fmt == "llada_olmo" else None
    if cfg_mask is not None and cfg_mask != mask_id:
        raise folder.error(f"config.json mask_token_id is {cfg_mask} but the tokenizer's '<|mdm_mask|>' has id {mask_id}")
    config.mask_token_id = mask_id
    config.get_text_config().mask_token_id = mask_id

    _precheck(folder, cls, config, weights, key_mapping, to_checkpoint)

    kwargs: dict[str, Any] = {}
    move_to = None
    if device_map is not None:
        kwargs["device_map"] = device_map
    elif device is not None:
        if _accelerate_available():
            kwargs["device_map"] = {"": torch.device(device) if not isinstance(device, int) else device}
        else:
            move_to = device
    model, info = cls.from_pretrained(
        str(folder.path),
        config=config,
        key_mapping=key_mapping,
        dtype=torch_dtype,
        output_loading_info=True,
        ignore_mismatched_sizes=True,  # report mismatches ourselves (below) instead of transformers' RuntimeError
        use_safetensors=True,
        local_files_only=True,
        **kwargs,
    )
    _check_loading_info(folder, info, weights, key_mapping, to_checkpoint)
    if move_to is not None:
        model = model.to(move_to)
    model.config.mask_token_id = mask_id
    model.config.get_text_config().mask_token_id = mask_id
    model.processor = LLaDAVProcessor(tokenizer, **processor_kwargs)
    return model.eval()
