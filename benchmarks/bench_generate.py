"""End-to-end benchmark of dvtp.generate with RedVTP pruning (issue 4).

Setup (the defaults): a LLaDA-style LM (hidden 256, 4 layers, 8 heads / 8 kv heads,
intermediate 688, vocab 300, float32), torch.set_num_threads(2); a prompt of 3590
embeddings whose visual span is positions 50..3550 (3500 tokens); gen_length 32,
block_length 32, steps 16, temperature 0.

Reports
  * generation latency unpruned vs keep 0.5 vs keep 0.25 (and the speedups),
  * the ideal speedup from the FLOP count of the shorter sequence, and measured / ideal,
  * the scoring forward vs a plain forward: time and peak CPU tensor memory (and, for
    comparison, the published eager approach: output_attentions on the eager attention).

Targets: keep 0.25 >= 3.2x faster than unpruned and >= 85 % of the ideal FLOP speedup;
scoring forward <= 10 % more time and peak memory than a plain forward.

Run as a script::

    python benchmarks/bench_generate.py [--repeats 3] [--out benchmarks/results/generate.json]

or as pytest-benchmark tests on tiny sizes::

    python -m pytest benchmarks/bench_generate.py --benchmark-enable
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import time

try:
    import dvtp
except ImportError:  # running from a source checkout: python benchmarks/bench_generate.py
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import dvtp

import torch
from transformers import LlamaConfig

from dvtp import models

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

# ---------------------------------------------------------------------------------------
# setup
# ---------------------------------------------------------------------------------------


def build(args):
    config = LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        max_position_embeddings=max(8192, args.prompt + args.gen),
        rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
        tie_word_embeddings=False,
        initializer_range=0.1,
        mask_token_id=args.vocab - 1,
    )
    model = models.llada_lm(config, seed=0)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, args.vocab - 1, (args.batch, args.prompt), generator=g)
    with torch.no_grad():
        prompt = model.get_input_embeddings()(ids)
    s, n = args.vis_start, args.vis_len
    visual = torch.randn(args.batch, n, args.hidden, generator=g) * prompt.std()
    prompt = torch.cat([prompt[:, :s], visual, prompt[:, s + n :]], dim=1).contiguous()
    return model, prompt


def forward_flops(n: int, args, logits_rows: int) -> float:
    """Matmul FLOPs of one forward over n tokens (projections, attention, MLP, LM head rows)."""
    h, H, Hkv, I = args.hidden, args.heads, args.kv_heads, args.intermediate
    d = h // H
    proj = 2 * n * h * (2 * H * d + 2 * Hkv * d)  # q, o and k, v
    attn = 2 * 2 * n * n * H * d  # q k^T and p v
    mlp = 2 * n * h * I * 3
    return args.layers * (proj + attn + mlp) + 2 * logits_rows * h * args.vocab


def ideal_speedup(args, keep_ratio: float, prune_step: int = 1) -> float:
    n0 = args.prompt + args.gen
    kept = max(1, math.floor(args.vis_len * keep_ratio))
    n1 = n0 - args.vis_len + kept
    full = args.steps * forward_flops(n0, args, args.gen)
    pruned = prune_step * forward_flops(n0, args, args.gen) + (args.steps - prune_step) * forward_flops(n1, args, args.gen)
    return full / pruned


def timed(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


# ---------------------------------------------------------------------------------------
# measurements
# ---------------------------------------------------------------------------------------


def run_generate(model, prompt, args, keep_ratio):
    pruning = None if keep_ratio is None else dvtp.PruningConfig(keep_ratio=keep_ratio, backend=args.backend)
    return dvtp.generate(
        model, inputs_embeds=prompt, visual_span=(args.vis_start, args.vis_len),
        gen_length=args.gen, steps=args.steps, block_length=args.block, temperature=0.0,
        pruning=pruning,
    )


def bench_generation(model, prompt, args) -> dict:
    results = {}
    run_generate(model, prompt, args, 0.25)  # warm-up (kernels, allocator, thread pool)
    keeps = [None] + list(args.keep)
    walls = {k: [] for k in keeps}
    outs = {}
    for _ in range(args.repeats):  # interleaved, so machine-load drift hits all settings alike
        for k in keeps:
            t0 = time.perf_counter()
            outs[k] = run_generate(model, prompt, args, k)
            walls[k].append(time.perf_counter() - t0)
    base = statistics.median(walls[None])
    for k in keeps:
        out = outs[k]
        name = "unpruned" if k is None else f"keep_{k}"
        med = statistics.median(walls[k])
        entry = {
            "keep_ratio": k,
            "latency_s": med,
            "latency_all_s": walls[k],
            "forwards": out.num_forwards,
            "tokens_per_step": sorted(set(out.tokens_per_step), reverse=True),
            "seq_len_after": out.seq_len_after,
            "step_time_first_s": out.step_times[0],
            "step_time_rest_mean_s": statistics.mean(out.step_times[1:]) if len(out.step_times) > 1 else None,
            "same_tokens_as_unpruned": bool(torch.equal(out.sequences, outs[None].sequences)),
        }
        if k is not None:
            ideal = ideal_speedup(args, k)
            entry.update(
                speedup=base / med,
                ideal_flop_speedup=ideal,
                measured_over_ideal=(base / med) / ideal,
                scoring_step_s=out.scoring_time,
                prune_s=out.prune_time,
                kept=out.kept_counts,
                backends=out.backends,
                lse_from_attention=out.lse_from_attention,
            )
        results[name] = entry
    return results


def bench_scoring_forward(model, prompt, args) -> dict:
    """Plain forward vs scoring forward (dvtp hook) vs the published eager scoring forward."""
    B, G = prompt.shape[0], args.gen
    mask_embed = model.get_input_embeddings()(torch.full((B, G), args.vocab - 1))
    x = torch.cat([prompt, mask_embed], dim=1).detach()
    n = x.shape[1]
    res = {"seq_len": n}
    with torch.no_grad(), dvtp.patched(model) as hook:

        def plain():
            model(inputs_embeds=x, logits_to_keep=G)

        def scoring():
            scores = torch.zeros(B, G, args.vis_len)
            with hook.scoring(scores, args.prompt, args.vis_start, args.vis_len, backend=args.backend):
                model(inputs_embeds=x, logits_to_keep=G)

        plain()
        scoring()
        t_plain, t_score = [], []
        for _ in range(args.forward_repeats):  # interleaved
            t_plain += timed(plain, 1)
            t_score += timed(scoring, 1)
        mem_plain, big_plain = common.cpu_tensor_peak(plain)
        mem_score, big_score = common.cpu_tensor_peak(scoring)
    res["plain"] = {"time_s": min(t_plain), "times_s": t_plain, "peak_bytes": mem_plain, "largest_alloc_bytes": big_plain}
    res["scoring"] = {"time_s": min(t_score), "times_s": t_score, "peak_bytes": mem_score, "largest_alloc_bytes": big_score}
    res["scoring_time_overhead"] = min(t_score) / min(t_plain) - 1.0
    res["scoring_memory_overhead"] = mem_score / mem_plain - 1.0
    if args.eager:
        previous = model.config._attn_implementation
        model.set_attn_implementation("eager")
        try:
            with torch.no_grad():
                def eager():
                    model(inputs_embeds=x, logits_to_keep=G, output_attentions=True)

                t_eager = timed(eager, 1)
                mem_eager, big_eager = common.cpu_tensor_peak(eager)
        finally:
            model.set_attn_implementation(previous)
        res["eager_output_attentions"] = {
            "time_s": min(t_eager), "peak_bytes": mem_eager, "largest_alloc_bytes": big_eager,
        }
    return res


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=8)
    p.add_argument("--intermediate", type=int, default=688)
    p.add_argument("--vocab", type=int, default=300)
    p.add_argument("--prompt", type=int, default=3590, help="prompt length (embeddings)")
    p.add_argument("--vis-start", type=int, default=50)
    p.add_argument("--vis-len", type=int, default=3500)
    p.add_argument("--gen", type=int, default=32)
    p.add_argument("--block", type=int, default=32)
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--keep", type=float, nargs="+", default=[0.5, 0.25])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3, help="generation runs per setting (median reported)")
    p.add_argument("--forward-repeats", type=int, default=5, help="plain/scoring forwards (min reported)")
    p.add_argument("--backend", default=None, help="dvtp_kernels backend (default: best usable)")
    p.add_argument("--no-eager", dest="eager", action="store_false", help="skip the eager output_attentions baseline")
    p.add_argument("--out", default=None, help="write the results as JSON to this path (e.g. benchmarks/results/generate.json)")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    model, prompt = build(args)
    t0 = time.perf_counter()
    gen = bench_generation(model, prompt, args)
    fwd = bench_scoring_forward(model, prompt, args)
    k25 = gen.get("keep_0.25")
    targets = {}
    if k25 is not None:
        targets["keep_0.25_speedup>=3.2"] = k25["speedup"] >= 3.2
        targets["keep_0.25_measured/ideal>=0.85"] = k25["measured_over_ideal"] >= 0.85
    targets["scoring_time_overhead<=10%"] = fwd["scoring_time_overhead"] <= 0.10
    targets["scoring_memory_overhead<=10%"] = fwd["scoring_memory_overhead"] <= 0.10
    result = {
        "benchmark": "dvtp.generate end to end (benchmarks/bench_generate.py)",
        "config": {k: v for k, v in vars(args).items() if k != "out"},
        "environment": {
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
            "machine": platform.machine(),
            "python": platform.python_version(),
            "loadavg_1m_at_end": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        },
        "generation": gen,
        "forward": fwd,
        "targets": targets,
        "wall_s": time.perf_counter() - t0,
    }
    report(result)
    common.save_json(args.out, result)
    return result


def report(r: dict) -> None:
    gen, fwd = r["generation"], r["forward"]
    print(f"dvtp.generate benchmark  (torch {r['environment']['torch']}, {r['environment']['threads']} threads)")
    base = gen["unpruned"]["latency_s"]
    print(f"  {'setting':<10} {'latency':>9} {'speedup':>8} {'ideal':>7} {'meas/ideal':>10} {'seq len':>13} {'same tokens':>11}")
    for name, e in gen.items():
        lens = "->".join(str(x) for x in e["tokens_per_step"])
        if e["keep_ratio"] is None:
            print(f"  {name:<10} {base:>8.2f}s {'1.00x':>8} {'':>7} {'':>10} {lens:>13} {'':>11}")
        else:
            print(
                f"  {name:<10} {e['latency_s']:>8.2f}s {e['speedup']:>7.2f}x {e['ideal_flop_speedup']:>6.2f}x "
                f"{100 * e['measured_over_ideal']:>9.1f}% {lens:>13} {str(e['same_tokens_as_unpruned']):>11}"
            )
    p, s = fwd["plain"], fwd["scoring"]
    mb = 1 / 2**20
    print(f"  forward at N={fwd['seq_len']}: plain {p['time_s']:.3f}s / {p['peak_bytes'] * mb:.1f} MiB peak;"
          f" scoring {s['time_s']:.3f}s / {s['peak_bytes'] * mb:.1f} MiB peak"
          f" (+{100 * fwd['scoring_time_overhead']:.1f}% time, +{100 * fwd['scoring_memory_overhead']:.1f}% memory)")
    if "eager_output_attentions" in fwd:
        e = fwd["eager_output_attentions"]
        print(f"  published eager scoring forward: {e['time_s']:.3f}s / {e['peak_bytes'] * mb:.1f} MiB peak"
              f" (largest allocation {e['largest_alloc_bytes'] * mb:.1f} MiB)")
    k = next((e for e in gen.values() if e.get("backends")), None)
    if k:
        print(f"  kernel backends: {k['backends']}; lse from attention kernel: {k['lse_from_attention']}")
    for name, ok in r["targets"].items():
        print(f"  target {name}: {'PASS' if ok else 'FAIL'}")


# ---------------------------------------------------------------------------------------
# pytest-benchmark (tiny sizes; `python -m pytest benchmarks/bench_generate.py --benchmark-enable`)
# ---------------------------------------------------------------------------------------

TINY = ["--hidden", "64", "--layers", "2", "--heads", "4", "--kv-heads", "4", "--intermediate", "128",
        "--vocab", "64", "--prompt", "300", "--vis-start", "10", "--vis-len", "260", "--gen", "8",
        "--block", "8", "--steps", "4"]


def _tiny():
    args = parse_args(TINY)
    model, prompt = build(args)
    return args, model, prompt


try:
    import pytest
except ImportError:  # pragma: no cover
    pytest = None

if pytest is not None:

    @pytest.fixture(scope="module")
    def tiny():
        return _tiny()

    @pytest.mark.parametrize("keep", [None, 0.5, 0.25], ids=["unpruned", "keep0.5", "keep0.25"])
    def test_generate(benchmark, tiny, keep):
        args, model, prompt = tiny
        out = benchmark(run_generate, model, prompt, args, keep)
        assert out.num_forwards == args.steps

    @pytest.mark.parametrize("scoring", [False, True], ids=["plain", "scoring"])
    def test_forward(benchmark, tiny, scoring):
        args, model, prompt = tiny
        x = torch.cat([prompt, model.get_input_embeddings()(torch.full((1, args.gen), args.vocab - 1))], 1).detach()
        with torch.no_grad(), dvtp.patched(model) as hook:
            def fwd():
                if scoring:
                    scores = torch.zeros(1, args.gen, args.vis_len)
                    with hook.scoring(scores, args.prompt, args.vis_start, args.vis_len):
                        return model(inputs_embeds=x, logits_to_keep=args.gen).logits
                return model(inputs_embeds=x, logits_to_keep=args.gen).logits

            logits = benchmark(fwd)
        assert logits.shape == (1, args.gen, args.vocab)

    def test_ideal_speedup_formula():
        args = parse_args([])
        assert ideal_speedup(args, 1.0) == pytest.approx(1.0)
        assert ideal_speedup(args, 0.25) > ideal_speedup(args, 0.5) > 1.0


if __name__ == "__main__":
    main()
