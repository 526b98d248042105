"""LLaDA-V end to end through the multimodal path (tiny model, random weights): the spans
come from the splice, pruning through images equals the eager float64 reference, a batch
equals its items run alone, and bad inputs fail before any forward with clear messages."""
from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

import dvtp
from dvtp import models
from dvtp.vlm import IMAGE_PLACEHOLDER, prepare, tiny_llada_v
from eager_reference import reference_generate


@pytest.fixture(scope="module")
def model():
    return tiny_llada_v(seed=0)


def _image(h, w, seed):
    """A photo-like uint8 image: smooth gradients plus noise (distinct per seed)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 / max(w, 1), y * 255 / max(h, 1), (x + y) * 127 / max(h + w, 1)], -1)
    return np.clip(base + rng.normal(0, 40, (h, w, 3)), 0, 255).astype(np.uint8)


IMG_A = _image(150, 200, 1)   # 1x1 grid
IMG_B = _image(300, 700, 2)   # 1x2 grid
IMG_C = _image(500, 240, 3)   # 2x1 grid
KW = dict(gen_length=16, steps=8)


def test_spans_are_where_the_features_are_spliced(model):
    images = [IMG_A, [IMG_B, IMG_C], None]
    questions = ["What is this?", "<image> and <image>: which is brighter?", "Hello"]
    batch = prepare(model, images, questions)
    proc = model.processor
    embed = model.get_input_embeddings()
    runs = model.encode_images(
        *zip(*[(p.pixel_values, p.size, p.anyres) for item in ([IMG_A], [IMG_B, IMG_C]) for p in proc.process_images(item)])
    )
    runs = iter(runs)
    for b, (ids, prompt) in enumerate(zip(batch.prompt_ids, batch.prompts)):
        assert ids == proc.prompt_ids(questions[b], [1, 2, 0][b])
        spans = batch.visual_spans[b] or []
        assert len(spans) == [1, 2, 0][b] == ids.count(IMAGE_PLACEHOLDER)
        covered = torch.zeros(prompt.shape[0], dtype=torch.bool)
        for (start, length), info in zip(spans, batch.images[b]):
            run = next(runs)
            assert (start, length) == info.span and length == info.layout.num_tokens == run.shape[0]
            assert torch.equal(prompt[start : start + length], run)
            covered[start : start + length] = True
        text = torch.tensor([i for i in ids if i != IMAGE_PLACEHOLDER])
        assert torch.equal(prompt[~covered], embed(text))
    assert batch.visual_spans[2] is None and batch.images[2] == []
    # the single image is anyres (base view + grid); the pair is padded squares (730 each)
    assert batch.images[0][0].layout.anyres and batch.images[0][0].span[1] == 729 + 21 * 28  # 150x200: unpad keeps 21 of 27 rows
    assert [t.span[1] for t in batch.images[1]] == [730, 730]


def test_keep_one_is_unpruned_token_for_token(model):
    images, questions = [IMG_A, IMG_B], ["Describe it.", "What colour dominates?"]
    base = model.answer(images, questions, **KW)
    same = model.answer(images, questions, pruning=dvtp.PruningConfig(keep_ratio=1.0), **KW)
    assert torch.equal(base.sequences, same.sequences) and base.texts == same.texts
    assert same.kept_counts == same.visual_tokens
    assert [t.kept.tolist() for item in same.images for t in item] == [list(range(n)) for n in same.visual_tokens]


def _language_model_copy(vlm):
    """The VLM's language model as a standalone LLaDALM (for the eager reference, which
    reads Llama-style weight names)."""
    lm = models.llada_lm(vlm.config.text_config.to_dict())
    lm.model.load_state_dict(vlm.model.language_model.state_dict())
    lm.lm_head.load_state_dict(vlm.lm_head.state_dict())
    return lm.eval()


@pytest.mark.parametrize("keep", [0.5, 0.25])
def test_pruned_answer_matches_eager_reference(model, keep):
    """Kept tokens and answer equal the float64 eager reference (materialised attention
    maps, its own loop) fed the same spliced embeddings and the same span."""
    out = model.answer(IMG_A, "Count the dots.", pruning=dvtp.PruningConfig(keep_ratio=keep), **KW)
    batch = prepare(model, IMG_A, "Count the dots.")
    span = batch.visual_spans[0][0]
    proc = model.processor
    ref = reference_generate(
        _language_model_copy(model), batch.prompts[0], span, gen_length=16, steps=8, block_length=16,
        mask_id=proc.mask_id, keep_ratio=keep, suppressed=proc.suppressed_ids,
    )
    # Meaningful only away from near-ties: with 1317 visual tokens the importances (mean
    # attention, ~6.5e-4 each) sit close together; the float32 forward + float32
    # accumulation differ from float64 by at most 4.4e-8 per importance here (measured),
    # so a cut margin of 1e-7 cannot be flipped by rounding. (Margins: 3.2e-7 / 2.4e-7.)
    assert ref.importance_margin is None or ref.importance_margin > 1e-7
    assert ref.confidence_margin > 1e-6
    assert out.images[0][0].kept.tolist() == ref.kept
    assert out.sequences[0].tolist() == ref.tokens
    assert len(ref.kept) == max(1, math.floor(span[1] * keep))


def test_batch_equals_items_alone(model):
    images = [IMG_A, IMG_B, [IMG_C, IMG_A], None]
    questions = ["What is it?", "Is it wide?", "Compare the two.", "Say hi."]
    cfg = dvtp.PruningConfig(keep_ratio=0.5)
    both = model.answer(images, questions, pruning=cfg, **KW)
    assert len(set(both.prompt_lengths)) == 4  # different lengths share one padded batch
    for b in range(4):
        alone = model.answer(images[b], questions[b], pruning=cfg, **KW)
        assert torch.equal(alone.sequences[0], both.sequences[b]), b
        assert alone.texts[0] == both.texts[b]
        assert alone.kept_counts[0] == both.kept_counts[b]
        for x, y in zip(alone.images[0], both.images[b]):
            assert torch.equal(x.kept, y.kept)


def test_answer_statistics(model):
    cfg = dvtp.PruningConfig(keep_ratio=0.25)
    out = model.answer([IMG_B, [IMG_A, IMG_C]], ["Where?", "Which one?"], pruning=cfg, **KW)
    n = out.visual_tokens
    assert n == [729 + 23 * 55, 730 * 2]  # 300x700 on a 1x2 grid: 23 of 27 rows survive unpad
    assert out.kept_counts == [max(1, math.floor(v * 0.25)) for v in n]  # joint over an item's images
    assert sum(len(t.kept) for t in out.images[1]) == out.kept_counts[1]
    gen = out.generation
    assert gen.num_forwards == 8 and len(out.tokens_per_step) == 8
    assert out.tokens_per_step[0] == max(out.prompt_lengths) + 16
    assert out.tokens_per_step[-1] == max(p - v + k for p, v, k in zip(out.prompt_lengths, n, out.kept_counts)) + 16
    # the spans the sampler got are where prepare() spliced the image features
    assert out.generation.visual_spans == [[t.span for t in item] for item in out.images]
    boxes = out.images[0][0].kept_boxes
    assert boxes.shape == (len(out.images[0][0].kept), 4)
    assert set(out.timings) == {"preprocess", "vision", "generate", "total"}
    assert all(t >= 0 for t in out.timings.values())


def test_only_the_language_model_runs_dvtp_attention(model):
    seen = {}

    def record(name):
        def hook(module, args, kwargs):
            seen[name] = module.config._attn_implementation
        return hook

    handles = [
        model.model.vision_tower.register_forward_pre_hook(record("vision"), with_kwargs=True),
        model.model.language_model.register_forward_pre_hook(record("text"), with_kwargs=True),
    ]
    try:
        before = (model.config.vision_config._attn_implementation, model.config.text_config._attn_implementation)
        model.answer(IMG_A, "Hi?", pruning=dvtp.PruningConfig(keep_ratio=0.5), gen_length=4, steps=2)
    finally:
        for h in handles:
            h.remove()
    assert seen["text"] == dvtp.ATTENTION_NAME and seen["vision"] == before[0] != dvtp.ATTENTION_NAME
    assert (model.config.vision_config._attn_implementation, model.config.text_config._attn_implementation) == before


def test_text_only_llada_answers(model):
    lm = _language_model_copy(model)
    lm.processor = model.processor
    out = models.LLaDALM.answer(lm, None, "Hello there", **KW)
    ref = model.answer(None, "Hello there", **KW)
    assert torch.equal(out.sequences, ref.sequences)  # same LM weights, same prompt
    with pytest.raises(ValueError, match="text-only"):
        lm.answer(IMG_A, "What?", **KW)


@pytest.mark.parametrize(
    "images, questions, kwargs, error, match",
    [
        (IMG_A, 42, {}, ValueError, "questions must be a string"),
        ([IMG_A], ["a", "b"], {}, ValueError, "images must be a list of 2"),
        (IMG_A, ["a", 3], {}, TypeError, r"questions\[1\]"),
        ([IMG_A, IMG_B], "<image> only one placeholder", {}, ValueError, "placeholder"),
        ([IMG_A, np.zeros((0, 4, 3), np.uint8)], ["ok", "bad"], {}, ValueError, "item 1"),
        (IMG_A, "q", {"gen_length": 6, "block_length": 4}, ValueError, "gen_length"),
        (IMG_A, "q", {"steps": 0}, ValueError, "steps"),
        (IMG_A, "q", {"pruning": 0.5}, TypeError, "pruning"),
        (IMG_A, "q", {"pruning": dvtp.PruningConfig(prune_step=9)}, ValueError, "prune_step"),
        # empty questions, alone or in a batch
        (IMG_A, "", {}, ValueError, r"^questions is empty or whitespace only \(''\)"),
        (IMG_A, " \n\t", {}, ValueError, r"^questions is empty or whitespace only"),
        (None, "", {}, ValueError, r"^questions is empty"),
        ([IMG_A, IMG_B], ["ok", "  "], {}, ValueError, r"^questions\[1\] is empty or whitespace only \('  '\)"),
        (None, ["", "ok"], {}, ValueError, r"^questions\[0\] is empty"),
        # images / questions count mismatch: what was given is said
        ([IMG_A], ["a", "b"], {}, ValueError, r"with 2 questions, images must be a list of 2 .*got a list of 1$"),
        (IMG_A, ["a", "b"], {}, ValueError, r"images must be a list of 2 .*got one ndarray$"),
        # images that are not local data
        ("https://example.com/cat.jpg", "q", {}, ValueError, r"item 0: images\[0\]: .*is a URL; dvtp .*never fetches"),
        ([IMG_A, b"not an image"], ["ok", "bad"], {}, ValueError, r"item 1: images\[0\]: could not decode the 12 bytes"),
        ([IMG_A, b""], ["ok", "bad"], {}, ValueError, r"item 1: images\[0\]: the image bytes are empty"),
    ],
)
def test_bad_inputs_fail_before_any_forward(model, monkeypatch, images, questions, kwargs, error, match):
    def forbidden(*a, **k):
        raise AssertionError("a forward ran before the argument error")

    monkeypatch.setattr(model, "encode_images", forbidden)
    monkeypatch.setattr(model, "forward", forbidden)
    with pytest.raises(error, match=match):
        model.answer(images, questions, **{**KW, **kwargs})


def test_corrupt_image_file_is_named(model, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(ValueError, match="broken.png"):
        model.answer([IMG_A, str(bad)], ["ok", "bad"], **KW)


def test_answer_needs_a_processor():
    bare = tiny_llada_v(seed=1)
    bare.processor = None
    with pytest.raises(ValueError, match="processor"):
        bare.answer(IMG_A, "q", **KW)


def test_checkpoint_round_trip_answers_identically(model, tmp_path):
    """The tiny model written in the official LLaDA-V format (2+ shards) and loaded back
    with dvtp.load answers token for token as before, pruned and unpruned."""
    from dvtp.checkpoint import save_llada_v

    save_llada_v(model, tmp_path, max_shard_size="300KB")
    assert len(list(tmp_path.glob("model-*-of-*.safetensors"))) >= 2
    loaded = dvtp.load(tmp_path)
    images, questions = [IMG_A, [IMG_B, IMG_C]], ["What is it?", "Which is larger?"]
    for pruning in (None, dvtp.PruningConfig(keep_ratio=0.25)):
        a = model.answer(images, questions, pruning=pruning, **KW)
        b = loaded.answer(images, questions, pruning=pruning, **KW)
        assert torch.equal(a.sequences, b.sequences) and a.texts == b.texts
        assert a.kept_counts == b.kept_counts


def test_answer_with_cache_threshold_and_pruning(model):
    """The image path takes the cache and parallel decoding; refresh every step is exact."""
    from dvtp.vlm.images import synthetic_photo

    image = synthetic_photo(300, 200)
    kw = dict(gen_length=8, steps=8, block_length=4, stop=False, pruning=dvtp.PruningConfig(keep_ratio=0.25))
    plain = model.answer(image, "What is shown?", **kw)
    exact = model.answer(image, "What is shown?", cache="dual", refresh=1, **kw)
    assert torch.equal(exact.sequences, plain.sequences)
    fast = model.answer(image, "What is shown?", cache="prefix", threshold=0.5, **kw)
    assert fast.generation.full_forwards < fast.generation.num_forwards
    assert fast.kept_counts == plain.kept_counts
    with pytest.raises(ValueError, match="cache must be"):
        model.answer(image, "What is shown?", cache="all", **kw)


# ----------------------------------------------------------------------------- images as bytes
def _encoded(image: np.ndarray, fmt: str) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, fmt)
    return buf.getvalue()


def test_encoded_image_bytes_answer_like_the_decoded_image(model, tmp_path):
    """PNG bytes, a BytesIO and a file opened "rb" give exactly the answer of the pixels
    they hold (PNG is lossless); JPEG bytes are accepted too."""
    import io

    png = _encoded(IMG_B, "PNG")
    (tmp_path / "b.png").write_bytes(png)
    ref = model.answer([IMG_A, IMG_B], ["What is it?", "And this?"], **KW)
    with open(tmp_path / "b.png", "rb") as f:
        for given in (png, bytearray(png), io.BytesIO(png), f):
            out = model.answer([IMG_A, given], ["What is it?", "And this?"], **KW)
            assert torch.equal(out.sequences, ref.sequences) and out.visual_tokens == ref.visual_tokens
    out = model.answer(_encoded(IMG_C, "JPEG"), "What is it?", **KW)
    assert out.visual_tokens == model.answer(IMG_C, "What is it?", **KW).visual_tokens


# ----------------------------------------------------------------------------- one signature
def test_model_answer_has_the_functions_signature_and_docstring(model):
    """model.answer spells out every keyword of dvtp.vlm.answer (help() shows them, not
    **kwargs), with the same kinds, defaults and annotations, and the same docstring
    less the model argument: they cannot drift apart."""
    import inspect

    from dvtp.vlm.answer import answer, method_doc

    method = list(inspect.signature(model.answer).parameters.values())
    function = list(inspect.signature(answer).parameters.values())
    assert function[0].name == "model"
    assert method == function[1:]
    assert inspect.signature(model.answer).return_annotation == inspect.signature(answer).return_annotation
    assert not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in method)

    doc = inspect.getdoc(model.answer)
    assert doc == inspect.cleandoc(method_doc(answer.__doc__))
    assert "model:" not in doc and "model:" in answer.__doc__
    args = doc.split("Args:")[1].split("Returns:")[0]
    for p in method:  # every argument is documented
        assert re.search(rf"^    {p.name}:", args, re.M), p.name
    for field in ("texts", "sequences", "images[b][i]", "prompt_lengths", "visual_tokens", "kept_counts",
                  "tokens_per_step", "generation", "timings", "[B, gen_length]"):
        assert field in doc.split("Returns:")[1], field


def test_factor_is_passed_through(model, monkeypatch):
    """``factor`` goes to the argument check (before any forward) and to dvtp.generate."""
    import importlib

    answer_module = importlib.import_module("dvtp.vlm.answer")  # dvtp.vlm.answer is also the function
    seen = []

    class Stop(Exception):
        pass

    def generate(*args, **kwargs):
        seen.append(kwargs["factor"])
        raise Stop

    monkeypatch.setattr(answer_module, "generate", generate)
    for factor in (None, 1.5):
        with pytest.raises(Stop):
            model.answer(IMG_A, "q", factor=factor, **KW)
    assert seen == [None, 1.5]

    def forbidden(*a, **k):
        raise AssertionError("a forward ran before the argument error")

    monkeypatch.setattr(model, "encode_images", forbidden)
    with pytest.raises(ValueError, match="factor"):
        model.answer(IMG_A, "q", factor=-1.0, **KW)


def test_answer_with_factor_decoding(model):
    """The factor rule runs through the image path and, like threshold, can end blocks early."""
    kw = dict(gen_length=8, steps=8, block_length=4, stop=False, pruning=dvtp.PruningConfig(keep_ratio=0.25))
    plain = model.answer(IMG_B, "What is shown?", **kw)
    fast = model.answer(IMG_B, "What is shown?", factor=1.0, **kw)
    assert fast.sequences.shape == plain.sequences.shape
    assert fast.kept_counts == plain.kept_counts
    assert fast.generation.num_forwards <= plain.generation.num_forwards


def test_docs_list_every_argument():
    """docs/llada_v.md's headings for dvtp.load and model.answer list every argument."""
    import inspect
    from pathlib import Path

    from dvtp.vlm.answer import answer

    text = (Path(__file__).resolve().parents[1] / "docs" / "llada_v.md").read_text()
    for func, heading in ((dvtp.load, "## `dvtp.load("), (answer, "## `model.answer(")):
        line = next(l for l in text.splitlines() if l.startswith(heading))
        for p in inspect.signature(func).parameters.values():
            if p.kind is inspect.Parameter.KEYWORD_ONLY:
                assert re.search(rf"\b{p.name}=", line), (heading, p.name)
    assert "not used (see the roadmap)" not in text
