"""End-to-end benchmark of LLaDA-V's image path: image + question -> answer, with pruning.

Setup (the defaults): `dvtp.vlm.scaled_llada_v` (the bare-LM benchmark's language model:
hidden 256, 4 layers, 8 heads, intermediate 688, float32, behind a 2-layer 64-wide SigLIP
with LLaDA-V's real view geometry), one synthetic photo-like 1024x768 image (3627 visual
tokens, as the real model gets) and a question; gen_length 32, block_length 32, steps 16,
temperature 0, ``stop=False`` (every setting runs all 16 steps, so the ratios compare
equal work); torch.set_num_threads(2).

Reports, for unpruned and each keep ratio: the median latency of `model.answer` (and its
spread), split into preprocessing, vision and generation; the speedup over unpruned; the
same request's language-model part alone (`dvtp.generate` on the prompt `prepare` built,
timed in the same run, same tokens checked) and its speedup; the sequence length per step;
and, when benchmarks/results/generate_cpu_2threads.json exists, the bare-LM speedups
measured by bench_generate.py. Pruning acts on the language model only, so the image path
keeps its ratios up to the fixed image work (processing, vision tower) it does not reduce.

    python benchmarks/bench_answer.py [--repeats 5] [--out benchmarks/results/answer_cpu_2threads.json]
    python -m pytest benchmarks/bench_answer.py --benchmark-enable     # tiny sizes
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

try:
    import dvtp
except ImportError:  # running from a source checkout
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import dvtp

import torch

from dvtp.bench import harness
from dvtp.vlm import prepare, scaled_llada_v, tiny_llada_v
from dvtp.vlm.images import synthetic_photo

HERE = os.path.dirname(os.path.abspath(__file__))
BARE_LM_RESULTS = os.path.join(HERE, "results", "generate_cpu_2threads.json")


def run_answer(model, image, args, keep):
    pruning = None if keep is None else dvtp.PruningConfig(keep_ratio=keep, backend=args.backend)
    return model.answer(
        image, args.question, pruning=pruning, gen_length=args.gen, steps=args.steps,
        block_length=args.block, stop=False,
    )


def run_language_model(model, batch, args, keep):
    """The bare language-model part of the same request: dvtp.generate on the spliced
    prompt embeddings and spans `prepare` built (no image processing, no vision tower)."""
    pruning = None if keep is None else dvtp.PruningConfig(keep_ratio=keep, backend=args.backend)
    return dvtp.generate(
        model, inputs_embeds=batch.prompts, visual_span=batch.visual_spans, gen_length=args.gen,
        steps=args.steps, block_length=args.block, mask_id=model.processor.mask_id,
        suppress_tokens=model.processor.suppressed_ids, pruning=pruning,
    )


def bench(model, image, args) -> dict:
    run_answer(model, image, args, args.keep[-1])  # warm-up: kernels, allocator, thread pool
    batch = prepare(model, image, args.question)
    keeps = [None] + list(args.keep)
    walls = {k: [] for k in keeps}
    lm_walls = {k: [] for k in keeps}
    parts = {k: [] for k in keeps}
    outs = {}
    for _ in range(args.repeats):  # interleaved, so load drift hits every setting alike
        for k in keeps:
            t0 = time.perf_counter()
            outs[k] = run_answer(model, image, args, k)
            walls[k].append(time.perf_counter() - t0)
            parts[k].append(outs[k].timings)
            t0 = time.perf_counter()
            lm = run_language_model(model, batch, args, k)
            lm_walls[k].append(time.perf_counter() - t0)
            assert torch.equal(lm.sequences, outs[k].sequences)  # the same work
    base = statistics.median(walls[None])
    lm_base = statistics.median(lm_walls[None])
    results = {}
    for k in keeps:
        out = outs[k]
        q1, median, q3 = harness.quartiles(walls[k])
        entry = {
            "keep_ratio": k,
            "latency_s": median,
            "latency_iqr_s": [q1, q3],
            "latency_all_s": walls[k],
            "preprocess_s": statistics.median(t["preprocess"] for t in parts[k]),
            "vision_s": statistics.median(t["vision"] for t in parts[k]),
            "generate_s": statistics.median(t["generate"] for t in parts[k]),
            "forwards": out.generation.num_forwards,
            "tokens_per_step": sorted(set(out.tokens_per_step), reverse=True),
            "visual_tokens": out.visual_tokens[0],
            "kept": out.kept_counts[0],
            "answer": out.texts[0],
            "same_tokens_as_unpruned": bool(torch.equal(out.sequences, outs[None].sequences)),
        }
        entry["language_model_only_s"] = statistics.median(lm_walls[k])
        if k is not None:
            entry.update(
                speedup=base / entry["latency_s"],
                language_model_only_speedup=lm_base / entry["language_model_only_s"],
                generate_speedup=statistics.median(t["generate"] for t in parts[None]) / entry["generate_s"],
                scoring_step_s=out.generation.scoring_time,
                prune_s=out.generation.prune_time,
                backends=out.generation.backends,
            )
        results["unpruned" if k is None else f"keep_{k}"] = entry
    return results


def bare_lm_reference() -> dict | None:
    """Speedups of the bare-LM benchmark (bench_generate.py), if its results file exists."""
    try:
        with open(BARE_LM_RESULTS) as f:
            gen = json.load(f)["generation"]
    except (OSError, KeyError, ValueError):
        return None
    return {name: e["speedup"] for name, e in gen.items() if "speedup" in e}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=["scaled", "tiny"], default="scaled")
    p.add_argument("--height", type=int, default=768)
    p.add_argument("--width", type=int, default=1024)
    p.add_argument("--question", default="What is in the picture? Describe the objects and their colours.")
    p.add_argument("--gen", type=int, default=32)
    p.add_argument("--block", type=int, default=32)
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--keep", type=float, nargs="+", default=[0.5, 0.25])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5, help="runs per setting (median reported)")
    p.add_argument("--backend", default=None, help="dvtp_kernels backend (default: best usable)")
    p.add_argument("--out", default=None, help="write the results as JSON to this path")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    model = (scaled_llada_v if args.model == "scaled" else tiny_llada_v)(seed=0)
    image = synthetic_photo(args.width, args.height)
    t0 = time.perf_counter()
    gen = bench(model, image, args)
    bare = bare_lm_reference()
    comparison = None
    if bare:
        comparison = {
            name: {"image_path": gen[name]["speedup"], "bare_lm": bare[name],
                   "relative_difference": gen[name]["speedup"] / bare[name] - 1.0}
            for name in gen if name in bare
        }
    result = {
        "benchmark": "LLaDA-V image path end to end (benchmarks/bench_answer.py)",
        "config": {k: v for k, v in vars(args).items() if k != "out"},
        "model": {"text": {k: getattr(model.config.text_config, k) for k in
                           ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size")},
                  "vision": {k: getattr(model.config.vision_config, k) for k in
                             ("hidden_size", "num_hidden_layers", "image_size", "patch_size")}},
        "environment": {
            **harness.environment(torch.device("cpu")), "device_name": harness.device_name(torch.device("cpu")),
            "loadavg_1m_at_end": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        },
        "results": gen,
        "bare_lm_comparison": comparison,
        "wall_s": time.perf_counter() - t0,
    }
    report(result)
    harness.save_json(args.out, result)
    return result


def report(r: dict) -> None:
    res = r["results"]
    env = r["environment"]
    print(f"LLaDA-V image path  (torch {env['torch']}, {env['threads']} threads, model {r['config']['model']})")
    print(f"  {'setting':<10} {'latency':>9} {'IQR':>15} {'speedup':>8} {'vision':>7} {'generate':>9} {'seq len':>11}  kept")
    for name, e in res.items():
        iqr = f"{e['latency_iqr_s'][0]:.2f}-{e['latency_iqr_s'][1]:.2f}s"
        speed = "1.00x" if e["keep_ratio"] is None else f"{e['speedup']:.2f}x"
        lens = "->".join(str(x) for x in e["tokens_per_step"])
        kept = f"{e['kept']}/{e['visual_tokens']}" if e["kept"] is not None else f"{e['visual_tokens']} visual"
        print(f"  {name:<10} {e['latency_s']:>8.2f}s {iqr:>15} {speed:>8} {e['vision_s']:>6.2f}s {e['generate_s']:>8.2f}s {lens:>11}  {kept}")
    for name, e in res.items():
        if e["keep_ratio"] is not None:
            print(f"  {name}: image path {e['speedup']:.2f}x vs its language model alone (same prompt, same run) "
                  f"{e['language_model_only_speedup']:.2f}x ({100 * (e['speedup'] / e['language_model_only_speedup'] - 1):+.1f}%)")
    if r["bare_lm_comparison"]:
        for name, c in r["bare_lm_comparison"].items():
            print(f"  {name}: image path {c['image_path']:.2f}x vs bare LM {c['bare_lm']:.2f}x "
                  f"({100 * c['relative_difference']:+.1f}%)")


# ---------------------------------------------------------------------------------------
# pytest-benchmark (tiny sizes; `python -m pytest benchmarks/bench_answer.py --benchmark-enable`)
# ---------------------------------------------------------------------------------------

try:
    import pytest
except ImportError:  # pragma: no cover
    pytest = None

if pytest is not None:

    @pytest.fixture(scope="module")
    def tiny():
        args = parse_args(["--model", "tiny", "--height", "200", "--width", "300", "--gen", "8",
                           "--block", "8", "--steps", "4"])
        return args, tiny_llada_v(seed=0), synthetic_photo(300, 200)

    @pytest.mark.parametrize("keep", [None, 0.5, 0.25], ids=["unpruned", "keep0.5", "keep0.25"])
    def test_answer(benchmark, tiny, keep):
        args, model, image = tiny
        out = benchmark(run_answer, model, image, args, keep)
        assert out.generation.num_forwards == args.steps
        if keep is not None:
            assert out.kept_counts[0] == max(1, int(out.visual_tokens[0] * keep))


if __name__ == "__main__":
    main()
