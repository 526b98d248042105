"""pytest-benchmark tests of select_visual_tokens at LLaDA-V step-1 size.

Each implementation of `dvtp.bench.ops.step1_case("select", ...)` (N=3800 with 3500 visual
tokens, R=128 rows, keep 25 %): "topk_sort_index" (masked mean, torch.topk, sort, torch.cat
of the index) and the usable dvtp backends. The whole grid with medians, IQR, peak memory
and speedups, recorded under benchmarks/results/: `dvtp bench select`
(`dvtp.bench.run("select")`).

    python -m pytest benchmarks/bench_select_tokens.py --benchmark-enable
"""
from __future__ import annotations

import pytest
import torch

from dvtp.bench import harness, ops

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
CASE = ops.step1_case("select", DEVICE)


@pytest.fixture(scope="module")
def impls():
    return CASE.setup()


@pytest.mark.parametrize("impl", ops.implementations("select", DEVICE)[0])
def test_select_tokens(benchmark, impls, impl):
    fn = impls[impl]

    def call():
        out = fn()
        harness.synchronize(DEVICE)
        return out

    gather_index = benchmark(call)[0]
    N, V = CASE.shape["N"], CASE.shape["V"]
    assert gather_index.shape == (1, N - V + int(V * ops.KEEP_RATIO))


def cpu_time_grid(threads: int = 1, rounds: int = 9) -> dict[str, tuple[float, float]]:
    """{case: (baseline ms, cpu backend ms)}: median CPU time per call of the calling thread
    (`time.thread_time`) over the `dvtp bench --op select` grid, with ``threads`` torch
    threads (1: the whole call runs on the measured thread). On a shared machine whose other
    processes keep the cores busy, wall-clock medians measure the scheduler (parallel
    regions wait whole time slices); the calling thread's CPU time does not."""
    import time

    torch.set_num_threads(threads)
    cpu = torch.device("cpu")

    def per_call_ms(fn):
        fn()
        reps = 1
        while True:  # calls per round: >= 20 ms of CPU time
            start = time.thread_time()
            for _ in range(reps):
                fn()
            if time.thread_time() - start > 0.02:
                break
            reps *= 2
        times = []
        for _ in range(rounds):
            start = time.thread_time()
            for _ in range(reps):
                fn()
            times.append((time.thread_time() - start) / reps * 1e3)
        return sorted(times)[rounds // 2]

    out = {}
    for case in ops.select_cases(cpu, quick=False):
        impls = case.setup()
        out[case.name] = (per_call_ms(impls["topk_sort_index"]), per_call_ms(impls["cpu"]))
    return out


if __name__ == "__main__":
    # python benchmarks/bench_select_tokens.py: the select grid in CPU time (see cpu_time_grid)
    for name, (base, ours) in cpu_time_grid().items():
        print(f"| {name} | {base:.3f} | {ours:.3f} | {base / ours:.2f}x |")
