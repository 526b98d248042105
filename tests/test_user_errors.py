"""Defects a new-user trial found in the model side: each input fails early with a message
naming the argument (and never after some forwards ran), and from_pretrained never
returns randomly initialised weights."""
from __future__ import annotations

import json

import pytest
import torch

import dvtp
from dvtp import models
from dvtp.config import PruningConfig

MASK = 127


def _ids(batch=2, n=12):
    return torch.randint(0, MASK, (batch, n), generator=torch.Generator().manual_seed(0))


@pytest.fixture
def no_forward(llada, monkeypatch):
    """Fail the test if the model runs a forward."""

    def forbidden(*a, **k):
        raise AssertionError("a forward ran before the argument error")

    monkeypatch.setattr(llada, "forward", forbidden)
    return llada


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(inputs=torch.zeros(0, 5, dtype=torch.long)), ValueError, "batch size 0"),
        (dict(generator=42, temperature=1.0), TypeError, "generator must be a torch.Generator"),
        (dict(generator=42), TypeError, "generator must be a torch.Generator"),
        (dict(visual_span=(1.5, 10)), ValueError, r"visual_span = \(1.5, 10\): start and length must be ints"),
        (dict(visual_span=(1, 5), pruning=PruningConfig(prune_step=4)), ValueError, "last denoising step"),
        (dict(visual_span=(1, 5), pruning=PruningConfig(backend="cuda")), ValueError, "cannot run on cpu"),
        # more steps than tokens: the extra steps would transfer nothing and still cost a forward
        (dict(steps=100), ValueError, r"steps=100 exceeds gen_length=4: .*steps <= gen_length"),
        (dict(steps=8, block_length=2), ValueError, r"steps=8 exceeds gen_length=4"),
        (dict(temperature=float("inf")), ValueError, "temperature must be a finite number >= 0"),
        (dict(temperature=float("nan")), ValueError, "temperature must be a finite number >= 0"),
    ],
)
def test_generate_errors_before_any_forward(no_forward, kwargs, error, match):
    kwargs = {"inputs": _ids(), "gen_length": 4, "steps": 4, "mask_id": MASK, **kwargs}
    inputs = kwargs.pop("inputs")
    with pytest.raises(error, match=match):
        dvtp.generate(no_forward, inputs, **kwargs)


def test_generate_needs_a_language_model_in_eval_mode(llada):
    with pytest.raises(TypeError, match="model must be a transformers language model.*got Linear"):
        dvtp.generate(torch.nn.Linear(2, 2), _ids(), gen_length=4, steps=4)
    llada.train()
    try:
        with pytest.raises(ValueError, match=r"training mode.*model.eval\(\)"):
            dvtp.generate(llada, _ids(), gen_length=4, steps=4, mask_id=MASK)
    finally:
        llada.eval()


def test_pruning_config_backend_is_checked_at_construction():
    with pytest.raises(ValueError, match="PruningConfig.backend must be None .* got 'gpu'"):
        PruningConfig(backend="gpu")
    assert PruningConfig(backend="cpu").backend == "cpu"


@pytest.mark.parametrize(
    "build, error, match",
    [
        (lambda: models.llada_lm(models.tiny_llada_config(), dtype="bf16"), ValueError, "dtype must be .*'bf16'"),
        (lambda: models.llada_lm("tiny"), TypeError, "config must be a LlamaConfig.*tiny_llada_config"),
        (lambda: models.dream_lm(models.tiny_llada_config()), TypeError, "config must be a Qwen2Config"),
        (lambda: models.llada_lm(models.tiny_llada_config(), hiden_size=3), TypeError,
         "unknown LlamaConfig field 'hiden_size' \\(did you mean 'hidden_size'\\?\\)"),
        (lambda: models.tiny_dream_config(num_layers=3), TypeError, "unknown Qwen2Config field 'num_layers'"),
        (lambda: models.llada_lm({"hidden_size": 64, "num_heads": 4}), TypeError, "unknown LlamaConfig field 'num_heads'"),
        (lambda: models.llada_lm(models.tiny_llada_config(), seed="0"), TypeError, "seed must be an int"),
    ],
)
def test_model_builders_reject_bad_arguments(build, error, match):
    with pytest.raises(error, match=match):
        build()


def test_builders_accept_dtype_names():
    assert next(models.llada_lm(models.tiny_llada_config(), dtype="bfloat16").parameters()).dtype == torch.bfloat16


def test_from_pretrained_round_trip_and_refusals(tmp_path):
    model = models.llada_lm(models.tiny_llada_config(), seed=3)
    model.save_pretrained(tmp_path / "ok")
    loaded = models.LLaDALM.from_pretrained(tmp_path / "ok")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
    # a config that does not match the weights: missing layers would be randomly initialised
    config = json.loads((tmp_path / "ok" / "config.json").read_text())
    config["num_hidden_layers"] = 3
    (tmp_path / "ok" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"9 weights missing \(they would be randomly initialised\).*dvtp.load"):
        models.LLaDALM.from_pretrained(tmp_path / "ok")
    # the report stays available to callers who check it themselves
    _, info = models.LLaDALM.from_pretrained(tmp_path / "ok", output_loading_info=True)
    assert len(info["missing_keys"]) == 9


@pytest.mark.parametrize("model_type", ["llada", "llava_llada"])
def test_from_pretrained_refuses_published_llada_folders(tmp_path, model_type):
    """LLaDA's / LLaDA-V's published folders are not transformers' Llama layout: refused
    before anything is built (an 8B model would otherwise be built randomly first)."""
    (tmp_path / "config.json").write_text(json.dumps({"model_type": model_type, "d_model": 4096}))
    with pytest.raises(ValueError, match=f"model_type '{model_type}'.*dvtp.load"):
        models.LLaDALM.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="dvtp.load"):
        dvtp.vlm.LLaDAVForConditionalGeneration.from_pretrained(tmp_path)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(gen_length=7, steps=7, block_length=4), "--gen-length 7 must be a multiple of --block-length 4"),
        (dict(steps=9), r"--steps 9 exceeds --gen-length 8: .*\(--steps <= --gen-length\)"),
        (dict(steps=3, block_length=4), r"--steps 3 must be divisible by the number of blocks "
                                        r"\(--gen-length / --block-length = 2\)"),
        (dict(refresh=3), r"--refresh 3 needs a cache \(--cache prefix or dual\)"),
        (dict(temperature=float("inf")), "--temperature must be a finite number"),
    ],
)
def test_generation_args_name_the_callers_options(kwargs, match):
    """Front ends (the CLI) get messages in their own names: options, not API fields."""
    from dvtp.generation.request import check_generation_args

    names = {arg: "--" + arg.replace("_", "-") for arg in
             ("gen_length", "steps", "block_length", "temperature", "cache", "refresh", "threshold")}
    args = {**dict(gen_length=8, steps=8, block_length=None, temperature=0.0, remasking="low_confidence",
                   pruning=None), **kwargs}
    with pytest.raises(ValueError, match=match):
        check_generation_args(**args, names=names)
    with pytest.raises(ValueError) as api:  # without names: the API's argument names
        check_generation_args(**args)
    assert "--" not in str(api.value)


def test_synthetic_photo_is_width_first():
    """One order everywhere: (width, height), as PIL's ``Image.size`` and ``synthetic:WxH``."""
    from dvtp.vlm.images import load_image, synthetic_photo

    photo = synthetic_photo(300, 200)
    assert photo.shape == (200, 300, 3) and photo.dtype.name == "uint8"
    assert load_image(photo).size == (300, 200)
    with pytest.raises(TypeError):  # the seed is keyword-only: a third positional int is a mistake
        synthetic_photo(300, 200, 1)


def _counted_tiny(**overrides):
    from dvtp import models

    model = models.llada_lm(models.tiny_llada_config(**overrides), seed=0)
    calls = []
    model.register_forward_pre_hook(lambda *_: calls.append(1))
    return model, calls


@pytest.mark.parametrize("stop_tokens, bad", [(10**6, "1000000"), ([3, 128], "128"), ([-1], "-1")])
def test_stop_token_outside_the_vocabulary_is_refused(stop_tokens, bad):
    """An id the model can never produce would never stop anything: refused before any forward."""
    import dvtp

    model, calls = _counted_tiny()
    with pytest.raises(ValueError, match=rf"stop_tokens must be ids in the vocabulary \[0, vocab_size=128\), got {bad}"):
        dvtp.generate(model, torch.zeros(1, 6, dtype=torch.long), gen_length=4, steps=4, mask_id=127,
                      stop_tokens=stop_tokens)
    assert calls == []


@pytest.mark.parametrize("pruning", [None, "renumbered", "original-positions"])
def test_sequence_longer_than_the_position_range_is_refused(pruning):
    """prompt + gen_length > max_position_embeddings: refused before any forward, naming the
    lengths and the limit; the unpruned length counts (pruning comes after the first steps),
    and in a ragged batch the longest item."""
    import dvtp
    from dvtp.config import PruningConfig

    model, calls = _counted_tiny(max_position_embeddings=40)
    cfg = None if pruning is None else PruningConfig(keep_ratio=0.25, renumber_positions=pruning == "renumbered")
    prompts = [torch.zeros(20, dtype=torch.long), torch.zeros(30, dtype=torch.long)]
    with pytest.raises(ValueError, match=r"the longest prompt of the batch \(item 1\) has 30 tokens; with gen_length=16 "
                                         r"the sequence needs 46 positions, more than the model's "
                                         r"max_position_embeddings=40"):
        dvtp.generate(model, prompts, gen_length=16, steps=16, mask_id=127, pruning=cfg,
                      visual_span=[(2, 10), (2, 20)])
    with pytest.raises(ValueError, match=r"the prompt has 25 tokens; .* 41 positions"):
        dvtp.generate(model, torch.zeros(1, 25, dtype=torch.long), gen_length=16, steps=16, mask_id=127)
    assert calls == []
    out = dvtp.generate(model, torch.zeros(1, 24, dtype=torch.long), gen_length=16, steps=16, mask_id=127)
    assert out.num_forwards == 16  # exactly at the limit runs


def test_position_limit_of_a_vlm_is_its_language_models():
    """A VLM config keeps the limit in its text config."""
    from transformers import LlavaOnevisionConfig

    from dvtp.generation.request import max_positions
    from dvtp.models import tiny_llada_config

    class Stub:
        config = LlavaOnevisionConfig(text_config=tiny_llada_config(max_position_embeddings=123).to_dict())

    assert max_positions(Stub()) == 123
