"""`load`: a checkpoint folder -> a ready model, with every weight name and shape checked
against the model before and after transformers' ``from_pretrained``."""
from __future__ import annotations

import contextlib
import os
import sys
from typing import Any, Iterable, Mapping

import torch

from ..devices import resolve_device, usable_devices
from .formats import (
    LLADA_KEY_MAPPING,
    LLADA_V_KEY_MAPPING,
    _Folder,
    _LLADA_TO_CHECKPOINT,
    _LLADA_V_TO_CHECKPOINT,
    _SAFETENSORS_DTYPES,
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
    want_dtypes = {k: v.dtype for k, v in meta.state_dict().items()}
    _check_stored_dtypes(folder, weights, {orig: want_dtypes[new] for new, orig in renamed.items()})


def _check_stored_dtypes(folder, weights: _Weights, expected: Mapping[str, torch.dtype]) -> None:
    """Every stored tensor's dtype (from the safetensors headers) must fit its parameter:
    a floating parameter takes F16 / BF16 / F32 / F64 (converted to the load dtype, as
    ``dtype=`` asks); anything else (I32, U8, BOOL, F8, ...) would be cast silently by
    transformers, so it is an error naming the file, the key and the dtypes."""
    bad = []
    for key, want in expected.items():
        stored = weights.dtypes[key]
        if want.is_floating_point:
            ok = stored in _SAFETENSORS_DTYPES
        else:  # no such parameter in these models today; an exact match is the only safe rule
            ok = _SAFETENSORS_DTYPES.get(stored) == want
        if not ok:
            bad.append((key, stored, want))
    if not bad:
        return
    bad.sort()
    names = {"I8": "int8", "I16": "int16", "I32": "int32", "I64": "int64", "U8": "uint8", "BOOL": "bool",
             "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}
    shown = ", ".join(
        f"{k} (in {weights.files[k]}) is stored as {got}" + (f" ({names[got]})" if got in names else "")
        for k, got, _ in bad[:_SHOW]
    )
    more = f", ... ({len(bad)} in all)" if len(bad) > _SHOW else f" ({len(bad)} in all)"
    raise folder.error(
        f"{len(bad)} tensor(s) are stored in a dtype their floating-point parameter cannot take: {shown}{more}; "
        "expected F16, BF16 or F32 (float16, bfloat16, float32 may be mixed: dtype= converts them; F64 is also "
        "read); an integer or 8-bit float tensor would be cast silently, so the checkpoint is refused"
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


# ----------------------------------------------------------------------------- arguments
#: accelerate's placement strategies (a device_map that is not a device)
_DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")


def _check_device_map(device_map: Any) -> str | dict:
    """``device_map`` checked before anything is read: a strategy name, one device (->
    ``{"": device}``), or a dict of module name -> device. Devices go through
    `dvtp.devices.resolve_device`, so an absent CUDA device is a ValueError naming
    ``device_map`` and the devices usable here, not a raw torch error."""
    if isinstance(device_map, str) and device_map in _DEVICE_MAP_STRATEGIES:
        return device_map
    if isinstance(device_map, (str, int, torch.device)) and not isinstance(device_map, bool):
        try:
            return {"": resolve_device(device_map, name="device_map")}
        except ValueError as err:
            if not str(err).startswith("device_map must be"):
                raise  # a device, but not one usable here: that message says so
    if isinstance(device_map, dict) and device_map:
        out = {}
        for key, value in device_map.items():
            if not isinstance(key, str):
                raise ValueError(f"device_map keys must be module names (str), got {key!r}")
            # "disk" would need an offload folder, which load does not take
            out[key] = resolve_device(value, name=f"device_map[{key!r}]")
        return out
    raise ValueError(
        f"device_map must be one of {', '.join(map(repr, _DEVICE_MAP_STRATEGIES))}, a device ('cpu', 'cuda', "
        f"'cuda:<index>'; usable here: {', '.join(map(repr, usable_devices()))}) or a dict of module name -> "
        f"device, got {device_map!r}"
    )


def _check_progress(progress: Any) -> bool:
    """``progress`` (None / True / False) -> whether transformers' loading bar is shown."""
    if progress is not None and not isinstance(progress, bool):
        raise ValueError(f"progress must be None (a bar only on a terminal), True or False, got {progress!r}")
    if progress is not None:
        return progress
    from transformers.utils import logging as hf_logging

    isatty = getattr(sys.stderr, "isatty", None)
    try:
        tty = bool(isatty()) if isatty is not None else False
    except (OSError, ValueError):  # a closed or detached stream
        tty = False
    # on a terminal the caller's global switch (disable_progress_bar) is respected
    return tty and hf_logging.is_progress_bar_enabled()


@contextlib.contextmanager
def _progress_bars(show: bool):
    """transformers' progress bars (its "Loading weights" bar) on or off inside the block,
    with transformers' own switch; the previous setting (transformers' and the hub's,
    which that switch also sets) is restored afterwards, whatever happens."""
    from huggingface_hub import utils as hub_utils
    from transformers.utils import logging as hf_logging

    was_on = hf_logging.is_progress_bar_enabled()
    if was_on == show:
        yield
        return
    hub_was_off = hub_utils.are_progress_bars_disabled()
    (hf_logging.enable_progress_bar if show else hf_logging.disable_progress_bar)()
    try:
        yield
    finally:
        (hf_logging.enable_progress_bar if was_on else hf_logging.disable_progress_bar)()
        if hub_utils.are_progress_bars_disabled() != hub_was_off:
            (hub_utils.disable_progress_bars if hub_was_off else hub_utils.enable_progress_bars)()


# ----------------------------------------------------------------------------- load
def load(
    path: str | os.PathLike,
    *,
    dtype: torch.dtype | str | None = None,
    device: torch.device | str | int | None = None,
    device_map: str | dict | None = None,
    progress: bool | None = None,
):
    """Load a LLaDA-V or LLaDA checkpoint folder (see the module docstring for the formats).

    Every argument is checked, then config.json, the tokenizer and the weight names,
    shapes and dtypes (from the safetensors headers), before any tensor is read.

    Args:
        path: the local checkpoint folder (never downloaded: dvtp reads local files only).
        dtype: None or "auto" = the checkpoint's (config.json ``torch_dtype``/``dtype``,
            else the dtype of the stored tensors); "float32", "bfloat16", "float16" or a
            floating ``torch.dtype``. Stored float16 / bfloat16 / float32 tensors are
            converted to it; integer or 8-bit float tensors are refused.
        device: put every weight on this device: "cpu", "cuda", "cuda:N", a CUDA index or
            a ``torch.device`` (loaded straight there when accelerate is installed).
            Exclusive with ``device_map``.
        device_map: transformers' ``device_map``: "auto", "balanced", "balanced_low_0",
            "sequential", one device, or a dict of module name -> device; needs
            accelerate.
        progress: transformers' "Loading weights" bar on stderr: None (default) = only
            when stderr is a terminal (and transformers' bars are not disabled globally);
            True = always; False = never. transformers' setting is restored afterwards.
    Returns:
        `dvtp.vlm.model.LLaDAVForConditionalGeneration` (LLaDA-V) or `dvtp.models.LLaDALM`
        (LLaDA), in eval mode, with ``model.processor`` and ``model.config.mask_token_id``.
    Raises:
        FileNotFoundError: the folder does not exist.
        ValueError: a bad argument (naming it and what is accepted; a device that is not
            usable here names the devices that are), or anything that is not a
            supported, complete checkpoint (the message names the folder, the
            field/file/key and what is expected).
    """
    torch_dtype = _check_dtype_arg(dtype)
    if device is not None and device_map is not None:
        raise ValueError(
            f"pass device or device_map, not both (got device={device!r}, device_map={device_map!r})"
        )
    target = resolve_device(device, name="device") if device is not None else None
    if device_map is not None:
        checked_map = _check_device_map(device_map)
        if not _accelerate_available():
            raise ImportError(f"device_map={device_map!r} needs accelerate: pip install accelerate")
        device_map = checked_map
    show_progress = _check_progress(progress)
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
    elif target is not None:
        if _accelerate_available():
            kwargs["device_map"] = {"": target}
        else:
            move_to = target
    with _progress_bars(show_progress):
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
