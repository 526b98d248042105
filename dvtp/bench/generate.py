"""End-to-end `dvtp.generate` cases: pruning, Fast-dLLM caching and parallel decoding, alone
and stacked, on a LLaDA-V-shaped language model.

Setup (CPU, the defaults): a LLaDA-style LM with random weights (hidden 256, 4 layers, 8
heads / 8 kv heads, intermediate 688, vocab 300, float32) and a prompt of 3590 embeddings
whose visual span is positions 50..3550 (3500 tokens: a 1024x768 image in LLaDA-V has
~3.6k); temperature 0. Two generation shapes: gen 32 / block 32 / 16 steps (LLaDA-V's
DocVQA-like settings) and gen 128 / block 32 / 64 steps. On CUDA the language model is
LLaDA-8B-shaped (32 layers x 4096, bf16, random weights) on the same sequence.

Modes (the implementations of each case, baseline first): "baseline" (every step runs the
whole sequence), "prune0.25" (RedVTP, keep 0.25), "cache" (prefix cache, refreshed each
block), "cache+prune0.25", "cache+thr0.9" (prefix cache + parallel decoding at threshold
0.9), "cache+thr0.9+prune0.25".

How many forwards threshold decoding saves depends on how confident the model is. A model
with random weights is not (its softmax is nearly flat), so the LM head is scaled by
``head_scale`` (default 6) to make it about as decisive as a trained one: at threshold 0.9
it then transfers several tokens per forward (the records give ``tokens_per_forward``; the
Fast-dLLM paper reports 2-3.5 on real LLaDA tasks). Without the threshold the head scale
changes no timing.

Each record's ``extra`` holds the forwards, full forwards, tokens per forward, kept tokens,
the analytic matmul FLOPs of the run and the FLOP-ideal speedup over the baseline.
"""
from __future__ import annotations

import torch
from transformers import LlamaConfig

from .harness import Case

__all__ = ["cases", "build", "MODES", "generation_flops"]

MODES = {
    "baseline": dict(),
    "prune0.25": dict(pruning=0.25),
    "cache": dict(cache="prefix"),
    "cache+prune0.25": dict(cache="prefix", pruning=0.25),
    "cache+thr0.9": dict(cache="prefix", threshold=0.9),
    "cache+thr0.9+prune0.25": dict(cache="prefix", threshold=0.9, pruning=0.25),
}

CPU_MODEL = dict(hidden=256, layers=4, heads=8, kv_heads=8, intermediate=688, vocab=300, dtype="float32")
GPU_MODEL = dict(hidden=4096, layers=32, heads=32, kv_heads=32, intermediate=12288, vocab=126464, dtype="bfloat16")
QUICK_MODEL = dict(hidden=64, layers=2, heads=4, kv_heads=4, intermediate=128, vocab=64, dtype="float32")
SEQUENCE = dict(prompt=3590, vis_start=50, vis_len=3500)
QUICK_SEQUENCE = dict(prompt=300, vis_start=10, vis_len=260)
SHAPES = [dict(gen=32, block=32, steps=16), dict(gen=128, block=32, steps=64)]
QUICK_SHAPES = [dict(gen=16, block=8, steps=8)]
HEAD_SCALE = 6.0


def build(model: dict, sequence: dict, device: torch.device, *, head_scale: float = HEAD_SCALE, seed: int = 0):
    """(LLaDA LM with random weights, prompt embeddings ``[1, prompt, hidden]``) on ``device``."""
    from .. import models

    config = LlamaConfig(
        vocab_size=model["vocab"], hidden_size=model["hidden"], intermediate_size=model["intermediate"],
        num_hidden_layers=model["layers"], num_attention_heads=model["heads"],
        num_key_value_heads=model["kv_heads"], max_position_embeddings=8192,
        rope_parameters={"rope_type": "default", "rope_theta": 500000.0}, tie_word_embeddings=False,
        initializer_range=0.1 if model["hidden"] <= 1024 else 0.02, mask_token_id=model["vocab"] - 1,
    )
    dtype = getattr(torch, model["dtype"])
    with torch.device(device):  # built where it runs (an 8B model in float32 on the host would be 32 GB)
        lm = models.llada_lm(config, seed=seed, dtype=dtype)
    with torch.no_grad():
        lm.lm_head.weight.mul_(head_scale)
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, model["vocab"] - 1, (1, sequence["prompt"]), generator=g)
    with torch.no_grad():
        prompt = lm.get_input_embeddings()(ids.to(device)).float().cpu()
    s, n = sequence["vis_start"], sequence["vis_len"]
    prompt[:, s : s + n] = torch.randn(1, n, model["hidden"], generator=g) * prompt.std()
    return lm, prompt.to(device=device, dtype=dtype)


def forward_flops(model: dict, tokens: int, keys: int, logit_rows: int) -> float:
    """Matmul FLOPs of one forward of ``tokens`` tokens attending to ``keys`` keys."""
    h, H, Hkv, inter = model["hidden"], model["heads"], model["kv_heads"], model["intermediate"]
    d = h // H
    proj = 2 * tokens * h * (2 * H * d + 2 * Hkv * d)
    attn = 2 * 2 * tokens * keys * H * d
    mlp = 2 * tokens * h * inter * 3
    return model["layers"] * (proj + attn + mlp) + 2 * logit_rows * h * model["vocab"]


def generation_flops(model: dict, out, block_length: int) -> float:
    """FLOPs of a finished run from its `GenerationOutput` (tokens and cached keys per step)."""
    return sum(
        forward_flops(model, t, t + c, block_length) for t, c in zip(out.tokens_per_step, out.cache_len_per_step)
    )


def _case(device, model: dict, sequence: dict, shape: dict, repeats: int | None, label: str) -> Case:
    import dvtp

    def setup():
        lm, prompt = build(model, sequence, device)
        span = (sequence["vis_start"], sequence["vis_len"])

        def runner(mode):
            kw = dict(MODES[mode])
            keep = kw.pop("pruning", None)
            pruning = None if keep is None else dvtp.PruningConfig(keep_ratio=keep)
            return lambda: dvtp.generate(
                lm, inputs_embeds=prompt, visual_span=span, gen_length=shape["gen"], steps=shape["steps"],
                block_length=shape["block"], pruning=pruning, **kw,
            )

        return {mode: runner(mode) for mode in MODES}

    n = sequence["prompt"] + shape["gen"]
    baseline_flops = shape["steps"] * forward_flops(model, n, n, shape["block"])

    def metrics(mode, out):
        flops = generation_flops(model, out, shape["block"])
        return dict(
            forwards=out.num_forwards, full_forwards=out.full_forwards,
            tokens_per_forward=shape["gen"] / out.num_forwards, kept=out.kept_counts[0],
            seq_len_after=out.seq_len_after[0], flops=flops, ideal_flop_speedup=baseline_flops / flops,
        )

    return Case(
        op="generate",
        name=f"{label} N={n} gen={shape['gen']} block={shape['block']} steps={shape['steps']}",
        shape=dict(N=n, visual=sequence["vis_len"], **shape, model={k: v for k, v in model.items()}),
        baseline="baseline", setup=setup, metrics=metrics, repeats=repeats,
    )


def cases(device: torch.device, quick: bool) -> list[Case]:
    """The generate cases for ``device`` (``quick``: one tiny case that runs in seconds)."""
    if quick:
        return [_case(device, QUICK_MODEL, QUICK_SEQUENCE, QUICK_SHAPES[0], 2, "tiny LM")]
    if device.type == "cuda":
        return [_case(device, GPU_MODEL, SEQUENCE, s, 5, "LLaDA-8B-shaped") for s in SHAPES]
    return [_case(device, CPU_MODEL, SEQUENCE, s, 3, "LLaDA-V-shaped") for s in SHAPES]


def speedup_targets(records) -> dict[str, bool]:
    """The issue's targets on the gen-128 case (and "faster than either alone" on every case)."""
    by_case: dict[str, dict[str, float]] = {}
    for r in records:
        by_case.setdefault(r.case, {})[r.backend] = r.median_ms
    targets = {}
    for case, t in by_case.items():
        if not all(m in t for m in MODES):
            continue
        tag = case.split(" N=")[1]
        targets[f"{tag}: cache+prune0.25 faster than cache and prune0.25 alone"] = (
            t["cache+prune0.25"] < min(t["cache"], t["prune0.25"])
        )
        fastest = min(t, key=t.get)
        targets[f"{tag}: cache+thr0.9+prune0.25 fastest of all"] = fastest == "cache+thr0.9+prune0.25"
        if "gen=128" in case:
            targets[f"{tag}: cache+prune0.25 >= 1.5x cache"] = t["cache"] / t["cache+prune0.25"] >= 1.5
            targets[f"{tag}: cache+thr0.9+prune0.25 >= 15x baseline"] = t["baseline"] / t["cache+thr0.9+prune0.25"] >= 15
    return targets

