"""Score accumulation at LLaDA-V step-1 size: dvtp backends vs the two PyTorch approaches.

  eager      what the published code does: materialise softmax(q k^T) [B, H, N, N], slice
  rows_only  what a careful user writes: logits of the R rows [B, H, R, N], logsumexp, exp, slice
  reference / cpu / triton / cuda   dvtp_kernels.accumulate_visual_scores(backend=...)

Script:  python benchmarks/bench_accumulate_scores.py [--device cuda] [--out results.json]
pytest:  pytest benchmarks/bench_accumulate_scores.py --benchmark-enable
"""
from __future__ import annotations

import argparse
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

import dvtp_kernels  # noqa: E402
from dvtp_kernels import dispatch  # noqa: E402

# B=1, N~3800 with ~3500 visual tokens, R response rows, head_dim 128 (LLaDA-8B).
N, V, KEY_START, D = 3800, 3500, 100, 128
CPU_SHAPE = dict(heads=8, dtype=torch.float32)
GPU_SHAPE = dict(heads=32, dtype=torch.bfloat16)


def make_inputs(device, heads, dtype, rows):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, N, heads, D, generator=g).to(dtype).to(device).transpose(1, 2)
    k = torch.randn(1, N, heads, D, generator=g).to(dtype).to(device).transpose(1, 2)
    scores = torch.zeros(1, rows, V, device=device)
    return q, k, scores, N - rows


def eager(q, k, scores, query_start):
    probs = torch.softmax((q @ k.transpose(-1, -2)) * D ** -0.5, dim=-1)  # [B, H, N, N]
    scores += probs[:, :, query_start : query_start + scores.shape[1], KEY_START : KEY_START + V].sum(1).float()


def rows_only(q, k, scores, query_start):
    logits = (q[:, :, query_start : query_start + scores.shape[1]] @ k.transpose(-1, -2)) * D ** -0.5
    logits = logits.float()  # [B, H, R, N]
    probs = torch.exp(logits[..., KEY_START : KEY_START + V] - torch.logsumexp(logits, dim=-1, keepdim=True))
    scores += probs.sum(1)


def dvtp_op(backend):
    def run(q, k, scores, query_start):
        dvtp_kernels.accumulate_visual_scores(q, k, scores, query_start, KEY_START, V, backend=backend)

    return run


def methods(device):
    found = {"eager": eager, "rows_only": rows_only}
    for backend in dispatch.BACKENDS:
        if not dispatch.not_supported_reasons(backend, "accumulate_visual_scores", device):
            found[backend] = dvtp_op(backend)
    if device.type == "cpu":
        found.pop("triton", None)  # the interpreter is a correctness tool, not a speed one
    return found


def measure(device, rows, heads, dtype, reps):
    q, k, scores, query_start = make_inputs(device, heads, dtype, rows)
    results = {}
    for name, fn in methods(device).items():
        call = lambda: fn(q, k, scores, query_start)  # noqa: E731
        ms = common.median_ms(call, device, reps=reps if name != "eager" else max(3, reps // 3))
        results[name] = {"median_ms": round(ms, 4), "peak_extra_mib": common.peak_extra_mib(call, device)}
    base = results.get("cuda") or results.get("cpu") or results.get("triton") or results["reference"]
    for r in results.values():
        r["ours_speedup_vs_this"] = round(r["median_ms"] / base["median_ms"], 2)
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rows", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cpu":
        common.pin_malloc_threshold()
        torch.set_num_threads(args.threads)
    shape = GPU_SHAPE if device.type == "cuda" else CPU_SHAPE
    record = {"benchmark": "accumulate_visual_scores", **common.environment(device),
              "shape": {"B": 1, "N": N, "Vmax": V, "D": D, "heads": shape["heads"], "dtype": str(shape["dtype"])},
              "runs": {}}
    for rows in args.rows:
        record["runs"][f"R={rows}"] = measure(device, rows, shape["heads"], shape["dtype"], args.reps)
    common.write_json(args.out, record)


DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.parametrize("method", list(methods(DEVICE)))
def test_accumulate_scores(benchmark, method):
    shape = GPU_SHAPE if DEVICE.type == "cuda" else CPU_SHAPE
    q, k, scores, query_start = make_inputs(DEVICE, shape["heads"], shape["dtype"], 128)
    fn = methods(DEVICE)[method]

    def call():
        fn(q, k, scores, query_start)
        common.synchronize(DEVICE)

    benchmark(call)


if __name__ == "__main__":
    main()
