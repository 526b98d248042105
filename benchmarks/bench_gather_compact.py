"""Compaction of one denoising step's tensors: dvtp backends vs per-tensor index_select.

The tensors: embeddings [B, N, hidden], token ids, a bool mask, position ids, and K/V
rows of `--kv-layers` layers [B, H, N, d] (what a prefix cache would hold). Reports
medians and the effective bandwidth (bytes read + written per second).

Script:  python benchmarks/bench_gather_compact.py [--device cuda] [--out results.json]
pytest:  pytest benchmarks/bench_gather_compact.py --benchmark-enable
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

N, V, KEY_START, KEEP_RATIO = 3800, 3500, 100, 0.25


def make_inputs(device, hidden, heads, head_dim, kv_layers, dtype):
    g = torch.Generator().manual_seed(0)
    tensors = [
        torch.randn(1, N, hidden, generator=g).to(dtype),
        torch.randint(0, 126464, (1, N), generator=g),
        torch.rand(1, N, generator=g) > 0.5,
        torch.arange(N).unsqueeze(0),
    ]
    dims = [1, 1, 1, 1]
    for _ in range(2 * kv_layers):
        tensors.append(torch.randn(1, heads, N, head_dim, generator=g).to(dtype))
        dims.append(2)
    tensors = [t.to(device) for t in tensors]
    scores = torch.rand(1, 1, V, generator=g).to(device)
    gather_index, new_len, _, _ = dvtp_kernels.select_visual_tokens(
        scores, torch.ones(1, 1, dtype=torch.bool, device=device), N, KEY_START, V, keep_ratio=KEEP_RATIO)
    return tensors, dims, gather_index, new_len


def per_tensor_index_select(tensors, dims, gather_index, new_len):
    index = gather_index[0, : int(new_len[0])]
    return [t.index_select(d, index) for t, d in zip(tensors, dims)]


def dvtp_op(backend):
    def run(tensors, dims, gather_index, new_len):
        return dvtp_kernels.gather_compact(tensors, gather_index, new_len, dims=dims, backend=backend)

    return run


def methods(device):
    found = {"index_select": per_tensor_index_select}
    for backend in dispatch.BACKENDS:
        if not dispatch.not_supported_reasons(backend, "gather_compact", device):
            found[backend] = dvtp_op(backend)
    if device.type == "cpu":
        found.pop("triton", None)
    return found


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out")
    args = parser.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if not cuda:
        torch.set_num_threads(args.threads)
    # GPU: LLaDA-8B sizes in bf16, 4 layers of K/V; CPU: the scaled end-to-end model.
    shape = dict(hidden=4096, heads=32, head_dim=128, kv_layers=4, dtype=torch.bfloat16) if cuda else \
        dict(hidden=256, heads=8, head_dim=32, kv_layers=4, dtype=torch.float32)
    tensors, dims, gather_index, new_len = make_inputs(device, **shape)
    moved = sum(t.numel() * t.element_size() for t in tensors) * int(new_len[0]) / N * 2  # read + write
    run = {}
    for name, fn in methods(device).items():
        ms = common.median_ms(lambda: fn(tensors, dims, gather_index, new_len), device, reps=args.reps)
        run[name] = {"median_ms": round(ms, 4), "effective_GBps": round(moved / ms / 1e6, 2)}
    base = run.get("cuda") or run.get("cpu") or run.get("triton") or run["reference"]
    for r in run.values():
        r["ours_speedup_vs_this"] = round(r["median_ms"] / base["median_ms"], 2)
    record = {"benchmark": "gather_compact", **common.environment(device),
              "shape": {"N": N, "new_len": int(new_len[0]), "tensors": len(tensors), "bytes_moved": int(moved),
                        **{k: str(v) for k, v in shape.items()}},
              "runs": {"step_tensors": run}}
    common.write_json(args.out, record)


DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.parametrize("method", list(methods(DEVICE)))
def test_gather_compact(benchmark, method):
    tensors, dims, gather_index, new_len = make_inputs(DEVICE, 256, 8, 32, 4, torch.float32)
    fn = methods(DEVICE)[method]

    def call():
        fn(tensors, dims, gather_index, new_len)
        common.synchronize(DEVICE)

    benchmark(call)


if __name__ == "__main__":
    main()
