"""dvtp.generate: LLaDA sampler semantics, RedVTP pruning against an independent eager
float64 reference, baselines, bookkeeping and argument errors."""
from __future__ import annotations

import math

import pytest
import torch

import dvtp
from dvtp import models
from dvtp.config import PruningConfig
from dvtp.policies import PruningPolicy, register_policy
from eager_reference import reference_generate

MASK = 127


def _prompt(model, batch, n, seed=0):
    """Prompt embeddings: token embeddings with a stand-in 'image' of random features."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, MASK, (batch, n), generator=g)
    with torch.no_grad():
        emb = model.get_input_embeddings()(ids)
    feats = torch.randn(batch, n, model.config.hidden_size, generator=g) * 0.5
    return ids, emb, feats


def _vlm_prompt(model, batch, n, spans, seed=0):
    ids, emb, feats = _prompt(model, batch, n, seed)
    emb = emb.clone()
    for b, (s, l) in enumerate(spans):
        emb[b, s : s + l] = feats[b, s : s + l]
    return emb


def run(model, x=None, **kw):
    kw.setdefault("mask_id", MASK)
    return dvtp.generate(model, x, **kw)


# ---------------------------------------------------------------------------------------
# PruningConfig and argument errors
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(keep_ratio=0.0), "keep_ratio"),
        (dict(keep_ratio=1.5), "keep_ratio"),
        (dict(keep_ratio=-0.1), "keep_ratio"),
        (dict(keep_ratio=float("nan")), "keep_ratio"),
        (dict(keep_ratio=True), "keep_ratio"),
        (dict(keep_ratio="0.5"), "keep_ratio"),
        (dict(prune_step=0), "prune_step"),
        (dict(prune_step=1.0), "prune_step"),
        (dict(score_layers=[]), "score_layers"),
        (dict(score_layers=[-1]), "score_layers"),
        (dict(score_layers="01"), "score_layers"),
        (dict(renumber_positions=1), "renumber_positions"),
        (dict(policy="nope"), "policy"),
        (dict(seed=1.5), "seed"),
    ],
)
def test_pruning_config_rejects(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PruningConfig(**kwargs)


def test_pruning_config_normalises():
    cfg = PruningConfig(keep_ratio=1, score_layers=range(3, 0, -1))
    assert cfg.keep_ratio == 1.0 and cfg.score_layers == (1, 2, 3)
    assert PruningConfig().needs_scores and not PruningConfig(policy="uniform").needs_scores
    assert {"redvtp", "random", "uniform"} <= set(dvtp.available_policies())


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(visual_span=(10, 40)), "visual_span"),  # 10 + 40 > P = 40
        (dict(visual_span=(-1, 5)), "visual_span"),
        (dict(visual_span=[(0, 5)]), "visual_span"),  # one entry for B = 2
        (dict(visual_span=(0, 5, 1)), "visual_span"),
        (dict(visual_span=[[(0, 5), (3, 5)], None]), r"visual_span\[0\]\[1\] = \(3, 5\) overlaps"),
        (dict(visual_span=[(0, 5), (2.0, 5)]), r"visual_span\[1\] = \(2\.0, 5\): start and length must be ints"),
        (dict(attention_mask=torch.zeros(2, 40, dtype=torch.bool)), "attention_mask"),
        (dict(attention_mask=torch.ones(2, 39, dtype=torch.bool)), "attention_mask"),
        (dict(steps=5, block_length=4), "steps"),  # 2 blocks, 5 steps
        (dict(gen_length=8, block_length=3), "gen_length"),
        (dict(gen_length=0), "gen_length"),
        (dict(steps=0), "steps"),
        (dict(temperature=-1.0), "temperature"),
        (dict(remasking="entropy"), "remasking"),
        (dict(mask_id=128), "mask_id"),
        (dict(pruning=PruningConfig(prune_step=5), visual_span=(4, 20)), "prune_step"),
        (dict(pruning=PruningConfig(score_layers=[2]), visual_span=(4, 20)), "score_layers"),
        (dict(suppress_tokens=[500]), "suppress_tokens"),
    ],
)
def test_generate_rejects(llada, kwargs, match):
    _, emb, _ = _prompt(llada, 2, 40)
    base = dict(gen_length=8, steps=4, block_length=4)
    base.update(kwargs)
    with pytest.raises(ValueError, match=match):
        run(llada, emb, **base)


def test_generate_rejects_bad_prompts(llada):
    ids, emb, _ = _prompt(llada, 1, 10)
    with pytest.raises(ValueError, match="exactly once"):
        dvtp.generate(llada, ids, inputs_embeds=emb, mask_id=MASK, gen_length=4, steps=4)
    with pytest.raises(ValueError, match="inputs_embeds"):
        run(llada, emb[..., :10], gen_length=4, steps=4)
    with pytest.raises(ValueError, match="input_ids"):
        run(llada, ids + 1000, gen_length=4, steps=4)
    with pytest.raises(TypeError, match="pruning"):
        run(llada, emb, gen_length=4, steps=4, pruning=0.5)
    with pytest.raises(ValueError, match="keep_ratio"):  # out-of-range ratio never reaches the sampler
        run(llada, emb, gen_length=4, steps=4, pruning=PruningConfig(keep_ratio=2.0))


# ---------------------------------------------------------------------------------------
# sampler semantics
# ---------------------------------------------------------------------------------------


def test_num_transfer_tokens_schedule():
    mask = torch.tensor([[True] * 7 + [False], [True] * 8])
    sched = dvtp.sampler.num_transfer_tokens(mask, 3)
    assert sched.tolist() == [[3, 2, 2], [3, 3, 2]]


def test_unpruned_generation_statistics(llada):
    ids, _, _ = _prompt(llada, 1, 30)
    out = run(llada, ids[0], gen_length=16, steps=8, block_length=8, progress=True)
    assert out.sequences.shape == (1, 16)
    assert not (out.sequences == MASK).any()
    assert out.num_forwards == 8 == len(out.step_times) == len(out.tokens_per_step)
    assert out.tokens_per_step == [46] * 8
    assert out.seq_len_before == out.seq_len_after == [46]
    assert out.kept_indices == [None] and out.pruned_at_step is None and out.scoring_time is None
    # ids and their embeddings are the same prompt
    emb = llada.get_input_embeddings()(ids).detach()
    assert torch.equal(run(llada, inputs_embeds=emb, gen_length=16, steps=8, block_length=8).sequences, out.sequences)


CONFIGS = [
    # (model, batch, gen, steps, block, temperature, remasking)
    ("llada", 1, 16, 8, 8, 0.0, "low_confidence"),
    ("llada", 2, 16, 8, 4, 0.0, "low_confidence"),
    ("dream", 2, 12, 6, 12, 0.0, "low_confidence"),
    ("llada", 2, 16, 8, 8, 0.7, "low_confidence"),
    ("dream", 1, 8, 8, 4, 0.0, "random"),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: "-".join(map(str, c)))
@pytest.mark.parametrize("seed", [0, 1])
def test_keep_ratio_one_is_identical_to_unpruned(cfg, seed, llada, dream):
    name, B, gen, steps, block, temp, remask = cfg
    model = llada if name == "llada" else dream
    spans = [(3, 25), (6, 20)][:B]
    x = _vlm_prompt(model, B, 36, spans, seed=seed)
    common = dict(gen_length=gen, steps=steps, block_length=block, temperature=temp, remasking=remask)
    base = run(model, x, generator=torch.Generator().manual_seed(seed), **common)
    full = run(
        model, x, visual_span=spans, pruning=PruningConfig(keep_ratio=1.0),
        generator=torch.Generator().manual_seed(seed), **common,
    )
    assert torch.equal(base.sequences, full.sequences)
    assert full.pruned_at_step == 0 and full.scoring_time is not None
    assert [k.tolist() for k in full.kept_indices] == [list(range(l)) for _, l in spans]
    assert full.seq_len_after == full.seq_len_before


REF_CASES = [
    # (model, batch, keep, prune_step, renumber, score_layers, gen, steps, block)
    ("llada", 1, 0.5, 1, True, None, 16, 8, 8),
    ("llada", 1, 0.25, 1, True, None, 16, 8, 8),
    ("llada", 2, 0.5, 1, True, None, 16, 8, 4),
    ("llada", 2, 0.25, 1, True, None, 16, 8, 8),
    ("dream", 1, 0.5, 1, True, None, 12, 6, 6),
    ("dream", 1, 0.25, 1, True, None, 12, 6, 12),
    ("dream", 2, 0.5, 1, True, None, 12, 6, 6),
    ("dream", 2, 0.25, 1, True, None, 12, 6, 12),
    ("llada", 2, 0.5, 1, False, None, 16, 8, 8),  # original position ids
    ("dream", 2, 0.25, 1, False, None, 12, 6, 12),
    ("llada", 2, 0.25, 2, True, None, 16, 8, 8),  # prune after step 2
    ("llada", 2, 0.5, 1, True, [1], 16, 8, 8),  # score one layer only
]


@pytest.mark.parametrize("case", REF_CASES, ids=lambda c: "-".join(map(str, c)))
def test_matches_eager_reference(case, llada, dream):
    """Kept indices and tokens equal those of the float64 eager reference (own forward with
    materialised attention maps, own sampler loop, one item at a time)."""
    name, B, keep, prune_step, renumber, layers, gen, steps, block = case
    model = llada if name == "llada" else dream
    spans = [(4, 36), (6, 29)][:B]  # different spans -> different keep counts -> padding
    x = _vlm_prompt(model, B, 48, spans, seed=11)
    cfg = PruningConfig(keep_ratio=keep, prune_step=prune_step, renumber_positions=renumber, score_layers=layers)
    out = run(model, x, visual_span=spans, gen_length=gen, steps=steps, block_length=block, pruning=cfg)
    for b in range(B):
        ref = reference_generate(
            model, x[b], spans[b], gen_length=gen, steps=steps, block_length=block, mask_id=MASK,
            keep_ratio=keep, prune_step=prune_step, renumber_positions=renumber, score_layers=layers,
        )
        # the comparison is meaningful only away from float32-vs-float64 near-ties
        assert ref.importance_margin is None or ref.importance_margin > 1e-6
        assert ref.confidence_margin > 1e-6
        assert out.kept_indices[b].tolist() == ref.kept
        assert out.sequences[b].tolist() == ref.tokens
        n = spans[b][1]
        assert len(ref.kept) == max(1, math.floor(n * keep))
        assert out.seq_len_after[b] == 48 + gen - n + len(ref.kept)
    assert out.pruned_at_step == prune_step - 1
    assert out.tokens_per_step[:prune_step] == [48 + gen] * prune_step
    assert set(out.tokens_per_step[prune_step:]) == {max(out.seq_len_after)}
    assert out.backends and set(out.backends) == {"accumulate_visual_scores", "select_visual_tokens", "gather_compact"}
    assert out.scored_layers == (layers or [0, 1])


def test_renumbered_vs_original_positions(llada):
    """Documented behaviour: renumber_positions=True (default) runs the pruned sequence at
    positions arange(N'), as if it had been the input; False keeps the original ids (gaps).
    Both keep the same tokens (scored before pruning) but then see different RoPE phases."""
    spans = [(4, 36)]
    x = _vlm_prompt(llada, 1, 48, spans, seed=11)
    kw = dict(visual_span=spans, gen_length=16, steps=8, block_length=8)
    a = run(llada, x, pruning=PruningConfig(keep_ratio=0.25), **kw)
    b = run(llada, x, pruning=PruningConfig(keep_ratio=0.25, renumber_positions=False), **kw)
    assert torch.equal(a.kept_indices[0], b.kept_indices[0])
    # after pruning the model sees different positions: here the outputs differ
    assert not torch.equal(a.sequences, b.sequences)
    # (both match the eager reference with the same convention: test_matches_eager_reference)


def test_batch_equals_items_alone(dream):
    spans = [(2, 30), (5, 17)]
    x = _vlm_prompt(dream, 2, 40, spans, seed=5)
    kw = dict(gen_length=12, steps=6, block_length=6, pruning=PruningConfig(keep_ratio=0.5))
    both = run(dream, x, visual_span=spans, **kw)
    for b in range(2):
        alone = run(dream, x[b : b + 1], visual_span=spans[b], **kw)
        assert torch.equal(alone.sequences[0], both.sequences[b])
        assert torch.equal(alone.kept_indices[0], both.kept_indices[b])


def test_text_only_never_prunes(llada, monkeypatch):
    import dvtp_kernels

    called = []
    monkeypatch.setattr(dvtp_kernels, "select_visual_tokens", lambda *a, **k: called.append(1))
    ids, _, _ = _prompt(llada, 2, 30)
    kw = dict(gen_length=8, steps=4)
    base = run(llada, ids, **kw)
    out = run(llada, ids, pruning=PruningConfig(keep_ratio=0.25), **kw)
    assert torch.equal(base.sequences, out.sequences) and called == []
    assert out.kept_indices == [None, None] and out.scoring_time is None and out.pruned_at_step is None
    assert out.seq_len_after == out.seq_len_before == [38, 38]


def test_mixed_batch_text_and_image(llada):
    spans = [(3, 20), None]
    x = _vlm_prompt(llada, 2, 32, [(3, 20), (0, 0)], seed=2)
    out = run(llada, x, visual_span=spans, gen_length=8, steps=4, pruning=PruningConfig(keep_ratio=0.25))
    assert out.kept_indices[1] is None and len(out.kept_indices[0]) == 5
    assert out.seq_len_after == [40 - 15, 40]
    alone = run(llada, x[1:], gen_length=8, steps=4)
    assert torch.equal(alone.sequences[0], out.sequences[1])


def test_pruning_at_the_last_step_is_refused(llada):
    """Pruning after the last step would prune nothing useful (nothing runs afterwards, and
    every row has been transferred): refused before any forward. (The op's rule that an
    item with no scoring row keeps everything is tested in test_select_tokens.py.)"""
    x = _vlm_prompt(llada, 1, 30, [(2, 20)])
    for steps, prune_step in ((1, 1), (4, 4)):
        with pytest.raises(ValueError, match="last denoising step"):
            run(llada, x, visual_span=(2, 20), gen_length=4, steps=steps,
                pruning=PruningConfig(keep_ratio=0.25, prune_step=prune_step))
    # with two blocks, the last step of block 0 is fine: block 1 runs on the pruned sequence
    out = run(llada, x, visual_span=(2, 20), gen_length=4, steps=4, block_length=2,
              pruning=PruningConfig(keep_ratio=0.25, prune_step=2))
    assert len(out.kept_indices[0]) == 5 and out.pruned_at_step == 1


def test_baseline_policies(llada):
    x = _vlm_prompt(llada, 2, 40, [(2, 30), (4, 21)])
    kw = dict(visual_span=[(2, 30), (4, 21)], gen_length=8, steps=4)
    uni = run(llada, x, pruning=PruningConfig(keep_ratio=0.2, policy="uniform"), **kw)
    assert uni.kept_indices[0].tolist() == [(2 * i + 1) * 30 // 12 for i in range(6)]  # 2, 7, 12, ...
    assert uni.kept_indices[1].tolist() == [(2 * i + 1) * 21 // 8 for i in range(4)]
    assert uni.scoring_time is None  # no attention scoring for baselines
    r1 = run(llada, x, pruning=PruningConfig(keep_ratio=0.2, policy="random", seed=1), **kw)
    r1b = run(llada, x, pruning=PruningConfig(keep_ratio=0.2, policy="random", seed=1), **kw)
    r2 = run(llada, x, pruning=PruningConfig(keep_ratio=0.2, policy="random", seed=2), **kw)
    assert [k.tolist() for k in r1.kept_indices] == [k.tolist() for k in r1b.kept_indices]
    assert [k.tolist() for k in r1.kept_indices] != [k.tolist() for k in r2.kept_indices]
    assert [len(k) for k in r1.kept_indices] == [6, 4]
    assert torch.equal(r1.sequences, r1b.sequences)


def test_custom_policy_registration(llada):
    from dvtp import policies

    @register_policy("first_tokens_test")
    class FirstTokens(PruningPolicy):
        def importance(self, ctx):
            B, V = len(ctx.key_len), ctx.vmax
            scores = -torch.arange(V, dtype=torch.float32).expand(B, 1, V).contiguous()
            return scores, ctx.row_mask.any(1, keepdim=True)

    try:
        x = _vlm_prompt(llada, 1, 30, [(2, 20)])
        out = run(llada, x, visual_span=(2, 20), gen_length=8, steps=4,
                  pruning=PruningConfig(keep_ratio=0.25, policy="first_tokens_test"))
        assert out.kept_indices[0].tolist() == [0, 1, 2, 3, 4]
    finally:
        del policies._POLICIES["first_tokens_test"]


@pytest.mark.parametrize("block", [4, 16])
def test_stop_tokens_follow_llada_v(llada, block):
    """LLaDA-V's stopping, against the independent reference: once a stop token is out,
    only the masks before it are filled and generation ends when none is left."""
    ids, emb, _ = _prompt(llada, 1, 20, seed=3)
    kw = dict(gen_length=16, steps=8, block_length=block)
    full = run(llada, ids, **kw)
    stop = int(full.sequences[0, 1])
    out = run(llada, ids, stop_tokens=[stop], **kw)
    ref = reference_generate(llada, emb[0], None, mask_id=MASK, stop_ids=[stop], **kw)
    assert ref.stop_position is not None and ref.forwards < 8
    assert out.stop_positions == [ref.stop_position]
    assert out.sequences[0, : ref.stop_position + 1].tolist() == ref.tokens[: ref.stop_position + 1]
    assert out.num_forwards == ref.forwards and out.stopped_early
    assert (out.sequences[0, ref.stop_position + 1 :] == MASK).any()  # the tail is never needed
    # a stop id that never appears changes nothing
    unused = [t for t in range(MASK) if t not in full.sequences[0].tolist()][0]
    same = run(llada, ids, stop_tokens=unused, **kw)
    assert torch.equal(same.sequences, full.sequences) and same.stop_positions == [-1] and not same.stopped_early


def test_stop_tokens_batch_equals_items_alone(llada):
    ids, _, _ = _prompt(llada, 3, 20, seed=6)
    kw = dict(gen_length=16, steps=8, block_length=8)
    full = run(llada, ids, **kw)
    stop = int(full.sequences[0, 2])  # stops item 0 early; the others may never stop
    both = run(llada, ids, stop_tokens=[stop], **kw)
    for b in range(3):
        alone = run(llada, ids[b : b + 1], stop_tokens=[stop], **kw)
        assert torch.equal(alone.sequences[0], both.sequences[b])
        assert alone.stop_positions[0] == both.stop_positions[b]


def test_suppressed_tokens_never_generated(llada):
    ids, _, _ = _prompt(llada, 2, 20, seed=4)
    kw = dict(gen_length=8, steps=4)
    base = run(llada, ids, **kw)
    banned = sorted(set(base.sequences.flatten().tolist()))[:3]
    out = run(llada, ids, suppress_tokens=banned, **kw)
    assert not torch.isin(out.sequences, torch.tensor(banned)).any()
    rel = run(llada, ids, suppress_tokens=[b - 128 for b in banned], **kw)  # relative to the vocab end
    assert torch.equal(rel.sequences, out.sequences)
    # LLaDA's ids are beyond a tiny vocabulary: the default suppresses nothing here
    assert torch.equal(run(llada, ids, suppress_tokens=None, **kw).sequences, base.sequences)


def test_temperature_is_reproducible_with_a_generator(llada):
    ids, _, _ = _prompt(llada, 1, 20, seed=5)
    kw = dict(gen_length=8, steps=4, temperature=1.0)
    a = run(llada, ids, generator=torch.Generator().manual_seed(3), **kw)
    b = run(llada, ids, generator=torch.Generator().manual_seed(3), **kw)
    assert torch.equal(a.sequences, b.sequences)


def test_mask_prediction_stays_masked():
    """Masks are detected by value: a transfer that predicts the mask id stays masked."""
    from dvtp.generation.denoise import Denoiser
    from dvtp.generation.request import GenerationRequest

    G, V = 4, 6
    logits = torch.full((1, G, V), -5.0)
    logits[0, 0, 5] = 5.0  # position 0 predicts the mask id (5) with high confidence
    logits[0, 1, 2] = 3.0
    logits[0, 2, 1] = 1.0
    resp = torch.full((1, G), 5)
    request = GenerationRequest(
        gen_length=G, steps=2, block_length=G, temperature=0.0, remasking="low_confidence", mask_id=5,
        pruning=None, stop_ids=(), suppressed=(), cache=None, refresh="block", threshold=None, factor=None,
        generator=None, progress=False, shift=0,
    )
    transfer, new = Denoiser(request, torch.device("cpu")).step(logits, resp, torch.tensor([2]), None)
    assert transfer[0].tolist() == [True, True, False, False]
    assert new[0].tolist() == [5, 2, 5, 5]
    assert (new == 5).sum() == 3


def test_token_id_prompt_with_visual_span(llada):
    """A prompt of ids (e.g. image placeholder tokens) prunes like the same prompt as embeddings."""
    ids, _, _ = _prompt(llada, 2, 40, seed=8)
    emb = llada.get_input_embeddings()(ids).detach()
    kw = dict(visual_span=(5, 30), gen_length=8, steps=4, pruning=PruningConfig(keep_ratio=0.5))
    a, b = run(llada, ids, **kw), run(llada, inputs_embeds=emb, **kw)
    assert torch.equal(a.sequences, b.sequences)
    assert [k.tolist() for k in a.kept_indices] == [k.tolist() for k in b.kept_indices]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64])
def test_other_model_dtypes(dtype):
    model = models.llada_lm(models.tiny_llada_config(), seed=0, dtype=dtype)
    x = _vlm_prompt(model, 2, 40, [(3, 30), (3, 22)], seed=9).to(dtype)
    kw = dict(visual_span=[(3, 30), (3, 22)], gen_length=8, steps=4)
    base = run(model, x, **kw)
    same = run(model, x, pruning=PruningConfig(keep_ratio=1.0), **kw)
    assert torch.equal(base.sequences, same.sequences)
    out = run(model, x, pruning=PruningConfig(keep_ratio=0.25), **kw)
    assert [len(k) for k in out.kept_indices] == [7, 5]
    assert out.lse_from_attention is (dtype == torch.bfloat16)


def test_scoring_rows_follow_the_published_rule(llada):
    """Scoring rows = masked before the scoring step and NOT transferred by it (the published
    RedVTP rule), even when a transferred prediction is the mask id itself (which a by-value
    rule would count as still masked). Forced here: the two first response positions predict
    the mask id with overwhelming confidence, so step 1 transfers exactly them."""
    from dvtp import policies

    seen = []

    @register_policy("capture_rows_test")
    class Capture(PruningPolicy):
        needs_scores = True

        def importance(self, ctx):
            seen.append(ctx.row_mask.clone())
            return ctx.scores, ctx.row_mask

    def force_mask_prediction(module, args, output):
        output.logits[:, :2, MASK] = 1e4  # response rows 0, 1: certain, and the mask id
        return output

    handle = llada.register_forward_hook(force_mask_prediction)
    try:
        x = _vlm_prompt(llada, 1, 30, [(2, 20)])
        out = run(llada, x, visual_span=(2, 20), gen_length=8, steps=4,
                  pruning=PruningConfig(keep_ratio=0.5, policy="capture_rows_test"))
    finally:
        handle.remove()
        del policies._POLICIES["capture_rows_test"]
    rows = seen[0][0].tolist()
    assert rows == [False, False] + [True] * 6  # transferred rows excluded, though they hold the mask id
    # later steps detect masks by value: rows 0 and 1 compete again (and, forced, stay the mask id)
    assert out.sequences[0, :2].tolist() == [MASK, MASK]
    assert len(out.kept_indices[0]) == 10


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_generation_is_reproducible(llada, temperature):
    """Reruns give bit-identical tokens and kept sets: at temperature 0, and with a fixed
    generator at temperature > 0 (a different seed gives a different sample)."""
    spans = [(3, 30), (3, 22)]
    x = _vlm_prompt(llada, 2, 40, spans, seed=12)
    kw = dict(visual_span=spans, gen_length=16, steps=8, block_length=8, temperature=temperature,
              pruning=PruningConfig(keep_ratio=0.25))
    a = run(llada, x, generator=torch.Generator().manual_seed(5), **kw)
    b = run(llada, x, generator=torch.Generator().manual_seed(5), **kw)
    assert torch.equal(a.sequences, b.sequences)
    assert [k.tolist() for k in a.kept_indices] == [k.tolist() for k in b.kept_indices]
    if temperature > 0:
        c = run(llada, x, generator=torch.Generator().manual_seed(6), **kw)
        assert not torch.equal(a.sequences, c.sequences)
