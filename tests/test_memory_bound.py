"""The memory bound at N = 16k (tiny model, CPU): the scoring pass, and a whole pruned
generation, need no more tensor memory than the plain forward / unpruned generation plus
O(B*H*R + output) — nothing N x N — where the published approach (attention maps of every
layer, [B, H, N, N]) would need gigabytes. Peaks come from the profiler's memory timeline
(live tensor bytes), so malloc caching does not blur them."""
from __future__ import annotations

import pytest
import torch

import dvtp
from benchmarks.common import cpu_tensor_peak
from dvtp import models

N, R, HIDDEN, HEADS, LAYERS = 16384, 32, 64, 4, 2
MIB = 2**20


@pytest.fixture(scope="module")
def setup():
    model = models.llada_lm(models.tiny_llada_config(max_position_embeddings=N + 64), seed=0)
    x = torch.randn(1, N, HIDDEN, generator=torch.Generator().manual_seed(0)) * 0.1
    return model, x


def _eager_bytes(n: int) -> int:
    """What materialising the attention maps of every layer costs: [B, H, n, n] fp32 per layer."""
    return LAYERS * HEADS * n * n * 4


def test_scoring_pass_at_16k(setup):
    model, x = setup
    V = N - 200  # almost all of the sequence is visual
    scores = torch.zeros(1, R, V)
    with torch.no_grad(), dvtp.patched(model) as hook:

        def plain():
            model(inputs_embeds=x, logits_to_keep=R)

        def scoring():
            with hook.scoring(scores, N - R, 100, V):
                model(inputs_embeds=x, logits_to_keep=R)

        peak_plain, _ = cpu_tensor_peak(plain)
        peak_scoring, largest = cpu_tensor_peak(scoring)
    # O(B*H*R) row statistics plus the output buffer (and per-thread row tiles of the C++
    # kernel: a block of rows x N logits each); never anything N x N
    allowance = HEADS * R * 4 + scores.numel() * 4 + torch.get_num_threads() * R * N * 4
    assert peak_scoring <= peak_plain + allowance, (peak_scoring / MIB, peak_plain / MIB)
    assert largest < N * N * 4 / 64
    assert peak_scoring < _eager_bytes(N) / 100  # measured: ~54 MiB vs 8 GiB of attention maps


def test_pruned_generation_at_16k(setup):
    """A whole generation with the scoring step and one pruned step, against an unpruned one."""
    model, x = setup
    kw = dict(inputs_embeds=x, gen_length=R, steps=2, mask_id=model.config.mask_token_id)
    span = (100, N - 200)

    def unpruned():
        dvtp.generate(model, **kw)

    def pruned():
        out = dvtp.generate(model, visual_span=span, pruning=dvtp.PruningConfig(keep_ratio=0.25), **kw)
        assert out.tokens_per_step == [N + R, N + R - (N - 200) + (N - 200) // 4]

    peak_unpruned, _ = cpu_tensor_peak(unpruned)
    peak_pruned, largest = cpu_tensor_peak(pruned)
    allowance = HEADS * R * 4 + R * (N - 200) * 4 + torch.get_num_threads() * R * (N + R) * 4
    assert peak_pruned <= peak_unpruned + allowance, (peak_pruned / MIB, peak_unpruned / MIB)
    assert largest < N * N * 4 / 64
    assert peak_pruned < _eager_bytes(N + R) / 100
