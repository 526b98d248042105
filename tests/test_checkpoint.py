"""dvtp.checkpoint: LLaDA-V / LLaDA checkpoint folders (tiny models only)."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import dvtp
from dvtp import checkpoint as ck
from dvtp.checkpoint import formats, loading
from dvtp.models import LLaDALM, llada_lm, tiny_llada_config
from dvtp.vlm.config import llada_v_pinpoints
from dvtp.vlm.model import LLaDAVForConditionalGeneration
from dvtp.vlm.presets import tiny_llada_v
from dvtp.vlm.processor import LLaDAVProcessor
from dvtp.vlm.tokenizer import build_tiny_tokenizer

TOWER = "model.vision_tower.vision_tower.vision_model."


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def vlm():
    return tiny_llada_v(seed=0)


@pytest.fixture(scope="module")
def vlm_dir(vlm, tmp_path_factory):
    path = tmp_path_factory.mktemp("llada_v")
    ck.save_llada_v(vlm, path, max_shard_size="200KB")
    return path


@pytest.fixture(scope="module")
def vlm_loaded(vlm_dir):
    return ck.load(vlm_dir)


@pytest.fixture(scope="module")
def lm():
    tok = build_tiny_tokenizer()
    mask = tok.convert_tokens_to_ids("<|mdm_mask|>")
    model = llada_lm(tiny_llada_config(vocab_size=len(tok), mask_token_id=mask), seed=0)
    model.processor = LLaDAVProcessor(tok)
    return model


@pytest.fixture(scope="module")
def lm_dir(lm, tmp_path_factory):
    path = tmp_path_factory.mktemp("llada")
    ck.save_llada(lm, path, max_shard_size="100KB")
    return path


@pytest.fixture
def bad(vlm_dir, tmp_path):
    """A fresh copy of the LLaDA-V folder to break."""
    path = tmp_path / "ckpt"
    shutil.copytree(vlm_dir, path)
    return path


def _edit_config(path: Path, **changes):
    cfg = json.loads((path / "config.json").read_text())
    for k, v in changes.items():
        if v is _DELETE:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    (path / "config.json").write_text(json.dumps(cfg))


_DELETE = object()


def _index(path: Path) -> dict:
    return json.loads((path / "model.safetensors.index.json").read_text())


def _rewrite_shard_of(path: Path, key: str, edit):
    """Apply ``edit(tensors)`` to the shard holding ``key`` (index updated to match)."""
    index = _index(path)
    shard = index["weight_map"][key]
    tensors = load_file(str(path / shard))
    edit(tensors)
    save_file(tensors, str(path / shard), metadata={"format": "pt"})
    index["weight_map"] = {k: v for k, v in index["weight_map"].items() if v != shard}
    index["weight_map"].update({k: shard for k in tensors})
    (path / "model.safetensors.index.json").write_text(json.dumps(index))


def _same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype, k
        assert torch.equal(sa[k], sb[k]), k


# ----------------------------------------------------------------------------- LLaDA-V round trip
def test_llada_v_files_are_the_official_layout(vlm, vlm_dir):
    names = {p.name for p in vlm_dir.iterdir()}
    shards = sorted(n for n in names if re.fullmatch(r"model-\d{5}-of-\d{5}\.safetensors", n))
    assert len(shards) >= 2
    assert {"config.json", "model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json",
            "special_tokens_map.json"} <= names
    assert "model.safetensors" not in names and "chat_template.jinja" not in names

    index = _index(vlm_dir)
    assert set(index["weight_map"].values()) == set(shards)
    keys = set(index["weight_map"])
    for key in (
        "model.embed_tokens.weight",
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.1.mlp.down_proj.weight",
        "model.layers.1.post_attention_layernorm.weight",
        "model.norm.weight",
        "lm_head.weight",
        "model.mm_projector.0.weight",
        "model.mm_projector.0.bias",
        "model.mm_projector.2.weight",
        "model.mm_projector.2.bias",
        "model.image_newline",
        TOWER + "embeddings.patch_embedding.weight",
        TOWER + "embeddings.position_embedding.weight",
        TOWER + "encoder.layers.1.mlp.fc1.weight",
        TOWER + "post_layernorm.bias",
    ):
        assert key in keys, key
    assert not any("language_model" in k or "multi_modal_projector" in k or ".head." in k for k in keys)
    assert len(keys) == len(vlm.state_dict())
    for shard in shards:
        with safe_open(str(vlm_dir / shard), framework="pt") as f:
            assert f.metadata() == {"format": "pt"}

    cfg = json.loads((vlm_dir / "config.json").read_text())
    assert cfg["model_type"] == "llava_llada" and cfg["architectures"] == ["LlavaLLaDAModelLM"]
    assert cfg["mm_projector_type"] == "mlp2x_gelu" and cfg["mm_patch_merge_type"] == "spatial_unpad"
    assert cfg["image_aspect_ratio"] == "anyres_max_4" and cfg["mm_hidden_size"] == 32
    assert cfg["image_grid_pinpoints"] == llada_v_pinpoints()  # [w, h], LLaDA-V's order
    assert cfg["mm_use_im_start_end"] is False and cfg["mm_resampler_type"] is None
    assert cfg["hidden_size"] == 64 and cfg["rope_theta"] == 500000.0 and cfg["rope_scaling"] is None
    assert cfg["torch_dtype"] == "float32"

    tok_cfg = json.loads((vlm_dir / "tokenizer_config.json").read_text())
    assert tok_cfg["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert tok_cfg["add_bos_token"] is False
    assert tok_cfg["chat_template"] == vlm.processor.tokenizer.chat_template
    assert "<|mdm_mask|>" in tok_cfg["additional_special_tokens"]
    special = json.loads((vlm_dir / "special_tokens_map.json").read_text())
    assert special["bos_token"]["content"] == "<|startoftext|>"


def test_llada_v_round_trip_state_and_config(vlm, vlm_loaded):
    m = vlm_loaded
    assert type(m) is LLaDAVForConditionalGeneration and not m.training
    _same_state(vlm, m)
    assert m.config.image_grid_pinpoints == vlm.config.image_grid_pinpoints
    assert m.config.vision_aspect_ratio == "anyres_max_4"
    assert m.config.vision_config.num_hidden_layers == 2 and m.config.vision_config.hidden_size == 32
    tok = m.processor.tokenizer
    assert isinstance(m.processor, LLaDAVProcessor)
    assert m.config.mask_token_id == tok.convert_tokens_to_ids("<|mdm_mask|>") == vlm.config.mask_token_id
    assert m.processor.grid_pinpoints == llada_v_pinpoints()
    assert tok.chat_template == vlm.processor.tokenizer.chat_template
    text = "<|start_header_id|>user<|end_header_id|>\n\nWhat is shown in this image?<|eot_id|>"
    assert tok(text).input_ids == vlm.processor.tokenizer(text).input_ids
    assert m.processor.prompt_ids("What color is the car?", 1) == vlm.processor.prompt_ids("What color is the car?", 1)


def test_llada_v_round_trip_outputs(vlm, vlm_loaded):
    m = vlm_loaded
    g = torch.Generator().manual_seed(0)
    embeds = torch.randn(1, 40, 64, generator=g)
    with torch.no_grad():
        assert torch.equal(vlm(inputs_embeds=embeds).logits, m(inputs_embeds=embeds).logits)

    anyres_size = (400, 800)
    grid = vlm.model.layout(anyres_size, anyres=True).grid
    pixels = [torch.randn(1, 3, 384, 384, generator=g), torch.randn(1 + grid[0] * grid[1], 3, 384, 384, generator=g)]
    args = (pixels, [(300, 200), anyres_size], [False, True])
    for a, b in zip(vlm.encode_images(*args), m.encode_images(*args)):
        assert torch.equal(a, b)

    mask = m.config.mask_token_id
    for pruning in (None, dvtp.PruningConfig(keep_ratio=0.5)):
        kw = dict(inputs_embeds=embeds, gen_length=8, steps=4, mask_id=mask, visual_span=(4, 20), pruning=pruning)
        a, b = dvtp.generate(vlm, **kw), dvtp.generate(m, **kw)
        assert torch.equal(a.sequences, b.sequences)
        if pruning is not None:
            assert a.seq_len_after == b.seq_len_after and a.seq_len_after[0] < a.seq_len_before[0]
            assert torch.equal(a.kept_indices[0], b.kept_indices[0])


def test_key_mappings_are_inverse(vlm, lm):
    for model, to_model, to_ckpt in (
        (vlm, ck.LLADA_V_KEY_MAPPING, formats._LLADA_V_TO_CHECKPOINT),
        (lm, ck.LLADA_KEY_MAPPING, formats._LLADA_TO_CHECKPOINT),
    ):
        for key in model.state_dict():
            stored = formats._rename(key, to_ckpt)
            assert stored != key or key in ("lm_head.weight", "model.image_newline")
            assert formats._rename(stored, to_model) == key


# ----------------------------------------------------------------------------- LLaDA (OLMo style)
def test_llada_olmo_round_trip(lm, lm_dir):
    index = _index(lm_dir)
    assert len(set(index["weight_map"].values())) >= 2
    keys = set(index["weight_map"])
    for key in (
        "model.transformer.wte.weight",
        "model.transformer.ln_f.weight",
        "model.transformer.ff_out.weight",
        "model.transformer.blocks.0.q_proj.weight",
        "model.transformer.blocks.0.attn_out.weight",
        "model.transformer.blocks.1.ff_proj.weight",
        "model.transformer.blocks.1.up_proj.weight",
        "model.transformer.blocks.1.ff_out.weight",
        "model.transformer.blocks.1.attn_norm.weight",
        "model.transformer.blocks.1.ff_norm.weight",
    ):
        assert key in keys, key
    cfg = json.loads((lm_dir / "config.json").read_text())
    assert cfg["model_type"] == "llada" and cfg["d_model"] == 64 and cfg["n_layers"] == 2
    assert cfg["mlp_hidden_size"] == 128 and cfg["mask_token_id"] == lm.config.mask_token_id
    assert "torch_dtype" not in cfg  # dtype comes from the stored tensors

    m = ck.load(lm_dir)
    assert type(m) is LLaDALM and not m.training
    _same_state(lm, m)
    assert m.config.mask_token_id == lm.config.mask_token_id
    assert isinstance(m.processor, LLaDAVProcessor)
    ids = torch.randint(0, lm.config.vocab_size, (1, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(lm(input_ids=ids).logits, m(input_ids=ids).logits)
    kw = dict(input_ids=ids, gen_length=8, steps=4, mask_id=m.config.mask_token_id)
    assert torch.equal(dvtp.generate(lm, **kw).sequences, dvtp.generate(m, **kw).sequences)


def test_llada_llama_named_folder(lm, lm_dir, tmp_path):
    """Format 3: model_type "llada" with Llama fields and names (LLaDA-V's rename_checkpoint.py)."""
    path = tmp_path / "renamed"
    path.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(lm_dir / name, path / name)
    save_file({k: v.contiguous() for k, v in lm.state_dict().items()}, str(path / "model.safetensors"))
    cfg = lm.config
    (path / "config.json").write_text(json.dumps({
        "architectures": ["LLaDAModelLM"], "model_type": "llada", "attention_bias": False,
        "hidden_act": "silu", "hidden_size": cfg.hidden_size, "intermediate_size": cfg.intermediate_size,
        "max_position_embeddings": 4096, "num_attention_heads": cfg.num_attention_heads,
        "num_hidden_layers": cfg.num_hidden_layers, "num_key_value_heads": cfg.num_key_value_heads,
        "rms_norm_eps": cfg.rms_norm_eps, "rope_scaling": None, "rope_theta": 500000.0,
        "tie_word_embeddings": False, "torch_dtype": "bfloat16", "vocab_size": cfg.vocab_size,
    }))
    m = ck.load(path, dtype="float32")
    assert type(m) is LLaDALM
    _same_state(lm, m)
    assert ck.load(path).dtype == torch.bfloat16  # config.json torch_dtype


# ----------------------------------------------------------------------------- dtype / device
def test_dtype_and_device_options(vlm, vlm_dir, lm_dir):
    m = ck.load(vlm_dir, dtype=torch.bfloat16)
    assert {p.dtype for p in m.parameters()} == {torch.bfloat16}
    ref = vlm.state_dict()
    for k, v in m.state_dict().items():
        assert torch.equal(v, ref[k].to(torch.bfloat16)), k
    assert {p.dtype for p in ck.load(lm_dir, dtype="bfloat16").parameters()} == {torch.bfloat16}
    assert {p.dtype for p in ck.load(lm_dir, dtype="auto").parameters()} == {torch.float32}

    m = ck.load(vlm_dir, device="cpu")
    assert {p.device.type for p in m.parameters()} == {"cpu"}
    for device_map in ("cpu", "auto"):
        m = ck.load(lm_dir, device_map=device_map)
        assert {p.device.type for p in m.parameters()} == {"cpu"}
        assert m.processor is not None


def test_bad_arguments(vlm_dir, monkeypatch):
    with pytest.raises(ValueError, match="device or device_map, not both"):
        ck.load(vlm_dir, device="cpu", device_map="auto")
    for dtype in ("fp32", "int8", torch.int64, 32):
        with pytest.raises(ValueError, match="dtype must be"):
            ck.load(vlm_dir, dtype=dtype)
    monkeypatch.setattr(loading, "_accelerate_available", lambda: False)
    with pytest.raises(ImportError, match="pip install accelerate"):
        ck.load(vlm_dir, device_map="auto")
    m = ck.load(vlm_dir, device="cpu")  # without accelerate: loaded, then moved
    assert {p.device.type for p in m.parameters()} == {"cpu"}


# ----------------------------------------------------------------------------- bad folders
def test_missing_or_not_a_folder(tmp_path, vlm_dir):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ck.load(tmp_path / "nope")
    with pytest.raises(ValueError, match="is not a folder"):
        ck.load(vlm_dir / "config.json")
    with pytest.raises(ValueError, match="no config.json"):
        ck.load(tmp_path)


def test_broken_config(bad):
    (bad / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"ckpt.*config.json is not valid JSON"):
        ck.load(bad)
    (bad / "config.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="config.json must hold a JSON object"):
        ck.load(bad)


@pytest.mark.parametrize(
    "changes, pattern",
    [
        ({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}, r"unsupported model_type 'llama'.*'llava_llada'"),
        ({"mm_projector_type": "linear"}, r"'mm_projector_type' is \"linear\", expected \"mlp2x_gelu\""),
        ({"mm_patch_merge_type": "flat"}, r"'mm_patch_merge_type' is \"flat\", expected \"spatial_unpad\""),
        ({"image_aspect_ratio": "pad"}, r"'image_aspect_ratio' is \"pad\", expected \"anyres_max_N\""),
        ({"mm_use_im_start_end": True}, r"'mm_use_im_start_end' is true, expected false"),
        ({"mm_resampler_type": "perceiver"}, r"'mm_resampler_type' is \"perceiver\", expected null"),
        ({"mm_hidden_size": 1152}, r"'mm_hidden_size' is 1152, expected the SigLIP tower's width 32"),
        ({"hidden_size": _DELETE}, r"no 'hidden_size' field"),
        ({"num_attention_heads": "4"}, r"'num_attention_heads' must be a positive integer"),
        ({"rope_scaling": {"type": "yarn", "factor": 4}}, r"'rope_scaling'.*expected null"),
        ({"image_grid_pinpoints": [[384, 500]]}, r"'image_grid_pinpoints'.*multiples of the view size 384"),
        ({"torch_dtype": "int8"}, r"'torch_dtype' is 'int8'"),
        (
            {"dvtp_vision_config": _DELETE, "mm_vision_tower": "openai/clip-vit-large-patch14-336"},
            r"'mm_vision_tower' is \"openai/clip-vit-large-patch14-336\", expected a SigLIP so400m-patch14-384",
        ),
        ({"dvtp_vision_config": _DELETE, "mm_vision_tower": "google/siglip2-so400m-patch14-384"},
         r"'mm_hidden_size' is 32, expected the SigLIP tower's width 1152"),
    ],
)
def test_unsupported_config(bad, changes, pattern):
    _edit_config(bad, **changes)
    with pytest.raises(ValueError, match=pattern) as info:
        ck.load(bad)
    assert str(bad) in str(info.value)


def test_pinpoints_string_form(bad, vlm):
    _edit_config(bad, image_grid_pinpoints="(1x1),...,(6x6)")
    m = ck.load(bad)
    assert m.config.image_grid_pinpoints == vlm.config.image_grid_pinpoints


def test_missing_shard_and_no_weights(bad):
    shard = sorted(bad.glob("model-*.safetensors"))[1]
    shard.unlink()
    with pytest.raises(ValueError, match=rf"names shard file\(s\) that are not in the folder: {shard.name}"):
        ck.load(bad)
    (bad / shard.name).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not a header")
    with pytest.raises(ValueError, match=rf"{shard.name} is not a readable safetensors file"):
        ck.load(bad)
    for f in bad.glob("model*"):
        f.unlink()
    with pytest.raises(ValueError, match="no weights: expected model.safetensors"):
        ck.load(bad)


def test_missing_unexpected_and_mismatched_keys(vlm_dir, tmp_path):
    def case(name, edit, pattern):
        path = tmp_path / name
        shutil.copytree(vlm_dir, path)
        edit(path)
        with pytest.raises(ValueError, match=pattern) as info:
            ck.load(path)
        assert str(path) in str(info.value)
        return str(info.value)

    key = TOWER + "encoder.layers.1.mlp.fc2.weight"
    msg = case("missing", lambda p: _rewrite_shard_of(p, key, lambda t: t.pop(key)),
               r"1 weight\(s\) the model needs are missing.*randomly initialised")
    assert key in msg and "(1 in all)" in msg

    def drop_layer(p):  # a whole LM layer: the count is reported, the first few names shown
        index = _index(p)
        for shard in set(index["weight_map"].values()):
            t = load_file(str(p / shard))
            save_file({k: v for k, v in t.items() if not k.startswith("model.layers.1.")}, str(p / shard))
        index["weight_map"] = {k: v for k, v in index["weight_map"].items() if not k.startswith("model.layers.1.")}
        (p / "model.safetensors.index.json").write_text(json.dumps(index))

    msg = case("missing_layer", drop_layer, r"9 weight\(s\) the model needs are missing")
    assert "model.layers.1.input_layernorm.weight" in msg and "(9 in all)" in msg and "language_model" not in msg

    key2 = "model.norm.weight"

    def index_only(p):  # the index still lists it, its shard lacks it
        _rewrite_shard_of(p, key2, lambda t: t.pop(key2))
        index = _index(p)
        index["weight_map"][key2] = index["weight_map"]["lm_head.weight"]
        (p / "model.safetensors.index.json").write_text(json.dumps(index))

    case("index_only", index_only, r"missing from the checkpoint.*model\.norm\.weight.*index.json lists 1 of them")

    extra = "model.mm_projector.4.weight"
    msg = case("unexpected", lambda p: _rewrite_shard_of(
        p, "model.image_newline", lambda t: t.__setitem__(extra, torch.zeros(3))),
        r"1 unexpected tensor\(s\) the model has no place for: model\.mm_projector\.4\.weight")

    key3 = "model.mm_projector.2.weight"
    msg = case("mismatch", lambda p: _rewrite_shard_of(p, key3, lambda t: t.__setitem__(key3, torch.zeros(64, 63))),
               r"1 tensor\(s\) with the wrong shape: model\.mm_projector\.2\.weight has shape \[64, 63\], expected \[64, 64\]")


def test_transformers_report_is_checked_after_loading(vlm_dir, tmp_path, monkeypatch):
    """With the meta-device pre-check disabled, transformers' own loading report (which
    does not raise for missing/unexpected keys, and only a RuntimeError for shapes) is
    turned into the same ValueErrors, in the checkpoint's naming."""
    monkeypatch.setattr(loading, "_precheck", lambda *a, **k: None)
    path = tmp_path / "c"
    shutil.copytree(vlm_dir, path)
    key = "model.layers.0.mlp.up_proj.weight"
    _rewrite_shard_of(path, key, lambda t: t.pop(key))
    extra = TOWER + "head.probe"
    _rewrite_shard_of(path, "lm_head.weight", lambda t: t.__setitem__(extra, torch.zeros(1, 1, 32)))
    key3 = TOWER + "embeddings.patch_embedding.weight"
    _rewrite_shard_of(path, key3, lambda t: t.__setitem__(key3, torch.zeros(32, 3, 16, 16)))
    with pytest.raises(ValueError) as info:
        ck.load(path)
    msg = str(info.value)
    assert f"missing from the checkpoint (they would be left randomly initialised): {key} (1 in all)" in msg
    assert f"no place for: {extra} (1 in all)" in msg
    assert f"{key3} has shape [32, 3, 16, 16], expected [32, 3, 14, 14]" in msg


def test_tokenizer_problems(bad):
    (bad / "tokenizer.json").rename(bad / "tokenizer.json.bak")
    with pytest.raises(ValueError, match=r"no tokenizer\.json.*LLaDA's tokenizer files"):
        ck.load(bad)
    data = json.loads((bad / "tokenizer.json.bak").read_text())
    # drop <|mdm_mask|> from the tokenizer: from its added tokens and its vocabulary
    data["added_tokens"] = [t for t in data["added_tokens"] if t["content"] != "<|mdm_mask|>"]
    data["model"]["vocab"].pop("<|mdm_mask|>", None)
    (bad / "tokenizer.json").write_text(json.dumps(data))
    tok_cfg = json.loads((bad / "tokenizer_config.json").read_text())
    tok_cfg["additional_special_tokens"] = [t for t in tok_cfg["additional_special_tokens"] if t != "<|mdm_mask|>"]
    tok_cfg["added_tokens_decoder"] = {
        i: t for i, t in tok_cfg["added_tokens_decoder"].items() if t["content"] != "<|mdm_mask|>"
    }
    (bad / "tokenizer_config.json").write_text(json.dumps(tok_cfg))
    (bad / "special_tokens_map.json").unlink()
    with pytest.raises(ValueError, match=r"ckpt.*the tokenizer has no '<\|mdm_mask\|>' token"):
        ck.load(bad)


def test_so400m_tower_is_inferred_from_the_weight_names(tmp_path):
    """Without dvtp_vision_config (the published files) the tower is SigLIP so400m with the
    layer count of the weights (config only: no tensors are needed)."""
    (tmp_path / "config.json").write_text(json.dumps({
        "model_type": "llava_llada", "architectures": ["LlavaLLaDAModelLM"],
        "hidden_size": 4096, "intermediate_size": 12288, "num_hidden_layers": 32, "num_attention_heads": 32,
        "num_key_value_heads": 32, "vocab_size": 126464, "max_position_embeddings": 8192, "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0, "rope_scaling": None, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
        "bos_token_id": 128000, "eos_token_id": 126081, "pad_token_id": None,
        "mm_vision_tower": "google/siglip2-so400m-patch14-384", "mm_hidden_size": 1152,
        "mm_projector_type": "mlp2x_gelu", "mm_vision_select_layer": -2, "mm_vision_select_feature": "patch",
        "mm_patch_merge_type": "spatial_unpad", "image_aspect_ratio": "anyres_max_4",
        "image_grid_pinpoints": "(1x1),...,(6x6)", "mm_use_im_start_end": False, "mm_resampler_type": None,
    }))
    folder = formats._Folder(tmp_path)

    class Weights:
        shapes = {f"{TOWER}encoder.layers.{i}.mlp.fc1.weight": (4304, 1152) for i in range(26)}

    config, pinpoints = formats._llada_v_config(folder, Weights(), 126336)
    v, t = config.vision_config, config.text_config
    assert (v.num_hidden_layers, v.hidden_size, v.intermediate_size, v.num_attention_heads) == (26, 1152, 4304, 16)
    assert (t.hidden_size, t.num_hidden_layers, t.vocab_size, t.mask_token_id) == (4096, 32, 126464, 126336)
    assert t.rope_parameters["rope_theta"] == 500000.0
    assert (t.bos_token_id, t.eos_token_id, t.pad_token_id) == (None, 126081, None)
    assert pinpoints == llada_v_pinpoints() and config.vision_aspect_ratio == "anyres_max_4"
    assert config.image_grid_pinpoints == [[h, w] for w, h in llada_v_pinpoints()]


@pytest.mark.parametrize(
    "changes, pattern",
    [
        ({"mask_token_id": 126336}, r"config.json mask_token_id is 126336 but the tokenizer's '<\|mdm_mask\|>' has id"),
        ({"block_type": "sequential"}, r"'block_type' is \"sequential\", expected \"llama\""),
        ({"include_bias": True}, r"'include_bias' is true, expected false"),
        ({"d_model": _DELETE}, r"either the OLMo-style fields"),
    ],
)
def test_unsupported_olmo_config(lm_dir, tmp_path, changes, pattern):
    path = tmp_path / "olmo"
    shutil.copytree(lm_dir, path)
    _edit_config(path, **changes)
    with pytest.raises(ValueError, match=pattern):
        ck.load(path)


def test_resave_is_identical(vlm_loaded, vlm_dir, tmp_path):
    ck.save_llada_v(vlm_loaded, tmp_path, max_shard_size="200KB")
    for name in ("config.json", "tokenizer_config.json", "special_tokens_map.json", "model.safetensors.index.json"):
        assert json.loads((tmp_path / name).read_text()) == json.loads((vlm_dir / name).read_text()), name
    _same_state(vlm_loaded, ck.load(tmp_path))


def test_linear_rope_scaling_is_read(bad):
    _edit_config(bad, rope_scaling={"type": "linear", "factor": 2.0})
    m = ck.load(bad)
    assert m.config.text_config.rope_parameters["rope_type"] == "linear"
    assert m.config.text_config.rope_parameters["factor"] == 2.0
    assert m.config.text_config.rope_parameters["rope_theta"] == 500000.0


# ----------------------------------------------------------------------------- argument checks first
def _no_cuda(monkeypatch):
    """Make torch report no CUDA device, so that the test means the same on a GPU machine."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


@pytest.mark.parametrize("device", ["cuda", "cuda:0", 0, torch.device("cuda")])
def test_unusable_cuda_device_is_named_before_reading(vlm_dir, monkeypatch, device):
    """No raw torch error (AssertionError "Torch not compiled with CUDA enabled",
    RuntimeError "Cannot access accelerator device") and nothing read: the folder
    does not even have to exist."""
    _no_cuda(monkeypatch)
    for path in (vlm_dir, vlm_dir / "nope"):
        with pytest.raises(ValueError, match=rf"device={re.escape(repr(device))} but .*usable here: 'cpu'\)"):
            ck.load(path, device=device)
    with pytest.raises(ValueError, match=r"device_map=.* but .*usable here: 'cpu'\)"):
        ck.load(vlm_dir / "nope", device_map=device)
    with pytest.raises(ValueError, match=r"device_map\['model.vision_tower'\]=.* but .*usable here: 'cpu'\)"):
        ck.load(vlm_dir / "nope", device_map={"model.vision_tower": device, "": "cpu"})


@pytest.mark.parametrize("device", ["bogus", "tpu", "cpu:1", -1, 3.5, True, "meta"])
def test_bogus_device_is_named_before_reading(vlm_dir, device):
    with pytest.raises(ValueError, match=r"^device must be 'cpu', 'cuda' or 'cuda:<index>', got .*usable here: 'cpu'"):
        ck.load(vlm_dir / "nope", device=device)


@pytest.mark.parametrize("device_map", ["bogus", 3.5, {}, {"": "disk"}, {0: "cpu"}, ["cpu"]])
def test_bogus_device_map_is_named_before_reading(vlm_dir, device_map):
    with pytest.raises(ValueError, match=r"device_map"):
        ck.load(vlm_dir / "nope", device_map=device_map)


def test_device_map_strategies_and_single_devices_load(lm_dir):
    for device_map in ("sequential", torch.device("cpu"), {"": "cpu"}):
        m = ck.load(lm_dir, device_map=device_map)
        assert {p.device.type for p in m.parameters()} == {"cpu"}


def test_tiny_presets_check_device_and_dtype(monkeypatch):
    from dvtp.vlm.presets import scaled_llada_v

    _no_cuda(monkeypatch)
    for build in (tiny_llada_v, scaled_llada_v):
        with pytest.raises(ValueError, match=r"device='cuda' but .*usable here: 'cpu'\)"):
            build(device="cuda")
        with pytest.raises(ValueError, match=r"device must be .*got 'bogus'"):
            build(device="bogus")
        with pytest.raises(ValueError, match=r"dtype must be .*got 'int8'"):
            build(dtype="int8")
    m = tiny_llada_v(seed=0, dtype="bfloat16", device="cpu")
    assert {p.dtype for p in m.parameters()} == {torch.bfloat16}
    ref = tiny_llada_v(seed=0).state_dict()
    for k, v in m.state_dict().items():  # the same weights whatever dtype / device
        assert torch.equal(v, ref[k].to(v.dtype)), k


# ----------------------------------------------------------------------------- stored dtypes
KEY_LM = "model.layers.0.mlp.up_proj.weight"
KEY_TOWER = TOWER + "encoder.layers.1.self_attn.k_proj.weight"


@pytest.mark.parametrize("key", [KEY_LM, KEY_TOWER, "model.image_newline"])
@pytest.mark.parametrize("dtype, name", [(torch.int32, "I32 \\(int32\\)"), (torch.uint8, "U8 \\(uint8\\)"),
                                         (torch.bool, "BOOL \\(bool\\)")])
def test_non_float_weight_is_refused(bad, monkeypatch, key, dtype, name):
    """transformers casts an int32 tensor into a float parameter without a word: refused
    from the safetensors header, naming the file and the key, before any tensor is read."""
    shard = _index(bad)["weight_map"][key]

    def to_int(tensors):
        tensors[key] = (tensors[key] * 100).to(dtype)

    _rewrite_shard_of(bad, key, to_int)

    def never(*a, **k):
        raise AssertionError("from_pretrained ran on a checkpoint with an integer weight")

    monkeypatch.setattr(LLaDAVForConditionalGeneration, "from_pretrained", never)
    with pytest.raises(ValueError) as err:
        ck.load(bad)
    msg = str(err.value)
    assert str(bad) in msg and f"{key} (in {shard}) is stored as " in msg
    assert re.search(name, msg) and "expected F16, BF16 or F32" in msg


def test_non_float_weight_of_text_llada_is_refused(lm_dir, tmp_path):
    path = tmp_path / "lm"
    shutil.copytree(lm_dir, path)
    key = "model.transformer.blocks.0.ff_out.weight"
    _rewrite_shard_of(path, key, lambda t: t.__setitem__(key, t[key].to(torch.int64)))
    with pytest.raises(ValueError, match=rf"{re.escape(key)} \(in model-\d+-of-\d+\.safetensors\) is stored as I64"):
        ck.load(path)


def test_float16_bfloat16_float32_mix_is_allowed(vlm, bad):
    """Mixed float storage is converted to the load dtype (what dtype= is for)."""
    _rewrite_shard_of(bad, KEY_LM, lambda t: t.__setitem__(KEY_LM, t[KEY_LM].to(torch.float16)))
    _rewrite_shard_of(bad, KEY_TOWER, lambda t: t.__setitem__(KEY_TOWER, t[KEY_TOWER].to(torch.bfloat16)))
    m = ck.load(bad, dtype="float32")
    state, ref = m.state_dict(), vlm.state_dict()
    assert {v.dtype for v in state.values()} == {torch.float32}
    lm_key = "model.language_model.layers.0.mlp.up_proj.weight"
    assert torch.equal(state[lm_key], ref[lm_key].to(torch.float16).float())
    tower_key = "model.vision_tower.encoder.layers.1.self_attn.k_proj.weight"
    assert torch.equal(state[tower_key], ref[tower_key].to(torch.bfloat16).float())


# ----------------------------------------------------------------------------- progress bar
def _bars_state():
    from huggingface_hub import utils as hub_utils
    from transformers.utils import logging as hf_logging

    return hf_logging.is_progress_bar_enabled(), hub_utils.are_progress_bars_disabled()


def test_progress_bar_switch(lm_dir, capfd):
    """transformers' "Loading weights" bar: never with progress=False, always with True,
    with None only on a terminal (pytest's captured stderr is not one); transformers'
    own setting is left as it was."""
    before = _bars_state()
    assert before[0], "transformers' bars should be on by default in the tests"
    ck.load(lm_dir, progress=False)
    assert "Loading weights" not in capfd.readouterr().err
    assert _bars_state() == before
    ck.load(lm_dir, progress=None)
    assert "Loading weights" not in capfd.readouterr().err
    assert _bars_state() == before
    ck.load(lm_dir, progress=True)
    assert "Loading weights" in capfd.readouterr().err
    assert _bars_state() == before


def test_progress_setting_restored_after_an_error(lm_dir, monkeypatch, capfd):
    from transformers.utils import logging as hf_logging

    def fail(*a, **k):
        assert not hf_logging.is_progress_bar_enabled()  # switched off inside
        raise RuntimeError("boom")

    before = _bars_state()
    monkeypatch.setattr(LLaDALM, "from_pretrained", fail)
    with pytest.raises(RuntimeError, match="boom"):
        ck.load(lm_dir, progress=False)
    assert _bars_state() == before
    # a caller who disabled transformers' bars keeps them disabled, even on a terminal
    monkeypatch.undo()
    hf_logging.disable_progress_bar()
    try:
        monkeypatch.setattr(loading.sys, "stderr", _Tty())
        ck.load(lm_dir)
        assert not hf_logging.is_progress_bar_enabled()
    finally:
        hf_logging.enable_progress_bar()
    assert "Loading weights" not in capfd.readouterr().err


class _Tty:
    def isatty(self):
        return True

    def write(self, text):
        return len(text)

    def flush(self):
        pass


def test_progress_on_a_terminal_by_default(lm_dir, monkeypatch):
    shown = []
    monkeypatch.setattr(loading.sys, "stderr", _Tty())
    real = loading._progress_bars

    def spy(show):
        shown.append(show)
        return real(show)

    monkeypatch.setattr(loading, "_progress_bars", spy)
    ck.load(lm_dir)
    assert shown == [True]


@pytest.mark.parametrize("progress", ["yes", 1, 0])
def test_bad_progress_argument(vlm_dir, progress):
    with pytest.raises(ValueError, match="progress must be None"):
        ck.load(vlm_dir / "nope", progress=progress)
