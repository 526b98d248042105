"""dvtp.generate on ragged batches (different prompt lengths) and items with several visual
spans: every item equals that item run alone, every prompt form gives the same result,
two-image items match the float64 eager reference, and argument errors are clear."""
from __future__ import annotations

import math

import pytest
import torch

import dvtp
import dvtp_kernels
from dvtp.config import PruningConfig
from dvtp.spans import PROTECTED, SpanGeometry, resolve_visual_spans
from eager_reference import reference_generate

MASK = 127

# (prompt length, visual spans): a text-only item, a two-image item (text 19..23 between
# the images), a one-image item; the longest prompt is not the first item.
ITEMS = [
    (30, None),
    (48, [(3, 16), (24, 18)]),
    (40, [(5, 28)]),
]
SPANS = [spans for _, spans in ITEMS]


@pytest.fixture(params=["llada", "dream"])
def model_name(request):
    return request.param


@pytest.fixture
def model(model_name, llada, dream):
    return llada if model_name == "llada" else dream


def _items(model, seed=0, items=ITEMS):
    """Per-item prompts: (ids [P_b], embeddings [P_b, H]) with random-feature 'images' spliced in."""
    g = torch.Generator().manual_seed(seed)
    ids, embs = [], []
    for length, spans in items:
        x = torch.randint(0, MASK, (length,), generator=g)
        with torch.no_grad():
            emb = model.get_input_embeddings()(x).clone()
        feats = torch.randn(length, model.config.hidden_size, generator=g) * 0.5
        for s, n in spans or []:
            emb[s : s + n] = feats[s : s + n]
        ids.append(x)
        embs.append(emb)
    return ids, embs


def _padded(prompts, left: bool, fill):
    """A padded tensor ``[B, P_max(, H)]`` (padding = ``fill``) and its ``[B, P_max]`` bool mask."""
    B, P = len(prompts), max(len(p) for p in prompts)
    x = torch.full((B, P, *prompts[0].shape[1:]), fill, dtype=prompts[0].dtype)
    mask = torch.zeros(B, P, dtype=torch.bool)
    for b, p in enumerate(prompts):
        sl = slice(P - len(p), P) if left else slice(0, len(p))
        x[b, sl] = p
        mask[b, sl] = True
    return x, mask


def run(model, x=None, **kw):
    kw.setdefault("mask_id", MASK)
    return dvtp.generate(model, x, **kw)


def _kept(out, b):
    k = out.kept_indices[b]
    return None if k is None else k.tolist()


def _same(a, b):
    """Two outputs of the same batch agree token for token and on the kept indices."""
    assert torch.equal(a.sequences, b.sequences)
    assert [_kept(a, i) for i in range(len(a.kept_indices))] == [_kept(b, i) for i in range(len(b.kept_indices))]
    assert a.seq_len_after == b.seq_len_after and a.prompt_lengths == b.prompt_lengths


def _alone(model, embs, b, **kw):
    spans = SPANS[b]
    return run(model, [embs[b]], visual_span=None if spans is None else [spans], **kw)


class _Forwards:
    """Records the keyword arguments of every model forward."""

    def __init__(self, model):
        self.calls = []
        self.handle = model.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs):
        self.calls.append(dict(kwargs))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


PRUNINGS = [
    None,
    PruningConfig(keep_ratio=0.5),
    PruningConfig(keep_ratio=0.25),
    PruningConfig(keep_ratio=0.5, policy="uniform"),
    PruningConfig(keep_ratio=0.25, policy="uniform"),
]
GEN = {"llada": dict(gen_length=16, steps=8, block_length=8), "dream": dict(gen_length=12, steps=6, block_length=12)}


# ---------------------------------------------------------------------------------------
# ragged batches equal their items alone
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("pruning", PRUNINGS, ids=lambda p: "unpruned" if p is None else f"{p.policy}-{p.keep_ratio}")
def test_ragged_batch_equals_items_alone(model_name, model, pruning):
    _, embs = _items(model, seed=1)
    kw = dict(GEN[model_name], pruning=pruning)
    batch = run(model, embs, visual_span=SPANS, **kw)
    assert batch.prompt_lengths == [30, 48, 40]
    assert batch.visual_spans == [[], [(3, 16), (24, 18)], [(5, 28)]]
    G = kw["gen_length"]
    assert batch.seq_len_before == [30 + G, 48 + G, 40 + G]
    assert batch.tokens_per_step[0] == 48 + G
    for b in range(3):
        alone = _alone(model, embs, b, **kw)
        assert batch.sequences[b].tolist() == alone.sequences[0].tolist(), f"item {b}"
        assert _kept(batch, b) == _kept(alone, 0), f"item {b}"
        assert batch.seq_len_after[b] == alone.seq_len_after[0]
    if pruning is None:
        assert batch.kept_indices == [None] * 3 and batch.seq_len_after == batch.seq_len_before
    else:
        n_vis = [0, 34, 28]
        keep = [max(1, math.floor(n * pruning.keep_ratio)) for n in n_vis]
        assert batch.kept_indices[0] is None
        assert [len(k) for k in batch.kept_indices[1:]] == keep[1:]
        # text between the two images (5 tokens) is kept: only visual tokens go
        assert batch.seq_len_after == [30 + G] + [P + G - n + k for (P, _), n, k in zip(ITEMS[1:], n_vis[1:], keep[1:])]
        assert set(batch.tokens_per_step[1:]) == {max(batch.seq_len_after)}


def test_prompt_forms_agree(model):
    """List, right-padded + mask, left-padded + mask (NaN padding) give identical results."""
    ids, embs = _items(model, seed=2)
    kw = dict(visual_span=SPANS, gen_length=8, steps=4, pruning=PruningConfig(keep_ratio=0.25))
    ref = run(model, embs, **kw)
    for left in (False, True):
        x, mask = _padded(embs, left, float("nan"))
        _same(ref, run(model, inputs_embeds=x, attention_mask=mask, **kw))
        _same(ref, run(model, x, attention_mask=mask.to(torch.int64), **kw))
    # ids (image placeholder tokens) == their embeddings: as a list, and left-padded with
    # out-of-vocabulary padding
    with torch.no_grad():
        id_embs = [model.get_input_embeddings()(i) for i in ids]
    by_ids = run(model, input_ids=ids, **kw)
    _same(run(model, id_embs, **kw), by_ids)
    x, mask = _padded(ids, True, -100)
    _same(by_ids, run(model, x, attention_mask=mask, **kw))
    # [1, P_b] / [1, P_b, H] entries
    _same(ref, run(model, [e.unsqueeze(0) for e in embs], **kw))


def test_equal_lengths_take_the_unpadded_path(llada):
    """No mask and one [L] logit-row vector when lengths agree; a [B, N] key mask and [B, L]
    response slots when they differ (never an N x N mask)."""
    _, embs = _items(llada, seed=3, items=[(20, None), (20, None)])
    with _Forwards(llada) as f:
        a = run(llada, embs, gen_length=8, steps=2)
        b = run(llada, torch.stack(embs), gen_length=8, steps=2)
        c = run(llada, torch.stack(embs), attention_mask=torch.ones(2, 20, dtype=torch.bool), gen_length=8, steps=2)
    assert torch.equal(a.sequences, b.sequences) and torch.equal(a.sequences, c.sequences)
    # no mask, and the block's logit rows as one [L] index vector shared by the items
    assert all(k["attention_mask"] is None and k["logits_to_keep"].tolist() == list(range(20, 28)) for k in f.calls)

    _, embs = _items(llada, seed=3, items=[(20, None), (13, None)])
    with _Forwards(llada) as f:
        run(llada, embs, gen_length=8, steps=2)
    mask, keep = f.calls[0]["attention_mask"], f.calls[0]["logits_to_keep"]
    assert mask.dtype == torch.bool and mask.shape == (2, 28) and mask.sum(1).tolist() == [28, 21]
    assert keep.tolist() == [list(range(20, 28)), list(range(13, 21))]
    assert f.calls[0]["position_ids"] is None


def test_keep_one_on_a_ragged_batch_is_unpruned(llada):
    _, embs = _items(llada, seed=4)
    kw = dict(visual_span=SPANS, gen_length=16, steps=8, block_length=8)
    base = run(llada, embs, **kw)
    full = run(llada, embs, pruning=PruningConfig(keep_ratio=1.0), **kw)
    assert torch.equal(base.sequences, full.sequences)
    assert full.kept_indices[0] is None
    assert [k.tolist() for k in full.kept_indices[1:]] == [list(range(34)), list(range(28))]
    assert full.seq_len_after == full.seq_len_before


def test_original_positions_on_a_ragged_batch(model):
    _, embs = _items(model, seed=5)
    kw = dict(gen_length=12, steps=6, block_length=6, pruning=PruningConfig(keep_ratio=0.25, renumber_positions=False))
    batch = run(model, embs, visual_span=SPANS, **kw)
    renumbered = run(model, embs, visual_span=SPANS, **{**kw, "pruning": PruningConfig(keep_ratio=0.25)})
    assert [k.tolist() for k in batch.kept_indices[1:]] == [k.tolist() for k in renumbered.kept_indices[1:]]
    for b in range(3):
        alone = _alone(model, embs, b, **kw)
        assert batch.sequences[b].tolist() == alone.sequences[0].tolist(), f"item {b}"
        assert _kept(batch, b) == _kept(alone, 0), f"item {b}"


# ---------------------------------------------------------------------------------------
# several images in one item
# ---------------------------------------------------------------------------------------


REF_CASES = [
    # (model, keep, renumber, gen, steps, block)
    ("llada", 0.5, True, 16, 8, 8),
    ("llada", 0.25, True, 16, 8, 4),
    ("llada", 0.25, False, 16, 8, 8),
    ("dream", 0.5, True, 12, 6, 6),
    ("dream", 0.25, True, 12, 6, 12),
    ("dream", 0.5, False, 12, 6, 12),
]


@pytest.mark.parametrize("case", REF_CASES, ids=lambda c: "-".join(map(str, c)))
def test_two_images_match_eager_reference(case, llada, dream):
    """Joint selection over two images (text between them kept) equals the float64
    reference's: mean attention over layers, heads and still-masked rows of the
    concatenated visual tokens, top max(1, floor(n * keep)), everything else kept."""
    name, keep, renumber, gen, steps, block = case
    model = llada if name == "llada" else dream
    _, embs = _items(model, seed=11)
    cfg = PruningConfig(keep_ratio=keep, renumber_positions=renumber)
    out = run(model, embs, visual_span=SPANS, gen_length=gen, steps=steps, block_length=block, pruning=cfg)
    for b, spans in enumerate(SPANS):
        ref = reference_generate(
            model, embs[b], spans, gen_length=gen, steps=steps, block_length=block, mask_id=MASK,
            keep_ratio=keep, renumber_positions=renumber,
        )
        # the comparison is meaningful only away from float32-vs-float64 near-ties
        assert ref.importance_margin is None or ref.importance_margin > 1e-6
        assert ref.confidence_margin > 1e-6
        assert out.sequences[b].tolist() == ref.tokens, f"item {b}"
        if spans is None:
            assert out.kept_indices[b] is None
        else:
            assert out.kept_indices[b].tolist() == ref.kept, f"item {b}"
    # both images contribute to the joint keep set of item 1 (16 + 18 visual tokens)
    kept = out.kept_indices[1].tolist()
    assert any(j < 16 for j in kept) and any(j >= 16 for j in kept)


def test_protected_columns_and_keep_counts(llada, monkeypatch):
    """The selection sees the range first start .. last end with the text between images
    at PROTECTED (finite), and keeps n_protected + floor(n_visual * ratio) columns; a
    batch without text between images keeps the plain keep_ratio call."""
    calls = []
    original = dvtp_kernels.select_visual_tokens

    def spy(scores, row_mask, seq_len, key_start, key_len, **kw):
        calls.append(dict(scores=scores.clone(), seq_len=seq_len, key_start=key_start, key_len=key_len, **kw))
        return original(scores, row_mask, seq_len, key_start, key_len, **kw)

    monkeypatch.setattr(dvtp_kernels, "select_visual_tokens", spy)
    _, embs = _items(llada, seed=6)
    run(llada, embs, visual_span=SPANS, gen_length=8, steps=4, pruning=PruningConfig(keep_ratio=0.25))
    (call,) = calls
    assert call["key_start"] == [0, 3, 5] and call["key_len"] == [0, 39, 28]
    assert call["seq_len"] == [38, 56, 48]
    assert call["keep"] == [0, 5 + 8, 7] and "keep_ratio" not in call
    scores = call["scores"]
    assert scores.shape[2] == 39 and torch.isfinite(scores).all()
    assert (scores[1, :, 16:21] == PROTECTED).all()  # range columns of the text 19..23
    assert (scores[1, :, :16] < 100).all() and (scores[1, :, 21:39] < 100).all()

    calls.clear()
    items = [(30, None), (40, [(5, 10), (15, 12)])]  # touching spans: no text between them
    _, embs = _items(llada, seed=6, items=items)
    out = run(llada, embs, visual_span=[s for _, s in items], gen_length=8, steps=4,
              pruning=PruningConfig(keep_ratio=0.25))
    assert calls[0]["keep_ratio"] == 0.25 and "keep" not in calls[0]
    assert len(out.kept_indices[1]) == 5


def test_uniform_spreads_over_all_images(llada):
    _, embs = _items(llada, seed=7)
    out = run(llada, embs, visual_span=SPANS, gen_length=8, steps=4,
              pruning=PruningConfig(keep_ratio=0.25, policy="uniform"))
    assert out.kept_indices[1].tolist() == [(2 * i + 1) * 34 // 16 for i in range(8)]
    assert out.kept_indices[2].tolist() == [(2 * i + 1) * 28 // 14 for i in range(7)]


def test_no_scoring_row_keeps_both_images():
    """The several-image selection path with no scoring row left: everything is kept, the
    text between the images included (the op's rule, through the protected-column scores)."""
    geometry = SpanGeometry.from_spans([[(3, 10), (20, 6)]])
    columns = geometry.visual_columns(torch.device("cpu"))
    visual = torch.rand(1, 4, geometry.n_visual[0])
    scores = geometry.range_scores(visual, columns)
    gather_index, new_len, keep_index, keep_count = dvtp_kernels.select_visual_tokens(
        scores, torch.zeros(1, 4, dtype=torch.bool), [40], geometry.key_start, geometry.key_len,
        keep=geometry.keep_counts(0.25),
    )
    assert new_len.tolist() == [40] and keep_count.tolist() == [23]
    assert geometry.kept_visual(keep_index, keep_count.tolist())[0].tolist() == list(range(16))


def test_span_forms():
    lengths = [30, 48]
    assert resolve_visual_spans(None, lengths) == [[], []]
    assert resolve_visual_spans((2, 5), lengths) == [[(2, 5)], [(2, 5)]]
    assert resolve_visual_spans(torch.tensor([[2, 5], [3, 4]]), lengths) == [[(2, 5)], [(3, 4)]]
    assert resolve_visual_spans([None, [(1, 2), (3, 0), (5, 6)]], lengths) == [[], [(1, 2), (5, 6)]]
    assert resolve_visual_spans([[(1, 2)], (torch.tensor(3), 4)], lengths) == [[(1, 2)], [(3, 4)]]


# ---------------------------------------------------------------------------------------
# errors, all raised before any forward
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spans, match",
    [
        ([None, [(3, 16), (10, 5)], None], r"visual_span\[1\]\[1\] = \(10, 5\) overlaps visual_span\[1\]\[0\] = \(3, 16\)"),
        ([None, [(24, 18), (3, 16)], None], r"visual_span\[1\]\[1\] = \(3, 16\) starts before .* sorted by start"),
        ([(35, 5), None, None], r"visual_span\[0\] = \(35, 5\) falls outside the prompt of item 0 \[0, 30\)"),
        ([None, None, [(5, 28), (38, 4)]], r"visual_span\[2\]\[1\] = \(38, 4\) falls outside the prompt of item 2 \[0, 40\)"),
        ([None, [(1.5, 10), (24, 18)], None], r"visual_span\[1\]\[0\] = \(1\.5, 10\): start and length must be ints"),
        ([None, (True, 10), None], r"visual_span\[1\] = \(True, 10\): start and length must be ints"),
        ((1.0, 3), r"visual_span = \(1\.0, 3\): start and length must be ints"),
        ([None, None], r"visual_span must be .* one entry per item \(3 entries.* got 2 entries"),
        ([None, "ab", None], r"visual_span\[1\]"),
    ],
)
def test_span_errors(llada, spans, match):
    _, embs = _items(llada)
    with _Forwards(llada) as f, pytest.raises(ValueError, match=match):
        run(llada, embs, visual_span=spans, gen_length=8, steps=4, pruning=PruningConfig(keep_ratio=0.5))
    assert f.calls == []


def _prompt_error_cases(model):
    ids, embs = _items(model)
    x, mask = _padded(embs, False, 0.0)
    empty_row = mask.clone()
    empty_row[1] = False
    twos = mask.to(torch.int64) * 2
    return [
        (dict(inputs_embeds=x, attention_mask=empty_row), ValueError, r"attention_mask row\(s\) \[1\] have no real token"),
        (dict(inputs_embeds=x, attention_mask=mask[:, :-1]), ValueError, r"attention_mask must have the prompt's shape \[B, P\] = \[3, 48\]"),
        (dict(inputs_embeds=x, attention_mask=mask[:2]), ValueError, r"attention_mask must have the prompt's shape"),
        (dict(inputs_embeds=x, attention_mask=twos), ValueError, r"attention_mask must hold only 0/1"),
        (dict(inputs_embeds=x, attention_mask=mask.float()), TypeError, r"attention_mask must be a bool or 0/1 integer"),
        (dict(inputs_embeds=embs, attention_mask=mask), ValueError, r"attention_mask goes with a padded tensor"),
        (dict(inputs=[embs[0], ids[1]]), TypeError, r"inputs mixes token ids and embeddings"),
        (dict(inputs=[ids[0], embs[1]]), TypeError, r"inputs mixes token ids and embeddings"),
        (dict(input_ids=[ids[0], embs[1]]), TypeError, r"input_ids\[1\] must be an integer tensor"),
        (dict(inputs_embeds=[embs[0], ids[1]]), TypeError, r"inputs_embeds\[1\] must be a floating-point tensor"),
        (dict(inputs=[]), ValueError, r"inputs is an empty list"),
        (dict(inputs_embeds=()), ValueError, r"inputs_embeds is an empty list"),
        (dict(inputs_embeds=[embs[0], embs[1][:, :10]]), ValueError, r"inputs_embeds\[1\] must be \[P_b, hidden=64\]"),
        (dict(inputs_embeds=[embs[0], embs[1][:0]]), ValueError, r"inputs_embeds\[1\] must be .* P_b >= 1"),
        (dict(input_ids=[ids[0], ids[1] + 1000]), ValueError, r"input_ids must lie in \[0, vocab_size=128\)"),
        (dict(inputs_embeds=x[:0]), ValueError, r"inputs_embeds has batch size 0"),
        (dict(input_ids=torch.zeros(0, 5, dtype=torch.int64)), ValueError, r"input_ids has batch size 0"),
        (dict(inputs=[embs[0], "text"]), TypeError, r"inputs\[1\] must be a tensor"),
        (dict(inputs="text"), TypeError, r"inputs must be a tensor .* or a list"),
    ]


def test_prompt_errors(llada):
    for kwargs, exc, match in _prompt_error_cases(llada):
        with _Forwards(llada) as f, pytest.raises(exc, match=match):
            dvtp.generate(llada, mask_id=MASK, gen_length=8, steps=4, **kwargs)
        assert f.calls == [], kwargs
