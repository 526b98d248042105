"""The dvtp attention hook: install/remove, plain SDPA outside scoring, exact scores inside,
never an N x N tensor."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import dvtp
import dvtp_kernels
from dvtp import models
from dvtp.attention import ATTENTION_NAME
from benchmarks.common import cpu_tensor_peak
from eager_reference import forward64, weights_of

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def llada():
    return models.llada_lm(models.tiny_llada_config(), seed=1)


@pytest.fixture(scope="module")
def dream():
    return models.dream_lm(models.tiny_dream_config(), seed=1)


def _embeds(model, batch, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, n, model.config.hidden_size, generator=g)


class Recorder(TorchDispatchMode):
    """Records every ATen call (name, output shapes, attn_mask shape of attention kernels)."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        outs = out if isinstance(out, (tuple, list)) else [out]
        mask = kwargs.get("attn_mask")
        self.calls.append((
            str(func),
            [tuple(t.shape) for t in outs if isinstance(t, torch.Tensor)],
            None if mask is None else tuple(mask.shape),
        ))
        return out


def test_no_registration_at_import():
    code = (
        "import dvtp\n"
        "from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS\n"
        "from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS\n"
        f"assert {ATTENTION_NAME!r} not in ALL_ATTENTION_FUNCTIONS\n"
        f"assert {ATTENTION_NAME!r} not in ALL_MASK_ATTENTION_FUNCTIONS\n"
    )
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=ROOT)


def test_patched_installs_and_always_restores(llada):
    before = llada.config._attn_implementation
    assert before != ATTENTION_NAME
    with dvtp.patched(llada) as hook:
        assert llada.config._attn_implementation == ATTENTION_NAME
        assert hook.num_layers == llada.config.num_hidden_layers
        assert all(m._dvtp_hook is hook for m in dvtp.attention.attention_modules(llada))
        with dvtp.patched(llada) as inner:  # nested: same hook, restored by the outermost exit
            assert inner is hook
        assert llada.config._attn_implementation == ATTENTION_NAME
    assert llada.config._attn_implementation == before
    assert not any(hasattr(m, "_dvtp_hook") for m in llada.modules())

    with pytest.raises(RuntimeError, match="boom"):
        with dvtp.patched(llada):
            raise RuntimeError("boom")
    assert llada.config._attn_implementation == before
    assert not any(hasattr(m, "_dvtp_hook") for m in llada.modules())

    hook = dvtp.patched(llada)  # handle-style use
    hook.remove()
    assert llada.config._attn_implementation == before
    with pytest.raises(RuntimeError, match="not installed"):
        with hook.scoring(torch.zeros(1, 1, 1), 0, 0, 1):
            pass


def test_plain_sdpa_outside_scoring(llada, monkeypatch):
    """Outside a scoring pass: no score op call, one SDPA call per layer, no mask, and the
    scoring forward's output is bit-identical to the plain one."""
    calls = []
    real = dvtp_kernels.accumulate_visual_scores
    monkeypatch.setattr(dvtp_kernels, "accumulate_visual_scores", lambda *a, **k: calls.append(1) or real(*a, **k))
    x = _embeds(llada, 1, 50)
    with torch.no_grad(), dvtp.patched(llada) as hook:
        rec = Recorder()
        with rec:
            plain = llada(inputs_embeds=x).logits
        assert calls == []
        attn = [c for c in rec.calls if "scaled_dot_product" in c[0]]
        assert len(attn) == llada.config.num_hidden_layers
        assert all(mask is None for _, _, mask in attn)
        scores = torch.zeros(1, 8, 30)
        with hook.scoring(scores, 42, 10, 30) as state:
            scored = llada(inputs_embeds=x).logits
        assert len(calls) == llada.config.num_hidden_layers
        assert state.scored_layers == list(range(llada.config.num_hidden_layers))
        assert all(state.lse_from_kernel)  # CPU flash kernel's log-sum-exp was used
        assert hook.active_scoring is None
        after = llada(inputs_embeds=x).logits
    assert len(calls) == llada.config.num_hidden_layers
    assert torch.equal(plain, scored) and torch.equal(plain, after)


def _reference_scores(model, x, q0, k0, kl, R, layers=None, key_valid=None):
    """sum over heads and layers of the float64 materialised attention probabilities."""
    _, probs = forward64(weights_of(model), x, key_valid=key_valid, want_probs=True)
    layers = range(len(probs)) if layers is None else layers
    out = torch.zeros(x.shape[0], R, max(kl))
    for b in range(x.shape[0]):
        tot = sum(probs[l][b, :, q0[b] : q0[b] + R, k0[b] : k0[b] + kl[b]].sum(0) for l in layers)
        out[b, :, : kl[b]] = tot.float()
    return out


@pytest.mark.parametrize("which", ["llada", "dream"])
@pytest.mark.parametrize("layers", [None, [1]])
def test_scores_match_materialised_attention(which, layers, llada, dream):
    model = llada if which == "llada" else dream  # dream: GQA 4/2 heads + QKV bias
    x = _embeds(model, 2, 61, seed=3)
    R, q0, k0, kl = 9, [52, 52], [5, 11], [40, 23]
    scores = torch.full((2, R, 40), 0.0)
    with torch.no_grad(), dvtp.patched(model) as hook:
        with hook.scoring(scores, q0, k0, kl, layers=layers) as state:
            model(inputs_embeds=x)
    assert state.scored_layers == ([0, 1] if layers is None else layers)
    ref = _reference_scores(model, x, q0, k0, kl, R, layers)
    torch.testing.assert_close(scores, ref, rtol=1e-4, atol=1e-6)
    assert torch.all(scores[1, :, 23:] == 0)  # beyond key_len: untouched


def test_scores_with_key_padding(llada):
    """A [B, N] attention_mask reaches SDPA as [B, 1, 1, N] and the op as key_valid."""
    x = _embeds(llada, 2, 48, seed=4)
    mask = torch.ones(2, 48, dtype=torch.bool)
    mask[0, 40:] = False
    R, q0, k0, kl = 6, [34, 40], [3, 3], [20, 20]
    scores = torch.zeros(2, R, 20)
    rec = Recorder()
    with torch.no_grad(), dvtp.patched(llada) as hook:
        with hook.scoring(scores, q0, k0, kl), rec:
            llada(inputs_embeds=x, attention_mask=mask)
    masks = {m for name, _, m in rec.calls if "scaled_dot_product" in name}
    assert masks == {(2, 1, 1, 48)}
    ref = _reference_scores(llada, x, q0, k0, kl, R, key_valid=mask)
    torch.testing.assert_close(scores, ref, rtol=1e-4, atol=1e-6)


def test_float64_model_scores(llada):
    """Kernels take 16/32-bit floats: a float64 model's q/k are cast, lse computed by the op."""
    model = models.llada_lm(models.tiny_llada_config(), seed=1, dtype=torch.float64)
    x = _embeds(model, 1, 40, seed=5).double()
    scores = torch.zeros(1, 5, 20)
    with torch.no_grad(), dvtp.patched(model) as hook:
        with hook.scoring(scores, 35, 2, 20) as state:
            model(inputs_embeds=x)
    assert state.lse_from_kernel == [False, False]
    ref = _reference_scores(model, x, [35], [2], [20], 5)
    torch.testing.assert_close(scores, ref, rtol=1e-4, atol=1e-6)


def test_no_n_by_n_allocation_in_scoring_pass(llada):
    """No tensor of N x N elements (nor [.., N, N]) is created by the scoring forward: checked
    on every ATen call (dispatch mode) and every CPU allocation (profiler memory timeline),
    with the eager attention as a positive control."""
    N, R, V = 512, 8, 400
    x = _embeds(llada, 1, N, seed=6)
    scores = torch.zeros(1, R, V)
    with torch.no_grad(), dvtp.patched(llada) as hook:
        def scoring():
            with hook.scoring(scores, N - R, 50, V):
                llada(inputs_embeds=x, logits_to_keep=R)

        def plain():
            llada(inputs_embeds=x, logits_to_keep=R)

        rec = Recorder()
        with rec:
            scoring()
        shapes = [s for _, outs, _ in rec.calls for s in outs]
        assert not [s for s in shapes if torch.Size(s).numel() >= N * N], "N x N-sized tensor created"
        assert not [s for s in shapes if list(s).count(N) >= 2]
        plain()  # warm-up
        peak_plain, _ = cpu_tensor_peak(plain)
        peak_scoring, largest = cpu_tensor_peak(scoring)
    assert largest < N * N * 4
    assert peak_scoring <= peak_plain * 1.10 + scores.numel() * 4
    # positive control: the eager path does materialise [B, H, N, N]
    previous = llada.config._attn_implementation
    llada.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            _, largest_eager = cpu_tensor_peak(lambda: llada(inputs_embeds=x, output_attentions=True))
    finally:
        llada.set_attn_implementation(previous)
    assert largest_eager >= N * N * 4


def test_sliding_window_rejected():
    with pytest.raises(ValueError, match="sliding"):
        dvtp.attention.dvtp_sdpa_attention(
            torch.nn.Module(), torch.zeros(1, 1, 2, 4), torch.zeros(1, 1, 2, 4), torch.zeros(1, 1, 2, 4),
            None, sliding_window=16,
        )


def test_scoring_rejects_full_masks(llada):
    x = _embeds(llada, 1, 10)
    full = torch.ones(1, 1, 10, 10, dtype=torch.bool)
    with torch.no_grad(), dvtp.patched(llada) as hook:
        with pytest.raises(ValueError, match="key-padding mask"):
            with hook.scoring(torch.zeros(1, 2, 3), 8, 0, 3):
                llada(inputs_embeds=x, attention_mask=full)


def test_mask_factory_never_inspects_the_mask():
    """A given mask is used as is (a host read of it would be a device sync per forward);
    no mask -> None, the fast unmasked SDPA path."""
    from dvtp.attention import padding_mask

    assert padding_mask(2, 5, 5, attention_mask=None) is None
    full = torch.ones(2, 5, dtype=torch.bool)
    assert torch.equal(padding_mask(2, 5, 5, attention_mask=full), full[:, None, None, :])
    padded = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    assert torch.equal(padding_mask(2, 5, 5, attention_mask=padded), padded.bool()[:, None, None, :])
