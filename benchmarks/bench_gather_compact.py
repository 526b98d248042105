"""pytest-benchmark tests of gather_compact on one denoising step's tensors at LLaDA-V
step-1 size.

Each implementation of `dvtp.bench.ops.step1_case("compact", ...)` (N=3800 with 3500 visual
tokens kept to 25 %; embeddings, token ids, a mask, positions and 4 layers of K/V -- CPU: the
scaled model's sizes in float32, CUDA: LLaDA-8B's in bfloat16): "index_select" (one call
per tensor) and the usable dvtp backends. The whole grid with medians, IQR, peak memory,
effective bandwidth and speedups, recorded under benchmarks/results/: `dvtp bench compact`
(`dvtp.bench.run("compact")`).

    python -m pytest benchmarks/bench_gather_compact.py --benchmark-enable
"""
from __future__ import annotations

import pytest
import torch

from dvtp.bench import harness, ops

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
CASE = ops.step1_case("compact", DEVICE)


@pytest.fixture(scope="module")
def impls():
    return CASE.setup()


@pytest.mark.parametrize("impl", ops.implementations("compact", DEVICE)[0])
def test_gather_compact(benchmark, impls, impl):
    fn = impls[impl]

    def call():
        out = fn()
        harness.synchronize(DEVICE)
        return out

    out = benchmark(call)
    N, V = CASE.shape["N"], CASE.shape["V"]
    assert len(out) == 4 + 2 * CASE.shape["layers"]
    assert all(t.shape[1 if t.dim() < 4 else 2] == N - V + int(V * ops.KEEP_RATIO) for t in out)
