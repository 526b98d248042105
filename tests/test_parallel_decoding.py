"""Parallel decoding by Fast-dLLM's factor rule (`factor=`), next to its threshold rule.

The reference below is the published rule written as a plain per-step loop over one item,
no cache, float64 softmax: the n-th most confident masked position of the block is taken
while its confidence is at least ``1 - f / (n + 1)`` (the first always), in the published
code's loop form, including its ``top_i == len - 1`` branch (a run of all candidates but
the last takes the last one too).
"""
from __future__ import annotations

import math

import pytest
import torch

import dvtp
from dvtp.config import PruningConfig
from dvtp.generation.denoise import factor_counts, factor_thresholds
from prompts import MASK, image_prompts


def run(model, x, **kw):
    kw.setdefault("mask_id", MASK)
    kw.setdefault("suppress_tokens", None)
    return dvtp.generate(model, x, **kw)


def published_factor_count(sorted_conf: list[float], factor: float) -> int:
    """Fast-dLLM's `get_transfer_index_dynamic` count for one item, as its loop computes it."""
    threshs = [1 - factor / (n + 1) for n in range(1, len(sorted_conf) + 1)]
    threshs[0] = -1  # at least one token
    for top_i in range(len(threshs)):
        if sorted_conf[top_i] < threshs[top_i]:
            break
    if top_i == 0 or top_i == len(threshs) - 1:
        top_i += 1
    return top_i


def reference_factor_generate(model, prompt, *, gen_length, steps, block_length, factor, mask_id=MASK):
    """One item, no cache: each step predicts the block, transfers the ``max(schedule count,
    factor count)`` most confident masked positions (ties: lower position); a block ends
    when it holds no mask. -> (tokens, forwards per block)."""
    embed = model.get_input_embeddings()
    P, G, L = prompt.shape[0], gen_length, block_length
    resp, per_block = [mask_id] * G, []
    spb = steps // (G // L)
    with torch.no_grad(), dvtp.patched(model):
        for blk in range(G // L):
            lo, hi = blk * L, (blk + 1) * L
            masked = sum(t == mask_id for t in resp[lo:hi])
            schedule = [masked // spb + (1 if s < masked % spb else 0) for s in range(spb)]
            per_block.append(0)
            for step in range(spb):
                if mask_id not in resp[lo:hi]:
                    break
                x = torch.cat([prompt, embed(torch.tensor(resp))]).unsqueeze(0)
                logits = model(inputs_embeds=x).logits[0, P + lo : P + hi].to(torch.float64)
                per_block[-1] += 1
                p = torch.softmax(logits, -1)
                x0 = logits.argmax(-1)
                cand = [i for i in range(L) if resp[lo + i] == mask_id]
                conf = {i: p[i, x0[i]].item() for i in cand}
                order = sorted(cand, key=lambda i: (-conf[i], i))
                n = max(schedule[step], published_factor_count([conf[i] for i in order], factor))
                for i in order[:n]:
                    resp[lo + i] = int(x0[i])
    return resp, per_block


def test_factor_counts_follow_the_published_loop():
    """Hand-made rows, f = 1 (thresholds -1, 2/3, 3/4, 4/5, ...), against the published loop."""
    rows = [
        [0.99, 0.9, 0.8, 0.1],    # 3 pass, 4th fails at the last candidate -> published takes all 4
        [0.99, 0.9, 0.1, 0.05],   # 2 pass
        [0.2, 0.1, 0.05, 0.01],   # only the first (always)
        [0.99, 0.98, 0.97, 0.96],  # all pass
        [0.5, 0.7, -math.inf, -math.inf],  # 2 candidates: all but the last pass -> both
        [0.3, -math.inf, -math.inf, -math.inf],  # one candidate
        [-math.inf] * 4,          # none
    ]
    ranked = torch.tensor(rows, dtype=torch.float32).sort(dim=1, descending=True).values
    candidates = torch.isfinite(ranked).sum(dim=1)
    got = factor_counts(ranked, candidates, factor_thresholds(1.0, 4, ranked.device)).tolist()
    want = [0 if c == 0 else published_factor_count(r[:c].tolist(), 1.0) for r, c in zip(ranked, candidates)]
    assert got == want == [4, 2, 1, 4, 2, 1, 0]


@pytest.mark.parametrize("factor", [0.5, 1.0, 2.0, 4.0, 50.0])
def test_factor_decoding_matches_the_published_rule(factor, llada):
    """Token for token and forward for forward against the reference, steps == gen_length
    (the schedule's minimum is one, so the rule is exactly the published one)."""
    (prompt,) = image_prompts(llada, [30], [(2, 20)], seed=11)
    kw = dict(gen_length=16, steps=16, block_length=8)
    out = run(llada, [prompt], factor=factor, **kw)
    tokens, per_block = reference_factor_generate(llada, prompt, factor=factor, **kw)
    assert out.sequences[0].tolist() == tokens
    assert out.forwards_per_block == per_block
    assert (out.sequences != MASK).all()


def test_factor_keeps_the_schedule_as_its_minimum(llada):
    """steps < gen_length: at least the schedule's count per step (so a block never takes
    more than its steps), the factor rule on top."""
    (prompt,) = image_prompts(llada, [30], [(2, 20)], seed=3)
    kw = dict(gen_length=16, steps=4, block_length=8)
    out = run(llada, [prompt], factor=0.5, **kw)
    tokens, per_block = reference_factor_generate(llada, prompt, factor=0.5, **kw)
    assert out.sequences[0].tolist() == tokens and out.forwards_per_block == per_block
    assert all(n <= 2 for n in per_block)


def test_factor_batch_items_are_independent(llada):
    prompts = image_prompts(llada, [30, 22, 26], [(2, 20), (1, 10), (3, 12)], seed=5)
    kw = dict(gen_length=16, steps=16, block_length=8, factor=1.0)
    batch = run(llada, prompts, **kw)
    for b, prompt in enumerate(prompts):
        alone = run(llada, [prompt], **kw)
        assert torch.equal(batch.sequences[b], alone.sequences[0])


@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_factor_stacks_with_pruning_and_caches(cache, llada, dream):
    """refresh=1 makes a cache exact and keep_ratio=1 keeps every token: with both the run
    equals plain factor decoding; with a real cache and pruning every block still finishes,
    and batches still equal their items."""
    for model in (llada, dream):
        prompts = image_prompts(model, [30, 24], [(2, 20), (1, 10)], seed=7)
        spans = [(2, 20), (1, 10)]
        kw = dict(gen_length=16, steps=16, block_length=8, factor=1.0, visual_span=spans)
        plain = run(model, prompts, **kw)
        exact = run(model, prompts, cache=cache, refresh=1, pruning=PruningConfig(keep_ratio=1.0), **kw)
        assert torch.equal(exact.sequences, plain.sequences)
        assert exact.forwards_per_block == plain.forwards_per_block
        fast = run(model, prompts, cache=cache, pruning=PruningConfig(keep_ratio=0.5), **kw)
        assert (fast.sequences != MASK).all() and fast.kept_counts == [10, 5]
        for b in range(2):
            alone = run(model, [prompts[b]], cache=cache, pruning=PruningConfig(keep_ratio=0.5),
                        **{**kw, "visual_span": spans[b]})
            assert torch.equal(fast.sequences[b], alone.sequences[0])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(factor=0.0), "factor must be a finite number > 0"),
        (dict(factor=-1.0), "factor must be a finite number > 0"),
        (dict(factor=float("inf")), "factor must be a finite number > 0"),
        (dict(factor="1"), "factor must be a finite number > 0"),
        (dict(factor=True), "factor must be a finite number > 0"),
        (dict(factor=1.0, threshold=0.9), r"threshold=0\.9 and factor=1\.0 are two parallel-decoding rules"),
    ],
)
def test_factor_arguments_are_checked(kwargs, match, llada):
    (prompt,) = image_prompts(llada, [20], [(2, 5)])
    with pytest.raises(ValueError, match=match):
        run(llada, [prompt], gen_length=8, steps=8, block_length=4, **kwargs)


def test_factor_names_the_callers_option():
    from dvtp.generation.request import check_generation_args

    with pytest.raises(ValueError, match=r"--threshold 0\.9 and --factor 1\.0"):
        check_generation_args(gen_length=8, steps=8, block_length=None, temperature=0.0, remasking="low_confidence",
                              pruning=None, threshold=0.9, factor=1.0,
                              names={"threshold": "--threshold", "factor": "--factor"})


def test_forwards_per_block_threshold_vs_factor(llada):
    """Both rules end blocks early on the tiny model; what each costs is reported."""
    (prompt,) = image_prompts(llada, [30], [(2, 20)], seed=11)
    kw = dict(gen_length=32, steps=32, block_length=8)
    plain = run(llada, [prompt], **kw)
    threshold = run(llada, [prompt], threshold=0.9, **kw)
    factor = run(llada, [prompt], factor=1.0, **kw)
    assert plain.forwards_per_block == [8] * 4
    assert sum(threshold.forwards_per_block) <= 32 and sum(factor.forwards_per_block) < 32
    print(f"forwards per block: plain {plain.forwards_per_block}, threshold=0.9 {threshold.forwards_per_block}, "
          f"factor=1.0 {factor.forwards_per_block}")
