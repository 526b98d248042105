"""pytest-benchmark tests of accumulate_visual_scores at LLaDA-V step-1 size.

Each implementation of `dvtp.bench.ops.step1_case("scores", ...)` (N=3800 with 3500
visual tokens, R=128 response rows; CPU: 8 heads float32, CUDA: 32 heads bfloat16): "eager"
(softmax(q k^T) [B, H, N, N] materialised, then sliced), "rows_only" (logits of the R rows
only), and the usable dvtp backends. The whole grid with medians, IQR, peak memory and
speedups, recorded under benchmarks/results/: `dvtp bench scores` (`dvtp.bench.run("scores")`).

    python -m pytest benchmarks/bench_accumulate_scores.py --benchmark-enable
"""
from __future__ import annotations

import pytest
import torch

from dvtp.bench import harness, ops

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
CASE = ops.step1_case("scores", DEVICE)


@pytest.fixture(scope="module")
def impls():
    return CASE.setup()


@pytest.mark.parametrize("impl", ops.implementations("scores", DEVICE)[0])
def test_accumulate_scores(benchmark, impls, impl):
    fn = impls[impl]

    def call():
        out = fn()
        harness.synchronize(DEVICE)
        return out

    scores = benchmark(call)
    assert scores.shape == (1, CASE.shape["R"], CASE.shape["V"]) and bool(torch.isfinite(scores).all())
