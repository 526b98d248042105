"""End-to-end benchmark of dvtp.generate: pruning, Fast-dLLM caching and parallel decoding,
side by side in one run, plus the scoring forward against a plain forward.

Cases and modes: `dvtp.bench.generate` (a LLaDA-V-shaped LM on CPU -- hidden 256, 4 layers,
a 3590-token prompt with 3500 visual tokens -- LLaDA-8B-shaped in bf16 on CUDA; gen 32 /
block 32 / 16 steps and gen 128 / block 32 / 64 steps; modes baseline, prune0.25, cache,
cache+prune0.25, cache+thr0.9, cache+thr0.9+prune0.25). Timed by `dvtp.bench.harness`
(medians of ``--repeats`` runs after a warm-up); each mode reports forwards, tokens per
forward, the FLOP-ideal speedup and the measured one, and the targets of the issue that
introduced caching are checked.

The scoring forward (dvtp's hook) is compared with a plain forward and with the published
approach (eager attention with ``output_attentions=True``): time and peak CPU tensor memory.

    python benchmarks/bench_generate.py [--repeats 3] [--shapes 32 128] [--out benchmarks/results/generate_cpu_2threads.json]
    python -m pytest benchmarks/bench_generate.py --benchmark-enable     # tiny sizes
"""
from __future__ import annotations

import argparse
import os
import sys
import time

try:
    import dvtp
except ImportError:  # running from a source checkout: python benchmarks/bench_generate.py
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import dvtp

import torch

from dvtp.bench import generate as cases_module
from dvtp.bench import harness


def bench_modes(device: torch.device, args) -> list[harness.Record]:
    records = []
    for case in cases_module.cases(device, args.quick):
        if not args.quick and case.shape["gen"] not in args.shapes:
            continue
        case.repeats = args.repeats
        print(f"measuring {case.name} ...", flush=True)
        records += harness.run_case(case, device)
    return records


def bench_scoring_forward(device: torch.device, args) -> dict:
    """Plain forward vs scoring forward (dvtp hook) vs the published eager scoring forward."""
    model_shape = cases_module.QUICK_MODEL if args.quick else cases_module.CPU_MODEL
    seq = cases_module.QUICK_SEQUENCE if args.quick else cases_module.SEQUENCE
    model, prompt = cases_module.build(model_shape, seq, device)
    G = 32
    mask = model.get_input_embeddings()(torch.full((1, G), model_shape["vocab"] - 1, device=device))
    x = torch.cat([prompt, mask], dim=1).detach()
    res = {"seq_len": x.shape[1]}
    with torch.no_grad(), dvtp.patched(model) as hook:

        def plain():
            model(inputs_embeds=x, logits_to_keep=G)

        def scoring():
            scores = torch.zeros(1, G, seq["vis_len"], device=device)
            with hook.scoring(scores, seq["prompt"], seq["vis_start"], seq["vis_len"]):
                model(inputs_embeds=x, logits_to_keep=G)

        timings = {name: harness.measure(fn, device, repeats=args.forward_repeats) for name, fn in
                   (("plain", plain), ("scoring", scoring))}
        for name, fn in (("plain", plain), ("scoring", scoring)):
            peak, largest = harness.cpu_tensor_peak(fn) if device.type == "cpu" else (None, None)
            res[name] = {"time_ms": timings[name].median_ms, "peak_bytes": peak, "largest_alloc_bytes": largest}
    res["scoring_time_overhead"] = res["scoring"]["time_ms"] / res["plain"]["time_ms"] - 1.0
    if device.type == "cpu":
        res["scoring_memory_overhead"] = res["scoring"]["peak_bytes"] / res["plain"]["peak_bytes"] - 1.0
    if args.eager and device.type == "cpu":
        previous = model.config._attn_implementation
        model.set_attn_implementation("eager")
        try:
            with torch.no_grad():
                def eager():
                    model(inputs_embeds=x, logits_to_keep=G, output_attentions=True)

                t = harness.measure(eager, device, repeats=min(3, args.forward_repeats), memory=False)
                peak, largest = harness.cpu_tensor_peak(eager)
        finally:
            model.set_attn_implementation(previous)
        res["eager_output_attentions"] = {"time_ms": t.median_ms, "peak_bytes": peak, "largest_alloc_bytes": largest}
    return res


def summary(records: list[harness.Record], fwd: dict | None, args, device) -> dict:
    by_case: dict[str, dict] = {}
    for r in records:
        e = by_case.setdefault(r.case, {})
        e[r.backend] = {
            "latency_s": r.median_ms / 1e3, "iqr_s": r.iqr_ms / 1e3, "speedup": r.ratio,
            "ideal_flop_speedup": r.extra["ideal_flop_speedup"],
            "measured_over_ideal": r.ratio / r.extra["ideal_flop_speedup"] if r.ratio else None,
            **{k: r.extra[k] for k in ("forwards", "full_forwards", "tokens_per_forward", "kept", "seq_len_after")},
        }
    # The gen-32 case under the names bench_answer.py compares the image path with.
    gen32 = next((v for k, v in by_case.items() if "gen=32 " in k), {})
    legacy = {"keep_0.25": {"speedup": gen32["prune0.25"]["speedup"]}} if "prune0.25" in gen32 else {}
    return {
        "benchmark": "dvtp.generate end to end (benchmarks/bench_generate.py)",
        "device": harness.device_name(device),
        "environment": records[0].env if records else harness.environment(device),
        "cases": by_case,
        "generation": legacy,
        "forward": fwd,
        "targets": cases_module.speedup_targets(records),
        "config": {"repeats": args.repeats, "shapes": args.shapes, "threads": torch.get_num_threads(),
                   "head_scale": cases_module.HEAD_SCALE},
    }


def report(result: dict) -> None:
    print(f"\ndvtp.generate on {result['device']} ({result['config']['threads']} threads, "
          f"median of {result['config']['repeats']} runs)")
    for case, modes in result["cases"].items():
        print(f"\n  {case}")
        print(f"  {'mode':<24} {'latency':>9} {'speedup':>8} {'FLOP-ideal':>10} {'forwards':>8} {'full':>5} {'tok/fwd':>7}")
        for mode, e in modes.items():
            print(f"  {mode:<24} {e['latency_s']:>8.2f}s {e['speedup']:>7.2f}x {e['ideal_flop_speedup']:>9.2f}x "
                  f"{e['forwards']:>8} {e['full_forwards']:>5} {e['tokens_per_forward']:>7.2f}")
    fwd = result["forward"]
    if fwd:
        mb = 1 / 2**20
        p, s = fwd["plain"], fwd["scoring"]
        line = f"\n  forward at N={fwd['seq_len']}: plain {p['time_ms']:.0f} ms, scoring {s['time_ms']:.0f} ms " \
               f"(+{100 * fwd['scoring_time_overhead']:.1f}% time"
        if p["peak_bytes"]:
            line += f"; peak {p['peak_bytes'] * mb:.1f} vs {s['peak_bytes'] * mb:.1f} MiB, " \
                    f"+{100 * fwd['scoring_memory_overhead']:.1f}% memory"
        print(line + ")")
        if "eager_output_attentions" in fwd:
            e = fwd["eager_output_attentions"]
            print(f"  published eager scoring forward: {e['time_ms']:.0f} ms, peak {e['peak_bytes'] * mb:.1f} MiB")
    for name, ok in result["targets"].items():
        print(f"  target {name}: {'PASS' if ok else 'MISS'}")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3, help="timed runs per mode (median reported)")
    p.add_argument("--shapes", type=int, nargs="+", default=[32, 128], choices=[32, 128], help="gen lengths to run")
    p.add_argument("--forward-repeats", type=int, default=5)
    p.add_argument("--no-eager", dest="eager", action="store_false", help="skip the eager output_attentions forward")
    p.add_argument("--no-forward", dest="forward", action="store_false", help="skip the scoring-forward comparison")
    p.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    p.add_argument("--records", default=None, help="append the records (JSON Lines) here, e.g. benchmarks/results/cpu.jsonl")
    p.add_argument("--out", default=None, help="write the summary JSON here")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = harness.resolve_device(args.device)
    t0 = time.perf_counter()
    records = bench_modes(device, args)
    fwd = bench_scoring_forward(device, args) if args.forward else None
    result = summary(records, fwd, args, device)
    result["wall_s"] = time.perf_counter() - t0
    report(result)
    if args.records:
        harness.append_records(records, args.records)
    harness.save_json(args.out, result)
    return result


# ---------------------------------------------------------------------------------------
# pytest-benchmark (tiny sizes; `python -m pytest benchmarks/bench_generate.py --benchmark-enable`)
# ---------------------------------------------------------------------------------------

try:
    import pytest
except ImportError:  # pragma: no cover
    pytest = None

if pytest is not None:

    @pytest.fixture(scope="module")
    def tiny():
        (case,) = cases_module.cases(torch.device("cpu"), quick=True)
        return case, case.setup()

    @pytest.mark.parametrize("mode", list(cases_module.MODES))
    def test_generate(benchmark, tiny, mode):
        case, runners = tiny
        out = benchmark(runners[mode])
        assert out.sequences.shape == (1, case.shape["gen"])
        assert ("thr" in mode) or out.num_forwards == case.shape["steps"]
        assert (out.full_forwards < out.num_forwards) == ("cache" in mode)

    def test_flop_model():
        m = cases_module.CPU_MODEL
        n = 3622
        assert cases_module.forward_flops(m, n, n, 32) > cases_module.forward_flops(m, 32, n + 32, 32) * 10


if __name__ == "__main__":
    main()
