"""LLaDA-V's visual-token packing: dvtp's layout and features against the independent
statement of LLaDA-V's `llava_arch` packing in tests/llada_v_reference.py (best-resolution
grid in LLaDA-V's (width, height) order, unpad with int() truncation, the "times > 1.1"
shrink, one newline per row, base view first), for many image sizes and aspect ratios."""
from __future__ import annotations

import math
import random

import pytest
import torch
from transformers.models.llava_onevision.modeling_llava_onevision import LlavaOnevisionModel

from dvtp.vlm import image_layout
from dvtp.vlm.config import tiny_llada_v_config
from dvtp.vlm.model import LLaDAVForConditionalGeneration
from dvtp.vlm.packing import BASE, GRID, NEWLINE, pack_image
from llada_v_reference import S, ref_count, ref_pack
from llada_v_reference import ref_select_best as ref_best_resolution

# (width, height): tiny, square, near-square, common photos, extreme ratios, huge, and the
# sizes where transformers' LLaVA-OneVision unpad (round(x, 7)) disagrees with LLaDA-V's int()
SIZES = [
    (1, 1), (3, 2), (13, 7), (383, 384), (384, 384), (385, 384), (640, 480), (480, 640),
    (1024, 768), (768, 1024), (300, 1000), (1000, 300), (1920, 200), (200, 1920),
    (1920, 1080), (4000, 3000), (12000, 9000), (5000, 20), (20, 5000), (2304, 2304),
    (47, 423), (423, 47), (369, 820), (750, 1375), (603, 1809), (738, 820), (49, 1323),
]
random.seed(0)
RANDOM_SIZES = [(random.randint(1, 4000), random.randint(1, 4000)) for _ in range(400)]


@pytest.fixture(scope="module")
def model():
    return LLaDAVForConditionalGeneration(tiny_llada_v_config(vocab_size=64, mask_token_id=63)).eval()


def test_documented_token_counts(model):
    # 384x384, 640x480, 1024x768, 300x1000, 1920x200 (width x height)
    counts = [model.model.layout((h, w), anyres=True).num_tokens for w, h in
              [(384, 384), (640, 480), (1024, 768), (300, 1000), (1920, 200)]]
    assert counts == [1485, 2929, 3627, 2835, 2769]
    assert model.model.layout((480, 640), anyres=False).num_tokens == 730


@pytest.mark.parametrize("size", SIZES + RANDOM_SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_grid_and_count_match_llada_v(model, size):
    W, H = size
    layout = model.model.layout((H, W), anyres=True)  # transformers' selection, swapped pinpoints
    bw, bh = ref_best_resolution(W, H)
    assert layout.grid == (bh // 384, bw // 384)
    assert layout.num_tokens == ref_count(W, H)
    kinds = layout.kinds()
    assert len(kinds) == layout.num_tokens
    assert (kinds[: S * S] == BASE).all()
    assert int((kinds == NEWLINE).sum()) == layout.packed[0]
    assert int((kinds == GRID).sum()) == layout.packed[0] * layout.packed[1]


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_packed_features_equal_llada_v(size):
    """Token ORDER and values: each view's features are distinct random vectors, so any
    permutation, wrong crop or misplaced newline shows up."""
    W, H = size
    g = torch.Generator().manual_seed(W * 7919 + H)
    bw, bh = ref_best_resolution(W, H)
    V = 1 + (bw // 384) * (bh // 384)
    D = 5
    feats = torch.randn(V, S * S, D, generator=g, dtype=torch.float64)
    newline = torch.randn(D, generator=g, dtype=torch.float64)
    layout = image_layout((H, W), (bh // 384, bw // 384), anyres=True)
    got = pack_image(feats, layout, newline)
    want = ref_pack(feats, W, H, newline)
    assert got.shape == want.shape == (layout.num_tokens, D)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)  # float64: the same arithmetic


def test_pad_mode_packing():
    g = torch.Generator().manual_seed(3)
    feats = torch.randn(1, S * S, 4, generator=g)
    newline = torch.randn(4, generator=g)
    layout = image_layout((100, 900), None, anyres=False)
    got = pack_image(feats, layout, newline)
    assert torch.equal(got, torch.cat([feats[0], newline[None]]))
    assert layout.kinds().tolist() == [BASE] * 729 + [NEWLINE]


def test_transformers_packing_differs_where_documented(model):
    """Why dvtp packs itself: transformers' unpad rounds round(x, 7) where LLaDA-V truncates."""
    W, H = 47, 423
    bw, bh = ref_best_resolution(W, H)
    V = 1 + (bw // 384) * (bh // 384)
    feats = torch.randn(V, S * S, model.config.text_config.hidden_size)
    sizes = torch.tensor([[H, W]])
    theirs, _ = LlavaOnevisionModel.pack_image_features(
        model.model, [feats], sizes, image_newline=model.model.image_newline, vision_aspect_ratio="anyres_max_4"
    )
    ours, _ = model.model.pack_image_features([feats], sizes, image_newline=model.model.image_newline)
    assert ours[0].shape[0] == ref_count(W, H)
    assert theirs[0].shape[0] != ref_count(W, H)
    # and where they agree, they agree exactly
    W, H = 640, 480
    bw, bh = ref_best_resolution(W, H)
    feats = torch.randn(1 + (bw // 384) * (bh // 384), S * S, model.config.text_config.hidden_size)
    sizes = torch.tensor([[H, W]])
    theirs, _ = LlavaOnevisionModel.pack_image_features(
        model.model, [feats], sizes, image_newline=model.model.image_newline, vision_aspect_ratio="anyres_max_4"
    )
    ours, _ = model.model.pack_image_features([feats], sizes, image_newline=model.model.image_newline)
    assert torch.equal(ours[0], theirs[0])


def test_encode_images_packs_the_tower_output(model):
    """encode_images = tower (last layer's pre-norm output) -> projector -> LLaDA-V packing."""
    g = torch.Generator().manual_seed(5)
    sizes, anyres = [(480, 640), (423, 47), (300, 200)], [True, True, False]
    layouts = [model.model.layout(s, anyres=a) for s, a in zip(sizes, anyres)]
    pixels = [torch.randn(1 + l.grid[0] * l.grid[1] if l.anyres else 1, 3, 384, 384, generator=g) for l in layouts]
    runs = model.encode_images(pixels, sizes, anyres)
    tower = model.model.vision_tower
    with torch.no_grad():
        for px, (h, w), lay, run in zip(pixels, sizes, layouts, runs):
            x = tower.embeddings(px)
            for layer in tower.encoder.layers:
                x = layer(x, None)
                x = x[0] if isinstance(x, tuple) else x
            proj = model.model.multi_modal_projector(x).double()
            want = ref_pack(proj, w, h, model.model.image_newline.double()) if lay.anyres else torch.cat(
                [proj[0], model.model.image_newline.double()[None]])
            assert run.shape == (lay.num_tokens, model.config.text_config.hidden_size)
            torch.testing.assert_close(run.double(), want, rtol=1e-5, atol=1e-5)


def test_boxes_cover_the_image():
    # 768x768: a 2x2 grid with no padding and no shrink: grid cells tile the image exactly
    layout = image_layout((768, 768), (2, 2), anyres=True)
    boxes = layout.boxes()
    kinds = layout.kinds()
    grid = boxes[kinds == GRID]
    area = ((grid[:, 2] - grid[:, 0]) * (grid[:, 3] - grid[:, 1])).sum()
    assert math.isclose(float(area), 768 * 768, rel_tol=1e-9)
    assert torch.isnan(boxes[kinds == NEWLINE]).all()
    base = boxes[kinds == BASE]
    assert math.isclose(float(((base[:, 2] - base[:, 0]) * (base[:, 3] - base[:, 1])).sum()), 768 * 768, rel_tol=1e-9)
    # a wide image: every grid box lies inside it and their union spans its full width
    layout = image_layout((480, 1920), (1, 5), anyres=True)
    grid = layout.boxes()[layout.kinds() == GRID]
    assert (grid[:, 0] >= 0).all() and (grid[:, 2] <= 1920).all() and (grid[:, 3] <= 480).all()
    assert float(grid[:, 0].min()) == 0.0 and float(grid[:, 2].max()) == 1920.0


def test_layout_rejects_bad_sizes():
    with pytest.raises(ValueError, match="image size"):
        image_layout((0, 10), (1, 1), anyres=True)
