"""dvtp.generate with Fast-dLLM's prefix / dual K/V cache and threshold (parallel) decoding,
alone and with pruning compacting the cache; and the sampler loop's host-sync budget.

References written here, independently of dvtp.generation: a cached loop on transformers'
own `DynamicCache` (the same approximate semantics), and a threshold-decoding loop without
a cache. Both denoise in float64 with ties to the lower position.
"""
from __future__ import annotations

import math

import pytest
import torch
from transformers import DynamicCache

import dvtp
import dvtp_kernels
from dvtp.config import PruningConfig
from dvtp.generation import kv_cache as kv_cache_module
from prompts import MASK, image_prompts

PRUNINGS = [
    None,
    PruningConfig(keep_ratio=0.5),
    PruningConfig(keep_ratio=0.25, renumber_positions=False),
]


def run(model, prompts, **kw):
    kw.setdefault("mask_id", MASK)
    return dvtp.generate(model, prompts, **kw)


# ---------------------------------------------------------------------------------------
# refresh every step == no cache (the cache code paths run, with nothing approximate)
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("cache", ["prefix", "dual"])
@pytest.mark.parametrize("pruning", PRUNINGS, ids=["unpruned", "keep0.5", "keep0.25-orig-pos"])
@pytest.mark.parametrize("family", ["llada", "dream"])
def test_refresh_every_step_equals_no_cache(family, pruning, cache, llada, dream):
    model = llada if family == "llada" else dream
    for lengths, spans in [([41], [(4, 30)]), ([40, 29, 47], [(5, 30), (3, 20), (10, 31)])]:
        prompts = image_prompts(model, lengths, spans, seed=len(lengths))
        kw = dict(gen_length=12, steps=6, block_length=4, visual_span=spans if len(spans) > 1 else spans[0], pruning=pruning)
        base = run(model, prompts, **kw)
        cached = run(model, prompts, cache=cache, refresh=1, **kw)
        assert torch.equal(cached.sequences, base.sequences)
        assert cached.full_forwards == cached.num_forwards == base.num_forwards
        assert [k is None or k.tolist() for k in cached.kept_indices] == [k is None or k.tolist() for k in base.kept_indices]
        if pruning is not None:
            assert cached.prune_events[0].cache == ("refill" if pruning.renumber_positions else "compacted")


# ---------------------------------------------------------------------------------------
# block refresh == an independent cached loop (transformers' DynamicCache)
# ---------------------------------------------------------------------------------------


def _denoise64(logits, block, k, mask_id, threshold=None):
    """LLaDA's low-confidence step in float64 on one item's block: -> new block ids."""
    logits = logits.to(torch.float64)
    p = torch.softmax(logits, -1)
    x0 = logits.argmax(-1)
    conf = [p[i, x0[i]].item() if block[i] == mask_id else -math.inf for i in range(len(block))]
    order = sorted(range(len(block)), key=lambda i: (-conf[i], i))
    chosen = {i for i in order[:k] if conf[i] > -math.inf}
    if threshold is not None:
        chosen |= {i for i in range(len(block)) if conf[i] > -math.inf and conf[i] >= threshold}
    return [int(x0[i]) if i in chosen else block[i] for i in range(len(block))]


def _schedule(masked, steps):
    return [masked // steps + (1 if s < masked % steps else 0) for s in range(steps)]


def reference_cached_generate(model, prompt, *, gen_length, steps, block_length, mode, refresh, mask_id=MASK):
    """Fast-dLLM's cached sampler for ONE item (no pruning): at refresh steps a full forward
    fills a DynamicCache; other steps run the block (prefix: and everything after it) with
    the cached rows of everything else."""
    shift = getattr(model, "logits_shift", 0)
    embed = model.get_input_embeddings()
    P, G, L = prompt.shape[0], gen_length, block_length
    resp = [mask_id] * G
    spb = steps // (G // L)
    with torch.no_grad(), dvtp.patched(model):
        for blk in range(G // L):
            lo, hi = blk * L, (blk + 1) * L
            schedule = _schedule(sum(t == mask_id for t in resp[lo:hi]), spb)
            full_kv = None
            for step in range(spb):
                x = torch.cat([prompt, embed(torch.tensor(resp))]).unsqueeze(0)
                N = x.shape[1]
                if step == 0 or (refresh != "block" and step % refresh == 0):
                    cache = DynamicCache()
                    logits = model(inputs_embeds=x, cache=cache, use_cache=True).logits[0, P + lo : P + hi]
                    full_kv = [(layer.keys, layer.values) for layer in cache.layers]
                else:
                    a0 = P + lo - shift
                    a1 = N if mode == "prefix" else P + hi
                    cache = DynamicCache()
                    for i, (k, v) in enumerate(full_kv):  # every cached row but the active ones
                        cache.update(torch.cat([k[:, :, :a0], k[:, :, a1:]], 2), torch.cat([v[:, :, :a0], v[:, :, a1:]], 2), i)
                    pos = torch.arange(a0, a1).unsqueeze(0)
                    logits = model(inputs_embeds=x[:, a0:a1], position_ids=pos, cache=cache, use_cache=True).logits
                    logits = logits[0, shift : shift + L]
                resp[lo:hi] = _denoise64(logits, resp[lo:hi], schedule[step], mask_id)
    return resp


@pytest.mark.parametrize("refresh", ["block", 3])
@pytest.mark.parametrize("cache", ["prefix", "dual"])
@pytest.mark.parametrize("family", ["llada", "dream"])
def test_block_refresh_matches_independent_cached_loop(family, cache, refresh, llada, dream):
    model = llada if family == "llada" else dream
    (prompt,) = image_prompts(model, [37], [(3, 25)], seed=7)
    kw = dict(gen_length=16, steps=8, block_length=8)
    out = run(model, [prompt], cache=cache, refresh=refresh, suppress_tokens=None, **kw)
    ref = reference_cached_generate(model, prompt, mode=cache, refresh=refresh, **kw)
    assert out.sequences[0].tolist() == ref
    per_block = 1 if refresh == "block" else 2  # steps 0 and 3 of each 4-step block
    assert out.full_forwards == 2 * per_block and out.num_forwards == 8
    active = (16 if cache == "prefix" else 8) + model.logits_shift
    assert out.tokens_per_step[1] == active and out.cache_len_per_step[1] == 37 + 16


@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_cached_batch_equals_items_alone(cache, dream):
    """Ragged items in one padded batch: the key-valid vector hides padding and stale rows."""
    spans = [(5, 30), (3, 20), (10, 31)]
    prompts = image_prompts(dream, [40, 29, 47], spans, seed=3)
    kw = dict(gen_length=12, steps=6, block_length=4, cache=cache, pruning=PruningConfig(keep_ratio=0.5))
    batch = run(dream, prompts, visual_span=spans, **kw)
    for b in range(3):
        alone = run(dream, [prompts[b]], visual_span=[spans[b]], **kw)
        assert torch.equal(batch.sequences[b], alone.sequences[0]), b
        assert torch.equal(batch.kept_indices[b], alone.kept_indices[0])


# ---------------------------------------------------------------------------------------
# pruning compacts the cache; nothing beyond an item's length (or stale) is attended
# ---------------------------------------------------------------------------------------


def test_pruning_compacts_every_cached_layer_in_one_call(llada, monkeypatch):
    spans = [(5, 30), (3, 20), (10, 31)]
    prompts = image_prompts(llada, [40, 29, 47], spans, seed=5)
    seen = {}
    original_gather = dvtp_kernels.gather_compact

    def spy(tensors, gather_index, new_len, **kw):
        out = original_gather(tensors, gather_index, new_len, **kw)
        seen.setdefault("calls", []).append((list(tensors), gather_index, new_len, kw, out))
        return out

    monkeypatch.setattr(dvtp_kernels, "gather_compact", spy)
    out = run(llada, prompts, visual_span=spans, gen_length=12, steps=6, block_length=4, cache="prefix",
              pruning=PruningConfig(keep_ratio=0.25, renumber_positions=False))
    assert len(seen["calls"]) == 1  # the sequence and every layer's K and V: one call
    tensors, gather_index, new_len, kw, compacted = seen["calls"][0]
    layers = llada.config.num_hidden_layers
    assert len(tensors) == 3 + 2 * layers and kw["dims"] == [1, 1, 1] + [2] * (2 * layers)
    assert new_len.tolist() == out.seq_len_after
    for before, after in zip(tensors[3:], compacted[3:]):  # K then V of every layer [B, Hkv, N, D]
        for b, n in enumerate(new_len.tolist()):
            assert torch.equal(after[b, :, :n], before[b, :, gather_index[b, :n]])


def _poisoning(monkeypatch, shift):
    """Fill every cached row a step must not read with NaN: padding (beyond an item's
    length), after each fill and after pruning, and the active tokens' own stale rows."""
    import dvtp.sampler as sampler

    full_forward = sampler._full_forward

    def poisoned_full_forward(model, state, cache, rows):
        logits = full_forward(model, state, cache, rows)
        if cache is not None:
            lens = torch.tensor(state.layout.seq_lens)
            first = rows if rows.dim() == 2 else rows.expand(len(lens), -1)
            start = first[:, 0] - shift  # the active tokens begin here (the block, Dream: one before)
            slot = torch.arange(state.length)
            bad = (slot >= lens[:, None]) | (slot >= start[:, None])
            if sampler_mode["cache"] == "dual":
                bad = (slot >= lens[:, None]) | ((slot >= start[:, None]) & (slot <= first[:, -1:]))
            for t in cache.tensors():
                t.masked_fill_(bad[:, None, :, None], float("nan"))
        return logits

    prune = sampler.prune

    def poisoned_prune(state, cache, *args):
        event = prune(state, cache, *args)
        if cache is not None and event.cache == "compacted":
            lens = torch.tensor(state.layout.seq_lens)
            bad = torch.arange(state.length) >= lens[:, None]
            for t in cache.tensors():
                t.masked_fill_(bad[:, None, :, None], float("nan"))
        return event

    sampler_mode = {}
    monkeypatch.setattr(sampler, "_full_forward", poisoned_full_forward)
    monkeypatch.setattr(sampler, "prune", poisoned_prune)
    return sampler_mode


@pytest.mark.parametrize("cache", ["prefix", "dual"])
@pytest.mark.parametrize("family", ["llada", "dream"])
def test_rows_a_step_must_not_read_are_never_attended(family, cache, llada, dream, monkeypatch):
    model = llada if family == "llada" else dream
    spans = [(5, 30), (3, 20), (10, 31)]
    prompts = image_prompts(model, [40, 29, 47], spans, seed=9)
    kw = dict(visual_span=spans, gen_length=12, steps=6, block_length=4, cache=cache,
              pruning=PruningConfig(keep_ratio=0.5, renumber_positions=False))
    clean = run(model, prompts, **kw)
    mode = _poisoning(monkeypatch, model.logits_shift)
    mode["cache"] = cache
    poisoned = run(model, prompts, **kw)
    assert torch.equal(poisoned.sequences, clean.sequences)
    assert (poisoned.sequences != MASK).all()  # a NaN read would have left argmax garbage / masks


def test_cached_step_before_a_fill_is_refused():
    cache = kv_cache_module.DiffusionCache(2)
    with pytest.raises(RuntimeError, match="before the cache was filled"):
        cache.update(torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 4), 0)


# ---------------------------------------------------------------------------------------
# threshold (parallel) decoding
# ---------------------------------------------------------------------------------------


def reference_threshold_generate(model, prompt, *, gen_length, steps, block_length, threshold, mask_id=MASK):
    """Fast-dLLM's parallel decoding without a cache for ONE item: every masked position of
    the block with confidence >= threshold, and at least the schedule's count; a block ends
    when it holds no mask. -> (tokens, forwards)."""
    embed = model.get_input_embeddings()
    P, G, L = prompt.shape[0], gen_length, block_length
    resp, forwards = [mask_id] * G, 0
    spb = steps // (G // L)
    with torch.no_grad(), dvtp.patched(model):
        for blk in range(G // L):
            lo, hi = blk * L, (blk + 1) * L
            schedule = _schedule(sum(t == mask_id for t in resp[lo:hi]), spb)
            for step in range(spb):
                if step and mask_id not in resp[lo:hi]:
                    break
                x = torch.cat([prompt, embed(torch.tensor(resp))]).unsqueeze(0)
                logits = model(inputs_embeds=x).logits[0, P + lo : P + hi]
                forwards += 1
                resp[lo:hi] = _denoise64(logits, resp[lo:hi], schedule[step], mask_id, threshold)
    return resp, forwards


@pytest.mark.parametrize("threshold", [0.02, 0.05, 1.0, 1.5])
def test_threshold_decoding_matches_reference(threshold, llada):
    (prompt,) = image_prompts(llada, [30], [(2, 20)], seed=11)
    kw = dict(gen_length=16, steps=16, block_length=8)  # steps == gen_length: one per step at least
    out = run(llada, [prompt], threshold=threshold, suppress_tokens=None, **kw)
    tokens, forwards = reference_threshold_generate(llada, prompt, threshold=threshold, **kw)
    assert out.sequences[0].tolist() == tokens and out.num_forwards == forwards
    assert sum(out.forwards_per_block) == forwards
    if threshold > 1:  # nothing reaches it: exactly the schedule, one transfer per step
        plain = run(llada, [prompt], suppress_tokens=None, **kw)
        assert torch.equal(out.sequences, plain.sequences) and forwards == 16


def test_low_threshold_finishes_blocks_in_fewer_forwards(llada):
    (prompt,) = image_prompts(llada, [30], [(2, 20)], seed=11)
    kw = dict(gen_length=16, steps=16, block_length=8, suppress_tokens=None)
    slow = run(llada, [prompt], threshold=1.5, **kw)
    fast = run(llada, [prompt], threshold=0.02, cache="dual", pruning=PruningConfig(keep_ratio=0.5), visual_span=(2, 20), **kw)
    assert slow.forwards_per_block == [8, 8]
    assert fast.num_forwards < slow.num_forwards and len(fast.forwards_per_block) == 2
    assert (fast.sequences != MASK).all()


# ---------------------------------------------------------------------------------------
# argument errors, reported backends
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(cache="full"), "cache must be"),
        (dict(cache="prefix", refresh=0), "refresh must be"),
        (dict(cache="prefix", refresh="step"), "refresh must be"),
        (dict(refresh=2), "needs a cache"),
        (dict(threshold=0.0), "threshold must be"),
        (dict(threshold=float("nan")), "threshold must be"),
        (dict(threshold="0.9"), "threshold must be"),
    ],
)
def test_cache_and_threshold_arguments_are_checked(kwargs, match, llada):
    with pytest.raises(ValueError, match=match):
        run(llada, torch.randint(0, MASK, (1, 10)), gen_length=4, steps=4, **kwargs)


def test_backends_report_what_ran(llada):
    (prompt,) = image_prompts(llada, [30], [(2, 20)], seed=1)
    kw = dict(visual_span=(2, 20), gen_length=8, steps=4)
    assert run(llada, [prompt], pruning=PruningConfig(keep_ratio=0.5, backend="reference"), **kw).backends == {
        op: "reference" for op in dvtp_kernels.dispatch.OPS
    }
    assert run(llada, [prompt], pruning=PruningConfig(keep_ratio=0.5, policy="uniform"), **kw).backends.keys() == {
        "select_visual_tokens", "gather_compact"
    }  # no scoring pass ran


# ---------------------------------------------------------------------------------------
# no host synchronisation inside a step
# ---------------------------------------------------------------------------------------

SYNCING_OPS = ("aten::_local_scalar_dense", "aten::item", "aten::lift_fresh")


@pytest.mark.parametrize("kw", [dict(), dict(cache="prefix"), dict(cache="dual", stop_tokens=[3])],
                         ids=["no-cache", "prefix", "dual-stop"])
def test_steps_issue_no_host_sync(kw, llada):
    """Profiled on CPU: no .item()/.tolist()/bool(tensor) (aten::_local_scalar_dense) and no
    tensor built from host data (aten::lift_fresh, a host-to-device copy on a GPU) inside any
    step that does not prune."""
    from torch.profiler import ProfilerActivity, profile

    prompts = image_prompts(llada, [30, 24], [(2, 20), (1, 10)], seed=2)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        out = run(llada, prompts, gen_length=8, steps=8, block_length=4, **kw)
    events = prof.events()
    steps = [e.time_range for e in events if e.name == "dvtp.step"]
    assert len(steps) == out.num_forwards
    inside = [
        e.name for e in events
        if e.name in SYNCING_OPS and any(s.start <= e.time_range.start <= s.end for s in steps)
    ]
    assert inside == []


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
@pytest.mark.parametrize("kw", [dict(), dict(cache="prefix"), dict(cache="dual", stop_tokens=[3])],
                         ids=["no-cache", "prefix", "dual-stop"])
def test_cuda_loop_runs_under_sync_debug_mode(kw, monkeypatch):
    """The denoising loop (everything inside `dvtp.patched`) on CUDA with any device sync an error."""
    import contextlib

    import dvtp.sampler as sampler

    model = dvtp.models.llada_lm(dvtp.models.tiny_llada_config(), seed=0).cuda()
    prompts = [p.cuda() for p in image_prompts(model, [30, 24], [(2, 20), (1, 10)], seed=2)]
    run(model, prompts, gen_length=8, steps=8, block_length=4, **kw)  # warm-up (lazy init may sync)
    real_patched = sampler.patched

    @contextlib.contextmanager
    def strict(model):
        with real_patched(model) as hook:
            torch.cuda.set_sync_debug_mode("error")
            try:
                yield hook
            finally:
                torch.cuda.set_sync_debug_mode("default")

    monkeypatch.setattr(sampler, "patched", strict)
    run(model, prompts, gen_length=8, steps=8, block_length=4, **kw)
