"""Top-r selection at LLaDA-V step-1 size: dvtp backends vs torch.topk + sort + index building.

Script:  python benchmarks/bench_select_tokens.py [--device cuda] [--out results.json]
pytest:  pytest benchmarks/bench_select_tokens.py --benchmark-enable
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

N, V, KEY_START, R, KEEP_RATIO = 3800, 3500, 100, 128, 0.25


def make_inputs(device, batch):
    g = torch.Generator().manual_seed(0)
    scores = torch.rand(batch, R, V, generator=g).to(device)
    row_mask = (torch.rand(batch, R, generator=g) > 0.2).to(device)
    return scores, row_mask


def torch_topk(scores, row_mask):
    """What a user writes with stock PyTorch: mean over masked rows, topk, sort, build the index."""
    imp = (scores * row_mask.unsqueeze(-1)).sum(1) / row_mask.sum(1, keepdim=True).clamp(min=1)
    keep = max(1, int(V * KEEP_RATIO))
    kept = torch.topk(imp, keep, dim=-1).indices.sort(dim=-1).values
    batch = scores.shape[0]
    prefix = torch.arange(KEY_START, device=scores.device).expand(batch, -1)
    suffix = torch.arange(KEY_START + V, N, device=scores.device).expand(batch, -1)
    return torch.cat([prefix, KEY_START + kept, suffix], dim=1), kept


def dvtp_op(backend):
    def run(scores, row_mask):
        return dvtp_kernels.select_visual_tokens(scores, row_mask, N, KEY_START, V, keep_ratio=KEEP_RATIO,
                                                 backend=backend)

    return run


def methods(device):
    found = {"torch_topk": torch_topk}
    for backend in dispatch.BACKENDS:
        if not dispatch.not_supported_reasons(backend, "select_visual_tokens", device):
            found[backend] = dvtp_op(backend)
    if device.type == "cpu":
        found.pop("triton", None)
    return found


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    record = {"benchmark": "select_visual_tokens", **common.environment(device),
              "shape": {"N": N, "Vmax": V, "R": R, "keep_ratio": KEEP_RATIO}, "runs": {}}
    for batch in args.batch:
        scores, row_mask = make_inputs(device, batch)
        run = {}
        for name, fn in methods(device).items():
            run[name] = {"median_ms": round(common.median_ms(lambda: fn(scores, row_mask), device, reps=args.reps), 4)}
        base = run.get("cuda") or run.get("cpu") or run.get("triton") or run["reference"]
        for r in run.values():
            r["ours_speedup_vs_this"] = round(r["median_ms"] / base["median_ms"], 2)
        record["runs"][f"B={batch}"] = run
    common.write_json(args.out, record)


DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.parametrize("method", list(methods(DEVICE)))
def test_select_tokens(benchmark, method):
    scores, row_mask = make_inputs(DEVICE, 1)
    fn = methods(DEVICE)[method]

    def call():
        fn(scores, row_mask)
        common.synchronize(DEVICE)

    benchmark(call)


if __name__ == "__main__":
    main()
