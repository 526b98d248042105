"""Reading a checkpoint folder: its config.json and weight headers, which published
format it is, the transformers configs it describes, the key mappings and the tokenizer
(see `dvtp.checkpoint` for the formats)."""
from __future__ import annotations

import importlib.util
import json
import os
import re
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch

REQUIRED_SPECIAL_TOKENS = (
    "<|mdm_mask|>",
    "<|eot_id|>",
    "<|startoftext|>",
    "<|endoftext|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
)

#: LLaDA-V checkpoint name -> transformers name (regex -> replacement, applied in order)
LLADA_V_KEY_MAPPING: dict[str, str] = {
    r"^model\.vision_tower\.vision_tower\.vision_model\.": "model.vision_tower.",
    r"^model\.mm_projector\.0\.": "model.multi_modal_projector.linear_1.",
    r"^model\.mm_projector\.2\.": "model.multi_modal_projector.linear_2.",
    r"^model\.embed_tokens\.": "model.language_model.embed_tokens.",
    r"^model\.layers\.": "model.language_model.layers.",
    r"^model\.norm\.": "model.language_model.norm.",
}

_OLMO_BLOCK = {
    "q_proj": "self_attn.q_proj",
    "k_proj": "self_attn.k_proj",
    "v_proj": "self_attn.v_proj",
    "attn_out": "self_attn.o_proj",
    "ff_proj": "mlp.gate_proj",
    "up_proj": "mlp.up_proj",
    "ff_out": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ff_norm": "post_attention_layernorm",
}

#: OLMo-style LLaDA-8B checkpoint name -> transformers (Llama) name
LLADA_KEY_MAPPING: dict[str, str] = {
    r"^model\.transformer\.wte\.": "model.embed_tokens.",
    r"^model\.transformer\.ln_f\.": "model.norm.",
    r"^model\.transformer\.ff_out\.": "lm_head.",
    **{rf"^model\.transformer\.blocks\.(\d+)\.{src}\.": rf"model.layers.\1.{dst}." for src, dst in _OLMO_BLOCK.items()},
}

# the inverse mappings (transformers name -> published name), used by the writers and
# to name missing weights in the checkpoint's own naming
_LLADA_V_TO_CHECKPOINT: dict[str, str] = {
    r"^model\.vision_tower\.": "model.vision_tower.vision_tower.vision_model.",
    r"^model\.multi_modal_projector\.linear_1\.": "model.mm_projector.0.",
    r"^model\.multi_modal_projector\.linear_2\.": "model.mm_projector.2.",
    r"^model\.language_model\.": "model.",
}
_LLADA_TO_CHECKPOINT: dict[str, str] = {
    r"^model\.embed_tokens\.": "model.transformer.wte.",
    r"^model\.norm\.": "model.transformer.ln_f.",
    r"^lm_head\.": "model.transformer.ff_out.",
    **{
        rf"^model\.layers\.(\d+)\.{re.escape(dst)}\.": rf"model.transformer.blocks.\1.{src}."
        for src, dst in _OLMO_BLOCK.items()
    },
}

_DTYPE_NAMES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
#: the stored dtypes a floating-point parameter may be loaded from: transformers converts
#: them to the load dtype (that is what ``dtype=`` is for); any other (I32, U8, BOOL,
#: the F8 formats, ...) would be cast silently, so a checkpoint holding one is refused
_SAFETENSORS_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16, "F64": torch.float64}
_TOWER_PREFIX = "model.vision_tower.vision_tower.vision_model."
_SO400M_NAME = "google/siglip2-so400m-patch14-384"
_VISION_FIELDS = (
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_channels",
    "image_size",
    "patch_size",
    "hidden_act",
    "layer_norm_eps",
)
_SHOW = 5  # keys shown in an error message

_REQUIRED = object()


# ----------------------------------------------------------------------------- helpers
def _rename(key: str, mapping: Mapping[str, str]) -> str:
    """Apply a key mapping the way transformers does: every pattern in turn (chained)."""
    for pattern, replacement in mapping.items():
        key = re.sub(pattern, replacement, key, count=1)
    return key


def _accelerate_available() -> bool:
    return importlib.util.find_spec("accelerate") is not None


def _show(keys: Iterable[str]) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:_SHOW])
    more = f", ... ({len(keys)} in all)" if len(keys) > _SHOW else f" ({len(keys)} in all)"
    return shown + more


class _Folder:
    """A checkpoint folder: its config.json and an error-message helper."""

    def __init__(self, path: str | os.PathLike):
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path must be a str or os.PathLike naming a checkpoint folder, got {type(path).__name__}")
        self.path = Path(path).expanduser()
        if not self.path.exists():
            raise FileNotFoundError(f"checkpoint folder {str(self.path)!r} does not exist")
        if not self.path.is_dir():
            raise ValueError(
                f"{str(self.path)!r} is not a folder: pass the checkpoint folder that holds config.json, "
                "the safetensors weights and the tokenizer files"
            )
        config_file = self.path / "config.json"
        if not config_file.is_file():
            raise ValueError(f"{self}: no config.json (expected a LLaDA-V or LLaDA checkpoint folder)")
        self.config = self.read_json("config.json")
        if not isinstance(self.config, dict):
            raise ValueError(f"{self}: config.json must hold a JSON object, got {type(self.config).__name__}")

    def __str__(self) -> str:
        return f"checkpoint folder {str(self.path)!r}"

    def error(self, message: str) -> ValueError:
        return ValueError(f"{self}: {message}")

    def read_json(self, name: str) -> Any:
        try:
            with open(self.path / name, encoding="utf-8") as f:
                return json.load(f)
        except json.JSONDecodeError as e:
            raise self.error(f"{name} is not valid JSON ({e})") from None
        except UnicodeDecodeError as e:
            raise self.error(f"{name} is not UTF-8 text ({e})") from None

    def field(self, name: str, kind: str, default: Any = _REQUIRED) -> Any:
        """config.json field ``name`` checked to be of ``kind``: "int+" (positive int),
        "float+" (positive number, returned as float), "bool", "str", "int?" (int or null).
        Absent (or null, except for "int?") -> ``default``; no default -> required."""
        cfg = self.config
        if name not in cfg or (cfg[name] is None and default is not _REQUIRED and kind != "int?"):
            if default is _REQUIRED:
                raise self.error(f"config.json has no {name!r} field (required for {self.kind_name})")
            return default
        value = cfg[name]
        ok = {
            "int+": isinstance(value, int) and not isinstance(value, bool) and value > 0,
            "int?": value is None or (isinstance(value, int) and not isinstance(value, bool)),
            "float+": isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0,
            "bool": isinstance(value, bool),
            "str": isinstance(value, str),
        }[kind]
        if not ok:
            what = {
                "int+": "a positive integer",
                "int?": "an integer or null",
                "float+": "a positive number",
                "bool": "true or false",
                "str": "a string",
            }[kind]
            raise self.error(f"config.json field {name!r} must be {what}, got {value!r}")
        return float(value) if kind == "float+" else value

    def expect(self, name: str, expected: Any, *, default: Any = None, note: str = "") -> None:
        """config.json field ``name`` (``default`` when absent) must equal ``expected``
        (or be one of a tuple of them)."""
        value = self.config.get(name, default)
        allowed = expected if isinstance(expected, tuple) else (expected,)
        if not any(type(a) is type(value) and a == value for a in allowed):
            exp = " or ".join(json.dumps(a) for a in allowed)
            raise self.error(
                f"config.json field {name!r} is {json.dumps(value)}, expected {exp}" + (f" ({note})" if note else "")
            )

    kind_name = "a LLaDA checkpoint"


class _Weights:
    """The tensors a folder holds, read from the safetensors headers only."""

    def __init__(self, folder: _Folder):
        from safetensors import safe_open

        self.shapes: dict[str, tuple[int, ...]] = {}
        self.dtypes: dict[str, str] = {}  # safetensors dtype names ("F32", "BF16", "I32", ...)
        self.files: dict[str, str] = {}  # key -> the file holding it
        self.index_only: set[str] = set()  # listed by the index, absent from their file
        path = folder.path
        single = path / "model.safetensors"
        index = path / "model.safetensors.index.json"
        if single.is_file():  # transformers' order: a single file wins over an index
            files = {"model.safetensors": None}
            self.index_file = None
        elif index.is_file():
            data = folder.read_json("model.safetensors.index.json")
            weight_map = data.get("weight_map") if isinstance(data, dict) else None
            if not isinstance(weight_map, dict) or not weight_map:
                raise folder.error("model.safetensors.index.json has no (or an empty) 'weight_map' object")
            files: dict[str, set[str] | None] = {}
            for key, name in weight_map.items():
                if not isinstance(name, str) or "/" in name or "\\" in name:
                    raise folder.error(f"model.safetensors.index.json maps {key!r} to {name!r}: expected a file name")
                files.setdefault(name, set()).add(key)
            absent = sorted(name for name in files if not (path / name).is_file())
            if absent:
                raise folder.error(
                    f"model.safetensors.index.json names shard file(s) that are not in the folder: "
                    f"{', '.join(absent)} ({len(absent)} of {len(files)} shards missing)"
                )
            self.index_file = index
        else:
            others = sorted(p.name for p in path.iterdir() if p.suffix in (".safetensors", ".bin", ".pt", ".pth"))
            raise folder.error(
                "no weights: expected model.safetensors, or model.safetensors.index.json and the shards it names"
                + (f" (found {', '.join(others)}; only safetensors with these names are read)" if others else "")
            )
        for name, listed in files.items():
            try:
                with safe_open(str(path / name), framework="pt") as f:
                    header = {key: f.get_slice(key) for key in f.keys()}
                    header = {key: (tuple(s.get_shape()), s.get_dtype()) for key, s in header.items()}
            except Exception as e:  # noqa: BLE001 - safetensors' own error types
                raise folder.error(f"{name} is not a readable safetensors file ({type(e).__name__}: {e})") from None
            keys = list(header)
            for key, (shape, dtype) in header.items():
                if key in self.shapes:
                    raise folder.error(f"tensor {key!r} is stored twice (again in {name})")
                self.shapes[key], self.dtypes[key], self.files[key] = shape, dtype, name
            if listed is not None:
                self.index_only |= listed - set(keys)
        if not self.shapes:
            raise folder.error("the safetensors weights hold no tensors")

    def stored_dtype(self) -> torch.dtype | None:
        """The floating dtype most tensors are stored in (None if none is a known float)."""
        counts: dict[torch.dtype, int] = {}
        for name in self.dtypes.values():
            if name in _SAFETENSORS_DTYPES:
                dtype = _SAFETENSORS_DTYPES[name]
                counts[dtype] = counts.get(dtype, 0) + 1
        return max(counts, key=counts.get) if counts else None


def _check_dtype_arg(dtype: Any) -> torch.dtype | None:
    """``None``/"auto" -> None (the checkpoint's); a name or floating torch dtype -> it."""
    if dtype is None or (isinstance(dtype, str) and dtype == "auto"):
        return None
    if isinstance(dtype, str):
        if dtype in _DTYPE_NAMES:
            return _DTYPE_NAMES[dtype]
    elif isinstance(dtype, torch.dtype) and dtype.is_floating_point:
        return dtype
    raise ValueError(
        f"dtype must be None or 'auto' (the checkpoint's dtype), 'float32', 'bfloat16', 'float16' "
        f"or a floating torch.dtype, got {dtype!r}"
    )


def _checkpoint_dtype(folder: _Folder, weights: _Weights) -> torch.dtype:
    for name in ("torch_dtype", "dtype"):
        value = folder.config.get(name)
        if value is None:
            continue
        if isinstance(value, str) and value.removeprefix("torch.") in _DTYPE_NAMES:
            return _DTYPE_NAMES[value.removeprefix("torch.")]
        raise folder.error(
            f"config.json field {name!r} is {value!r}, expected 'float32', 'bfloat16' or 'float16' "
            "(or pass dtype= to load)"
        )
    stored = weights.stored_dtype()
    return stored if stored is not None else torch.float32


# ----------------------------------------------------------------------------- formats
def _model_type(folder: _Folder) -> str:
    """config.json's model_type (from ``architectures`` when absent): "llava_llada" or "llada"."""
    cfg = folder.config
    model_type = cfg.get("model_type")
    archs = cfg.get("architectures") or []
    archs = archs if isinstance(archs, list) else [archs]
    if model_type is None:
        if "LlavaLLaDAModelLM" in archs:
            model_type = "llava_llada"
        elif "LLaDAModelLM" in archs:
            model_type = "llada"
    if model_type not in ("llava_llada", "llada"):
        raise folder.error(
            f"unsupported model_type {model_type!r} (architectures {archs!r}) in config.json; expected 'llava_llada' "
            "(LLaDA-V, LlavaLLaDAModelLM) or 'llada' (LLaDA-8B Instruct/Base, LLaDAModelLM)"
        )
    return model_type


def _detect(folder: _Folder, weights: _Weights) -> str:
    """-> "llada_v", "llada_olmo" or "llada_llama" (config.json fields checked against the weight names)."""
    cfg = folder.config
    model_type = _model_type(folder)
    keys = weights.shapes.keys()
    if model_type == "llava_llada":
        folder.kind_name = "a LLaDA-V checkpoint"
        if any(k.startswith("model.transformer.") for k in keys):
            raise folder.error(
                "config.json says LLaDA-V (model_type 'llava_llada') but the weights have OLMo-style names "
                "(model.transformer.*); expected model.layers.*, model.mm_projector.*, model.vision_tower.*"
            )
        return "llada_v"
    if model_type == "llada":
        folder.kind_name = "a LLaDA checkpoint"
        olmo_cfg = "d_model" in cfg
        llama_cfg = "hidden_size" in cfg
        olmo_keys = any(k.startswith("model.transformer.") for k in keys)
        llama_keys = any(k.startswith("model.layers.") for k in keys)
        if olmo_cfg and not llama_cfg:
            if llama_keys and not olmo_keys:
                raise folder.error(
                    "config.json has OLMo-style fields (d_model, n_layers, ...) but the weights have Llama-style "
                    "names (model.layers.*); expected model.transformer.* names"
                )
            return "llada_olmo"
        if llama_cfg and not olmo_cfg:
            if olmo_keys and not llama_keys:
                raise folder.error(
                    "config.json has Llama-style fields (hidden_size, num_hidden_layers, ...) but the weights have "
                    "OLMo-style names (model.transformer.*); expected model.layers.* names"
                )
            return "llada_llama"
        raise folder.error(
            "config.json (model_type 'llada') must have either the OLMo-style fields of LLaDA-8B (d_model, n_heads, "
            "n_layers, ...) or Llama-style fields (hidden_size, num_attention_heads, num_hidden_layers, ...)"
        )
    raise AssertionError(model_type)  # _model_type allows no other


def _rope_parameters(folder: _Folder) -> dict:
    theta = folder.field("rope_theta", "float+", 10000.0)
    scaling = folder.config.get("rope_scaling")
    if scaling is None:
        return {"rope_type": "default", "rope_theta": theta}
    kind = scaling.get("type", scaling.get("rope_type")) if isinstance(scaling, dict) else None
    factor = scaling.get("factor") if isinstance(scaling, dict) else None
    if kind == "linear" and isinstance(factor, (int, float)) and not isinstance(factor, bool) and factor > 0:
        return {"rope_type": "linear", "factor": float(factor), "rope_theta": theta}
    raise folder.error(
        f"config.json field 'rope_scaling' is {json.dumps(scaling)}, expected null or "
        '{"type": "linear", "factor": <positive number>}'
    )


def _token_ids(folder: _Folder, vocab: int) -> dict:
    """bos/eos/pad ids of config.json (metadata only: dvtp takes its ids from the tokenizer).
    An id outside the vocabulary (LLaDA-V's config.json carries Llama-3's bos 128000) is
    dropped (None); eos may be a list."""
    out = {}
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = folder.config.get(name)
        ids = value if isinstance(value, list) and name == "eos_token_id" else [value]
        if any(v is not None and (isinstance(v, bool) or not isinstance(v, int)) for v in ids):
            raise folder.error(f"config.json field {name!r} must be a token id (integer) or null, got {value!r}")
        ids = [v for v in ids if v is not None and 0 <= v < vocab]
        out[name] = (ids if isinstance(value, list) else ids[0]) if ids else None
    return out


def _llama_text_config(folder: _Folder, mask_id: int | None):
    """LlamaConfig from the Llama-style fields LLaDA-V's (and rename_checkpoint's) config.json use."""
    from transformers import LlamaConfig
    from transformers.activations import ACT2FN

    hidden = folder.field("hidden_size", "int+")
    heads = folder.field("num_attention_heads", "int+")
    kv_heads = folder.field("num_key_value_heads", "int+", heads)
    if hidden % heads:
        raise folder.error(f"hidden_size {hidden} is not a multiple of num_attention_heads {heads}")
    if heads % kv_heads:
        raise folder.error(f"num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}")
    act = folder.field("hidden_act", "str", "silu")
    if act not in ACT2FN:
        raise folder.error(f"config.json field 'hidden_act' is {act!r}, expected an activation name such as 'silu'")
    vocab = folder.field("vocab_size", "int+")
    return LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=folder.field("intermediate_size", "int+"),
        num_hidden_layers=folder.field("num_hidden_layers", "int+"),
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        hidden_act=act,
        max_position_embeddings=folder.field("max_position_embeddings", "int+", 2048),
        rms_norm_eps=folder.field("rms_norm_eps", "float+", 1e-6),
        rope_parameters=_rope_parameters(folder),
        attention_bias=folder.field("attention_bias", "bool", False),
        mlp_bias=False,
        tie_word_embeddings=folder.field("tie_word_embeddings", "bool", False),
        **_token_ids(folder, vocab),
        mask_token_id=mask_id,
        initializer_range=folder.field("initializer_range", "float+", 0.02),
        use_cache=False,
    )


def _olmo_text_config(folder: _Folder, mask_id: int | None):
    """LlamaConfig from LLaDA-8B's OLMo-style config.json (checked to be a Llama block)."""
    from transformers import LlamaConfig

    folder.expect("block_type", "llama", default="sequential", note="only LLaDA's Llama-style block is supported")
    folder.expect("layer_norm_type", "rms", default="default", note="LLaDA uses RMSNorm")
    folder.expect("activation_type", "silu", default="swiglu", note="LLaDA's Llama block uses SiLU(gate) * up")
    folder.expect("include_bias", False, default=True, note="LLaDA's linear layers have no bias")
    folder.expect("include_qkv_bias", False, default=False, note="LLaDA's q/k/v projections have no bias")
    for name, expected, why in (
        ("alibi", False, "LLaDA uses RoPE"),
        ("rope", True, "LLaDA uses RoPE"),
        ("scale_logits", False, "not part of LLaDA"),
        ("input_emb_norm", False, "not part of LLaDA"),
        ("attention_layer_norm", False, "not part of LLaDA"),
        ("layer_norm_with_affine", True, "LLaDA's norms have weights"),
        ("bias_for_layer_norm", (False, None), "RMSNorm has no bias"),
        ("clip_qkv", None, "not part of LLaDA"),
    ):
        if name in folder.config:
            folder.expect(name, expected, note=why)
    hidden = folder.field("d_model", "int+")
    heads = folder.field("n_heads", "int+")
    if folder.config.get("multi_query_attention"):
        kv_heads = 1
    else:
        kv_heads = folder.field("n_kv_heads", "int+", heads)
    if hidden % heads:
        raise folder.error(f"d_model {hidden} is not a multiple of n_heads {heads}")
    if heads % kv_heads:
        raise folder.error(f"n_heads {heads} is not a multiple of n_kv_heads {kv_heads}")
    if folder.config.get("mlp_hidden_size") is not None:
        mlp = folder.field("mlp_hidden_size", "int+")
    else:
        mlp = int(folder.field("mlp_ratio", "int+") * hidden)
    vocab = folder.field("embedding_size", "int+", None) or folder.field("vocab_size", "int+")
    folder.field("mask_token_id", "int?", None)  # compared with the tokenizer's by `load`
    theta = folder.field("rope_theta", "float+", 10000.0)
    return LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=mlp,
        num_hidden_layers=folder.field("n_layers", "int+"),
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        hidden_act="silu",
        max_position_embeddings=folder.field("max_sequence_length", "int+", 4096),
        rms_norm_eps=folder.field("rms_norm_eps", "float+", 1e-5),
        rope_parameters={"rope_type": "default", "rope_theta": theta},
        attention_bias=False,
        mlp_bias=False,
        tie_word_embeddings=folder.field("weight_tying", "bool", False),
        **_token_ids(folder, vocab),
        mask_token_id=mask_id,
        use_cache=False,
    )


def _parse_pinpoints(folder: _Folder, value: Any, image_size: int) -> list[list[int]]:
    """LLaDA-V's image_grid_pinpoints -> [width, height] pairs."""
    expected = (
        f"a list of [width, height] pairs (positive multiples of the view size {image_size}) "
        'or a string like "(1x1),...,(6x6)"'
    )
    if isinstance(value, str):
        matches = re.findall(r"\((\d+)x(\d+)\)", value)
        if "x" in value and matches:
            (a0, b0), (a1, b1) = (tuple(map(int, m)) for m in (matches[0], matches[-1]))
            value = [[i * image_size, j * image_size] for i in range(a0, a1 + 1) for j in range(b0, b1 + 1)]
        else:
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                raise folder.error(f"config.json field 'image_grid_pinpoints' is {value!r}, expected {expected}") from None
    ok = isinstance(value, list) and value and all(
        isinstance(p, (list, tuple))
        and len(p) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v >= image_size and v % image_size == 0 for v in p)
        for p in value
    )
    if not ok:
        raise folder.error(f"config.json field 'image_grid_pinpoints' is {json.dumps(value)}, expected {expected}")
    return [[int(w), int(h)] for w, h in value]


def _llada_v_config(folder: _Folder, weights: _Weights, mask_id: int | None):
    """(LlavaOnevisionConfig, grid pinpoints as [w, h]) from a LLaDA-V config.json."""
    from transformers import SiglipVisionConfig

    from ..vlm.config import llada_v_config, siglip_so400m_config

    cfg = folder.config
    folder.expect("mm_projector_type", "mlp2x_gelu", default="linear", note="Linear, GELU, Linear")
    folder.expect("mm_patch_merge_type", "spatial_unpad", default="flat", note="LLaDA-V's anyres packing")
    aspect = cfg.get("image_aspect_ratio")
    m = re.fullmatch(r"anyres_max_(\d+)", aspect) if isinstance(aspect, str) else None
    if m is None or int(m.group(1)) < 1:
        raise folder.error(
            f"config.json field 'image_aspect_ratio' is {json.dumps(aspect)}, expected \"anyres_max_N\" "
            "(e.g. \"anyres_max_4\")"
        )
    folder.expect("mm_use_im_start_end", False, default=False, note="image start/end tokens are not supported")
    folder.expect("mm_resampler_type", None, default=None, note="vision resamplers are not supported")

    # the tower: sizes from dvtp_vision_config, else SigLIP so400m with the layer count of the weights
    layers = {int(mm.group(1)) for k in weights.shapes if (mm := re.match(re.escape(_TOWER_PREFIX) + r"encoder\.layers\.(\d+)\.", k))}
    if not layers:
        raise folder.error(
            f"the weights hold no SigLIP tower ({_TOWER_PREFIX}encoder.layers.N.*); LLaDA-V checkpoints store "
            "their vision tower, and it must be in the folder"
        )
    n_layers = max(layers) + 1
    extra = cfg.get("dvtp_vision_config")
    if extra is not None:
        if not isinstance(extra, dict):
            raise folder.error("config.json field 'dvtp_vision_config' must be an object of SigLIP vision config fields")
        fields = {k: v for k, v in extra.items() if k in _VISION_FIELDS}
        if fields.get("num_hidden_layers", n_layers) != n_layers:
            raise folder.error(
                f"dvtp_vision_config.num_hidden_layers is {fields['num_hidden_layers']} but the weights hold "
                f"{n_layers} tower layers"
            )
        fields["num_hidden_layers"] = n_layers
        try:
            vision = SiglipVisionConfig(**fields, vision_use_head=False)
        except Exception as e:
            raise folder.error(f"config.json field 'dvtp_vision_config' is not a valid SigLIP config ({e})") from None
    else:
        tower = cfg.get("mm_vision_tower", cfg.get("vision_tower"))
        if not isinstance(tower, str) or "so400m-patch14-384" not in tower.lower():
            raise folder.error(
                f"config.json field 'mm_vision_tower' is {json.dumps(tower)}, expected a SigLIP so400m-patch14-384 "
                f"tower such as {_SO400M_NAME!r} (the tower's sizes are not stored in config.json, and only "
                "so400m-patch14-384's are known)"
            )
        vision = siglip_so400m_config(num_hidden_layers=n_layers)
    mm_hidden = folder.field("mm_hidden_size", "int+")
    if mm_hidden != vision.hidden_size:
        raise folder.error(
            f"config.json field 'mm_hidden_size' is {mm_hidden}, expected the SigLIP tower's width {vision.hidden_size}"
        )
    pinpoints = _parse_pinpoints(folder, cfg.get("image_grid_pinpoints"), vision.image_size)
    text = _llama_text_config(folder, mask_id)
    config = llada_v_config(text, vision, grid_pinpoints=pinpoints, max_views=int(m.group(1)), mask_token_id=mask_id)
    return config, pinpoints


# ----------------------------------------------------------------------------- tokenizer
def _load_tokenizer(folder: _Folder):
    path = folder.path
    if not (path / "tokenizer.json").is_file():
        present = [n for n in ("tokenizer_config.json", "special_tokens_map.json") if (path / n).is_file()]
        raise folder.error(
            "no tokenizer.json: the folder must hold LLaDA's tokenizer files (tokenizer.json, tokenizer_config.json, "
            "special_tokens_map.json)" + (f"; found only {', '.join(present)}" if present else "")
        )
    if not (path / "tokenizer_config.json").is_file():
        raise folder.error("no tokenizer_config.json (LLaDA's tokenizer files: tokenizer.json, tokenizer_config.json)")
    folder.read_json("tokenizer_config.json")  # a clear error for broken JSON
    from transformers import AutoTokenizer, PretrainedConfig

    try:
        # config=: AutoTokenizer would otherwise parse config.json as a model config (unknown
        # model_type "llava_llada"/"llada", remote-code auto_map) just to guess a class that
        # tokenizer_config.json names anyway
        tokenizer = AutoTokenizer.from_pretrained(str(path), config=PretrainedConfig(), local_files_only=True)
    except Exception as e:  # noqa: BLE001 - report any tokenizer failure with the folder
        raise folder.error(f"the tokenizer files could not be loaded ({type(e).__name__}: {e})") from e
    vocab = tokenizer.get_vocab()
    missing = [t for t in REQUIRED_SPECIAL_TOKENS if t not in vocab]
    if missing:
        raise folder.error(
            f"the tokenizer has no {', '.join(repr(t) for t in missing)} token(s); LLaDA's tokenizer needs "
            + ", ".join(REQUIRED_SPECIAL_TOKENS)
        )
    return tokenizer
