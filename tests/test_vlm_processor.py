"""LLaDA-V input preparation: images (anyres / pad), prompt ids, decoding, tiny tokenizer.

The expected values here are written independently of dvtp.vlm and of transformers: plain
PIL + numpy statements of LLaDA-V's `process_anyres_image` / `expand2square` + SigLIP
normalisation, and string concatenation for LLaDA's chat template + `tokenizer_image_token`.
"""

from __future__ import annotations

import math
import pathlib

import numpy as np
import pytest
import torch
from PIL import Image

from dvtp.vlm.images import load_image
from dvtp.vlm.processor import (
    DEFAULT_SYSTEM_PROMPT,
    IMAGE_PLACEHOLDER,
    LLaDAVProcessor,
    ProcessedImage,
    llada_v_pinpoints,
)
from dvtp.vlm.tokenizer import LLADA_CHAT_TEMPLATE, SPECIAL_TOKENS, build_tiny_tokenizer
from llada_v_reference import REF_PINPOINTS, ref_select_best

S = 384

SYSTEM = (
    "You are a helpful language and vision assistant. You are able to understand the visual "
    "content that the user provides, and assist the user with a variety of tasks using "
    "natural language."
)
# LLaDA-V tokenizer_config.json chat_template, typed out again here.
REF_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
    "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim"
    " + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
)


# ----------------------------------------------------------------------------- reference
def ref_normalize(view: Image.Image) -> np.ndarray:
    x = np.asarray(view.convert("RGB"), dtype=np.float64) / 255.0
    return ((x - 0.5) / 0.5).transpose(2, 0, 1).astype(np.float32)  # [3, S, S]


def ref_anyres(img: Image.Image, pinpoints=REF_PINPOINTS):
    """Views [V, 3, S, S] and (rows, cols) of LLaDA-V's process_anyres_image."""
    W, H = img.size
    tw, th = ref_select_best(W, H, pinpoints)
    if tw / W < th / H:
        nw, nh = tw, min(math.ceil(H * tw / W), th)
    else:
        nw, nh = min(math.ceil(W * th / H), tw), th
    canvas = Image.new("RGB", (tw, th), (0, 0, 0))
    canvas.paste(img.resize((nw, nh)), ((tw - nw) // 2, (th - nh) // 2))
    patches = [canvas.crop((x, y, x + S, y + S)) for y in range(0, th, S) for x in range(0, tw, S)]
    views = [img.resize((S, S))] + patches
    return np.stack([ref_normalize(v) for v in views]), (th // S, tw // S)


def ref_pad(img: Image.Image) -> np.ndarray:
    """[1, 3, S, S] of LLaDA-V's pad mode (expand2square with grey 127, resize, normalise)."""
    W, H = img.size
    side = max(W, H)
    canvas = Image.new("RGB", (side, side), (127, 127, 127))
    canvas.paste(img, ((side - W) // 2, (side - H) // 2))
    return ref_normalize(canvas.resize((S, S)))[None]


def make_image(W: int, H: int, kind: str, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    if kind == "noise":
        arr = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    else:  # smooth gradient (+ a little noise) so resampling-filter differences would show
        y = np.linspace(0.0, 1.0, H, dtype=np.float32)[:, None]
        x = np.linspace(0.0, 1.0, W, dtype=np.float32)[None, :]
        arr = np.empty((H, W, 3), np.float32)
        arr[..., 0] = 255 * x
        arr[..., 1] = 255 * y
        arr[..., 2] = 127.5 * (1 + np.cos(4 * y) * np.sin(6 * x))
        arr += rng.integers(-4, 5, (H, W, 3), dtype=np.int8)
        np.clip(arr, 0, 255, out=arr)
        arr = np.rint(arr, out=arr).astype(np.uint8)
    return Image.fromarray(arr, "RGB")


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def tok():
    return build_tiny_tokenizer()


@pytest.fixture(scope="module")
def proc(tok):
    return LLaDAVProcessor(tok)


# ----------------------------------------------------------------------------- images
def test_pinpoints_are_llada_v_order():
    assert llada_v_pinpoints() == [list(p) for p in REF_PINPOINTS]
    assert llada_v_pinpoints()[:3] == [[384, 384], [384, 768], [384, 1152]]
    assert llada_v_pinpoints(image_size=10, max_grid=2) == [[10, 10], [10, 20], [20, 10], [20, 20]]


SIZES = [
    (1, 1),
    (2, 3),
    (13, 7),
    (384, 384),
    (385, 384),
    (640, 480),
    (480, 640),
    (1024, 768),
    (300, 1000),
    (1000, 300),
    (1920, 200),
    (200, 1920),
    (47, 423),
    (750, 1375),
    (603, 1809),
    (5000, 20),
    (20, 5000),
]  # (width, height)


@pytest.mark.parametrize("kind", ["noise", "gradient"])
@pytest.mark.parametrize("W,H", SIZES)
def test_anyres_matches_llada_v(proc, W, H, kind):
    img = make_image(W, H, kind, seed=W * 7919 + H)
    (out,) = proc.process_images([img])
    expected, grid = ref_anyres(img)
    assert isinstance(out, ProcessedImage)
    assert out.anyres is True
    assert out.size == (H, W)
    assert out.grid == grid
    assert out.num_views == 1 + grid[0] * grid[1] == expected.shape[0]
    assert out.pixel_values.dtype == torch.float32
    assert tuple(out.pixel_values.shape) == expected.shape
    np.testing.assert_allclose(out.pixel_values.numpy(), expected, rtol=0, atol=1e-5)


def test_anyres_huge_image(proc):
    img = make_image(4000, 3000, "gradient", seed=4)
    (out,) = proc.process_images([img])
    expected, grid = ref_anyres(img)
    assert grid == (5, 6) and out.grid == grid and out.num_views == 31
    np.testing.assert_allclose(out.pixel_values.numpy(), expected, rtol=0, atol=1e-5)


def test_anyres_grid_matches_reference_selection(proc):
    rng = np.random.default_rng(0)
    sizes = [tuple(int(v) for v in rng.integers(1, 4000, 2)) for _ in range(1500)]
    sizes += [
        (w, h)
        for w in (1, 383, 384, 385, 767, 768, 769, 2304, 2305)
        for h in (1, 384, 768, 1152, 5000)
    ]
    for W, H in sizes:
        tw, th = ref_select_best(W, H)
        assert proc.anyres_grid((H, W)) == (th // S, tw // S), (W, H)


def test_custom_pinpoints(tok):
    # asymmetric on purpose ([width, height], wide canvases only): the default 36 pinpoints
    # hold both (a, b) and (b, a), so they would not catch a (w, h) / (h, w) mix-up
    pins = [[384, 384], [768, 384], [1152, 384]]
    p = LLaDAVProcessor(tok, grid_pinpoints=pins)
    for W, H in [(500, 300), (300, 500), (1000, 200)]:
        img = make_image(W, H, "gradient", seed=W)
        (out,) = p.process_images([img])
        expected, grid = ref_anyres(img, [tuple(x) for x in pins])
        assert out.grid == grid and grid[0] == 1
        assert p.anyres_grid((H, W)) == grid
        np.testing.assert_allclose(out.pixel_values.numpy(), expected, rtol=0, atol=1e-5)
    for bad in ([], [[384, 500]], [[384]], [[0, 384]], [["a", 384]], [[384.0, 384]], "384x384"):
        with pytest.raises(ValueError, match="grid_pinpoints"):
            LLaDAVProcessor(tok, grid_pinpoints=bad)


@pytest.mark.parametrize(
    "sizes",
    [
        [(640, 480), (13, 7)],
        [(300, 1000), (1, 1), (5000, 20)],
        [(384, 384), (385, 384), (20, 5000), (1920, 200)],
    ],
)
def test_pad_mode_matches_llada_v(proc, sizes):
    imgs = [
        make_image(W, H, "noise" if k % 2 else "gradient", seed=k + 100)
        for k, (W, H) in enumerate(sizes)
    ]
    outs = proc.process_images(imgs)
    assert len(outs) == len(imgs)
    for img, out in zip(imgs, outs, strict=True):
        assert out.anyres is False and out.grid is None and out.num_views == 1
        assert out.size == (img.size[1], img.size[0])
        assert out.pixel_values.dtype == torch.float32
        np.testing.assert_allclose(out.pixel_values.numpy(), ref_pad(img), rtol=0, atol=1e-5)


def test_pad_background_is_grey_127(proc):
    img = Image.new("RGB", (40, 10), (255, 0, 0))
    (a, b) = proc.process_images([img, img])
    top = a.pixel_values[0, :, 0, S // 2]  # top row lies in the padding
    np.testing.assert_allclose(top.numpy(), [127 / 127.5 - 1] * 3, atol=1e-6)
    mid = a.pixel_values[0, :, S // 2, S // 2]
    np.testing.assert_allclose(mid.numpy(), [1.0, -1.0, -1.0], atol=1e-6)


def test_process_images_accepts_paths_arrays_and_modes(proc, tmp_path):
    rgb = make_image(64, 40, "gradient", seed=5)
    path = tmp_path / "img.png"
    rgb.save(path)
    arr = np.asarray(rgb)
    ref = proc.process_images([rgb])[0].pixel_values
    for src in (
        path,
        str(path),
        arr,
        torch.from_numpy(arr.copy()),
        np.concatenate([arr, np.full_like(arr[..., :1], 9)], -1),
    ):
        torch.testing.assert_close(proc.process_images([src])[0].pixel_values, ref, rtol=0, atol=0)
    assert proc.process_images([]) == []
    with pytest.raises(ValueError, match=r"images\[1\]"):
        proc.process_images([rgb, np.zeros((3, 8, 8), np.uint8)])
    with pytest.raises(TypeError, match="list"):
        proc.process_images(rgb)


# ----------------------------------------------------------------------------- load_image
def test_modes_converted_to_rgb():
    rng = np.random.default_rng(3)
    g = rng.integers(0, 256, (5, 7), dtype=np.uint8)
    a = rng.integers(0, 256, (5, 7), dtype=np.uint8)
    c = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)

    out = load_image(Image.fromarray(g, "L"))
    assert out.mode == "RGB" and out.size == (7, 5)
    np.testing.assert_array_equal(np.asarray(out), np.repeat(g[..., None], 3, -1))

    out = load_image(Image.fromarray(np.dstack([c, a]), "RGBA"))
    np.testing.assert_array_equal(np.asarray(out), c)  # alpha dropped, colours untouched

    out = load_image(Image.fromarray(np.dstack([g, a]), "LA"))
    np.testing.assert_array_equal(np.asarray(out), np.repeat(g[..., None], 3, -1))

    palette = rng.integers(0, 256, (256, 3), dtype=np.uint8)
    idx = rng.integers(0, 256, (5, 7), dtype=np.uint8)
    p = Image.frombytes("P", (7, 5), idx.tobytes())
    p.putpalette(palette.flatten().tolist())
    p.info["transparency"] = 3
    out = load_image(p)
    assert out.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(out), palette[idx])

    out = load_image(np.dstack([c, a]))  # [H, W, 4] uint8 array
    np.testing.assert_array_equal(np.asarray(out), c)
    out = load_image(torch.from_numpy(g[..., None].copy()))  # [H, W, 1] tensor
    np.testing.assert_array_equal(np.asarray(out), np.repeat(g[..., None], 3, -1))
    rgb = Image.fromarray(c, "RGB")
    assert load_image(rgb) is rgb


@pytest.mark.parametrize(
    "mode,what",
    [
        ("I;16", "16-bit"),
        ("I;16B", "16-bit"),
        ("I", "32-bit integer"),
        ("F", "32-bit floating-point"),
    ],
)
def test_wide_modes_rejected(mode, what):
    img = Image.new(mode, (4, 3))
    with pytest.raises(ValueError) as e:
        load_image(img, name="images[2]")
    msg = str(e.value)
    assert msg.startswith("images[2]")
    assert (
        f"is a {what} image (mode '{mode}'); LLaDA-V's processor works on 8-bit RGB: "
        "convert it first, e.g." in msg
    )


def test_empty_images_rejected():
    with pytest.raises(ValueError, match=r"images\[0\].*empty \(width 0, height 5\)"):
        load_image(Image.new("RGB", (0, 5)))
    with pytest.raises(ValueError, match=r"images\[0\].*empty \(height 0, width 4\)"):
        load_image(np.zeros((0, 4, 3), np.uint8))


def test_bad_files_rejected(tmp_path):
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(np.random.default_rng(0).integers(0, 256, 2000, dtype=np.uint8).tobytes())
    with pytest.raises(ValueError) as e:
        load_image(corrupt, name="images[3]")
    assert str(e.value).startswith("images[3]: could not read the image file")
    assert str(corrupt) in str(e.value) and "no image format PIL reads recognises it" in str(e.value)

    good = tmp_path / "good.png"
    make_image(200, 150, "noise", seed=9).save(good)
    data = good.read_bytes()
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError) as e:
        load_image(str(truncated))
    assert str(e.value).startswith("images[0]: could not read the image file")
    assert str(truncated) in str(e.value) and "truncated" in str(e.value)
    assert e.value.__cause__ is None and e.value.__suppress_context__

    missing = tmp_path / "nope.jpg"
    with pytest.raises(ValueError, match=r"images\[0\]: no such file: .*nope\.jpg"):
        load_image(missing)
    with pytest.raises(ValueError, match=r"images\[0\]: .* is a directory, not an image file"):
        load_image(tmp_path)

    wide = tmp_path / "wide.png"
    Image.new("I;16", (4, 4)).save(wide)
    with pytest.raises(ValueError, match=r"wide\.png.*is a 16-bit image"):
        load_image(wide)


def test_bad_arrays_rejected():
    with pytest.raises(TypeError, match=r"images\[0\].*dtype float32 \(shape \[4, 4, 3\]\).*uint8"):
        load_image(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(TypeError, match=r"images\[1\].*torch tensor of dtype torch.float32.*uint8"):
        load_image(torch.zeros(4, 4, 3), name="images[1]")
    with pytest.raises(TypeError, match="dtype bool"):
        load_image(np.zeros((4, 4), bool))
    with pytest.raises(
        ValueError, match=r"shape \[3, 8, 9\] looks channels-first.*transpose\(1, 2, 0\)"
    ):
        load_image(np.zeros((3, 8, 9), np.uint8))
    with pytest.raises(ValueError, match=r"channels-first.*permute\(1, 2, 0\)"):
        load_image(torch.zeros(3, 8, 9, dtype=torch.uint8))
    for shape in [(5, 4, 2), (2, 4, 4, 3), (5,)]:
        with pytest.raises(ValueError, match=r"is not an image; accepted shapes"):
            load_image(np.zeros(shape, np.uint8))
    with pytest.raises(TypeError, match=r"images\[0\]: got list; accepted: a PIL.Image.Image"):
        load_image([[1, 2], [3, 4]])


def test_exif_orientation_not_applied(tmp_path):
    img = make_image(30, 10, "noise", seed=2)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = tmp_path / "rot.jpg"
    img.save(path, exif=exif)
    out = load_image(path)
    assert out.size == (30, 10)


# ----------------------------------------------------------------------------- prompts
def ref_prompt_text(user: str) -> str:
    return (
        "<|startoftext|>"
        + "<|start_header_id|>system<|end_header_id|>\n\n"
        + SYSTEM.strip()
        + "<|eot_id|>"
        + "<|start_header_id|>user<|end_header_id|>\n\n"
        + user.strip()
        + "<|eot_id|>"
        + "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )


def ref_prompt_ids(tok, user: str) -> list[int]:
    """tokenizer_image_token with the bos quirk: every chunk after an image loses its first id."""
    chunks = [
        tok(c, add_special_tokens=False).input_ids for c in ref_prompt_text(user).split("<image>")
    ]
    assert chunks[0][0] == tok.convert_tokens_to_ids("<|startoftext|>")
    ids = list(chunks[0])
    for c in chunks[1:]:
        ids += [-200] + c[1:]
    return ids


def test_prompt_ids_text_only(proc, tok):
    q = "What colour is the sky?  "
    ids = proc.prompt_ids(q, 0)
    assert ids == tok(ref_prompt_text(q), add_special_tokens=False).input_ids
    assert ids[0] == tok.convert_tokens_to_ids("<|startoftext|>")
    assert IMAGE_PLACEHOLDER not in ids
    assert proc.prompt_text(q, 0) == ref_prompt_text(q)


def test_prompt_ids_one_image_drops_newline(proc, tok):
    q = "How many apples are on the table?"
    ids = proc.prompt_ids(q, 1)
    assert IMAGE_PLACEHOLDER == -200
    assert ids == ref_prompt_ids(tok, "<image>\n" + q)
    k = ids.index(-200)
    assert ids.count(-200) == 1
    # the reference drops the "\n" after <image>: the question's own first token follows
    after = tok(
        ref_prompt_text("<image>\n" + q).split("<image>")[1], add_special_tokens=False
    ).input_ids
    assert tok.decode(after[:1]) == "\n"
    assert ids[k + 1 : k + 1 + len(after) - 1] == after[1:]
    assert tok.decode(ids[k + 1 : k + 3]).startswith("How")
    before = ref_prompt_text("<image>\n" + q).split("<image>")[0]
    assert ids[:k] == tok(before, add_special_tokens=False).input_ids


def test_prompt_ids_three_images(proc, tok):
    q = "Which image shows a red car?"
    ids = proc.prompt_ids(q, 3)
    assert ids == ref_prompt_ids(tok, "<image> <image> <image>\n" + q)
    k = ids.index(-200)
    # " " between placeholders is one token and is dropped; so is the "\n"
    assert ids[k : k + 3] == [-200, -200, -200]
    assert ids.count(-200) == 3
    assert tok.decode(ids[k + 3 :]).startswith("Which image")


def test_prompt_ids_placeholders_in_question(proc, tok):
    q = "Compare <image> with <image>: which is larger?"
    ids = proc.prompt_ids(q, 2)
    assert ids == ref_prompt_ids(tok, q)
    assert ids.count(-200) == 2
    with pytest.raises(
        ValueError, match=r"questions: .*2 '<image>' placeholder\(s\) but 3 image\(s\)"
    ):
        proc.prompt_ids(q, 3)
    with pytest.raises(ValueError, match="questions"):
        proc.prompt_ids("<image> what?", 0)


def test_special_ids(proc, tok):
    look = tok.convert_tokens_to_ids
    assert proc.mask_id == look("<|mdm_mask|>")
    assert proc.bos_id == look("<|startoftext|>") == tok.bos_token_id
    assert proc.eot_id == look("<|eot_id|>")
    assert proc.stop_ids == [look("<|eot_id|>"), look("<|endoftext|>")]
    assert proc.suppressed_ids == [
        look(t)
        for t in ("<|endoftext|>", "<|startoftext|>", "<|start_header_id|>", "<|end_header_id|>")
    ]
    assert len(set(proc.suppressed_ids + [proc.mask_id, proc.eot_id])) == 6


def test_missing_special_token_rejected():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    bare = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")
    with pytest.raises(ValueError, match=r"tokenizer has no '<\|startoftext\|>' token"):
        LLaDAVProcessor(bare)


def test_decode(proc, tok):
    enc = lambda s: tok(s, add_special_tokens=False).input_ids  # noqa: E731
    eot, eos, mask, bos = (
        proc.eot_id,
        tok.convert_tokens_to_ids("<|endoftext|>"),
        proc.mask_id,
        proc.bos_id,
    )
    ids = enc(" A red car is parked.") + [eot] + enc(" ignored text") + [eos]
    assert proc.decode(ids) == "A red car is parked."
    assert proc.decode(torch.tensor(ids)) == "A red car is parked."
    assert (
        proc.decode([mask] + enc("Two") + [bos, mask] + enc(" dogs.\n") + [eos] + enc("x"))
        == "Two dogs."
    )
    assert proc.decode(enc("no stop here ")) == "no stop here"
    assert proc.decode([eot] + enc("after")) == ""
    with pytest.raises(ValueError, match="1-D"):
        proc.decode(torch.tensor([[1, 2]]))


# ----------------------------------------------------------------------------- tiny tokenizer
def test_tiny_tokenizer_deterministic_and_shaped(tok):
    again = build_tiny_tokenizer()
    assert again.backend_tokenizer.to_str() == tok.backend_tokenizer.to_str()
    assert again.get_vocab() == tok.get_vocab()
    assert 400 <= len(tok) <= 600
    for s in SPECIAL_TOKENS.values():
        i = tok.convert_tokens_to_ids(s)
        assert tok.convert_ids_to_tokens(i) == s
        assert tok(f"a{s}b", add_special_tokens=False).input_ids.count(i) == 1  # never split
    assert tok.bos_token == "<|startoftext|>" and tok.eos_token == "<|endoftext|>"
    assert tok.pad_token == "<|endoftext|>"
    assert tok("the image").input_ids == tok("the image", add_special_tokens=False).input_ids
    assert tok.bos_token_id not in tok("the image").input_ids


def test_tiny_tokenizer_round_trip(tok):
    texts = [
        "The quick brown fox jumps over the lazy dog.",
        "".join(chr(c) for c in range(32, 127)),
        "  leading and trailing spaces  ",
        "tabs\tand\nnewlines\n\n  mixed \r\n end",
        "Zebra xylophone qwerty 1234567890 !?",
    ]
    for t in texts:
        assert tok.decode(tok(t).input_ids) == t


def test_tiny_tokenizer_chat_template(tok):
    assert LLADA_CHAT_TEMPLATE == REF_TEMPLATE
    assert tok.chat_template == REF_TEMPLATE
    user = "  <image>\nWhat is this?  "
    text = tok.apply_chat_template(
        [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}], tokenize=False
    )
    assert text == ref_prompt_text(user)
    assert DEFAULT_SYSTEM_PROMPT == SYSTEM


def test_invalid_processor_arguments(proc, tok):
    with pytest.raises(ValueError, match="image_size"):
        LLaDAVProcessor(tok, image_size=0)
    with pytest.raises(ValueError, match="system_prompt"):
        LLaDAVProcessor(tok, system_prompt="look at <image>")
    with pytest.raises(ValueError, match="num_images"):
        proc.prompt_ids("hi", -1)
    with pytest.raises(TypeError, match="questions"):
        proc.prompt_ids(b"hi", 0)


def test_custom_system_prompt(tok):
    p = LLaDAVProcessor(tok, system_prompt="Be brief.")
    assert p.prompt_text("Hi", 0).startswith(
        "<|startoftext|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
    )


def test_paths_are_pathlib_friendly(tmp_path):
    path = pathlib.Path(tmp_path) / "x.png"
    Image.new("RGB", (3, 2), (1, 2, 3)).save(path)
    out = load_image(path)
    assert out.mode == "RGB" and np.asarray(out).tolist() == [[[1, 2, 3]] * 3] * 2


# ----------------------------------------------------------------------------- encoded bytes, URLs
def _png(img: Image.Image) -> bytes:
    import io

    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def test_encoded_bytes_and_file_objects_accepted(tmp_path):
    import io

    src = make_image(37, 23, "noise", seed=4)
    want = np.asarray(src.convert("RGB"))
    data = _png(src)
    path = tmp_path / "x.png"
    path.write_bytes(data)
    with open(path, "rb") as f:
        given = [data, bytearray(data), memoryview(data), io.BytesIO(data), f]
        for image in given:
            out = load_image(image, name="images[1]")
            assert out.mode == "RGB" and np.array_equal(np.asarray(out), want), type(image)
    # a grey JPEG becomes RGB; a palette PNG too
    buf = io.BytesIO()
    Image.fromarray(np.full((5, 6), 77, np.uint8), "L").save(buf, "JPEG")
    assert load_image(buf.getvalue()).mode == "RGB"
    assert load_image(_png(src.convert("P"))).size == (37, 23)


def test_undecodable_bytes_rejected():
    import io

    with pytest.raises(ValueError, match=r"^images\[2\]: could not decode the 14 bytes given \(starting b'GIF89a not rea"):
        load_image(b"GIF89a not rea", name="images[2]")
    png = _png(make_image(40, 30, "noise", seed=1))
    with pytest.raises(ValueError, match=r"could not decode .* as an image: .*truncated"):
        load_image(png[: len(png) // 2])
    with pytest.raises(ValueError, match=r"^images\[0\]: the image bytes are empty"):
        load_image(b"")
    with pytest.raises(ValueError, match=r"file object gave no bytes .*seek\(0\)"):
        stream = io.BytesIO(png)
        stream.read()
        load_image(stream)
    with pytest.raises(TypeError, match=r"text-mode file object.*'rb'"):
        load_image(io.StringIO("not bytes"))


@pytest.mark.parametrize(
    "url",
    ["http://example.com/cat.jpg", "https://huggingface.co/x/resolve/main/a.png", "s3://bucket/a.png",
     "gs://b/a.png", "hf://datasets/x/y/a.png", "ftp://h/a.png", "data:image/png;base64,iVBORw0KGgo="],
)
def test_urls_are_refused_without_network(url, monkeypatch):
    import socket

    def no_network(*a, **k):
        raise AssertionError("load_image touched the network")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    with pytest.raises(ValueError, match=r"^images\[0\]: .* is a URL; dvtp reads local images only and never fetches "
                                         r"URLs or hub images .*download the file first"):
        load_image(url)


def test_hub_names_get_a_hint(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"no such file: 'lmms-lab/llava-bench/cat\.jpg'; if that is a Hugging Face "
                                         r"Hub name: dvtp .*never fetches"):
        load_image("lmms-lab/llava-bench/cat.jpg")
    (tmp_path / "photos").mkdir()  # a local folder: a plain missing file
    with pytest.raises(ValueError, match=r"no such file: 'photos/cat\.jpg'$"):
        load_image("photos/cat.jpg")
    (tmp_path / "photos" / "cat.png").write_bytes(_png(make_image(8, 8, "noise", seed=2)))
    assert load_image("photos/cat.png").size == (8, 8)


def test_process_images_takes_bytes(proc):
    img = make_image(50, 40, "noise", seed=5)
    a = proc.process_images([_png(img)])
    b = proc.process_images([img])
    assert torch.equal(a[0].pixel_values, b[0].pixel_values)
    with pytest.raises(TypeError, match="images must be a list"):
        proc.process_images(_png(img))
    with pytest.raises(TypeError, match="images must be a list"):
        proc.process_images(bytearray(_png(img)))


def test_empty_question_rejected(proc):
    for q in ("", "   ", "\n\t"):
        with pytest.raises(ValueError, match=r"^questions: the question is empty or whitespace only"):
            proc.prompt_ids(q, 1)
