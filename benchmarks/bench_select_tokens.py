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
