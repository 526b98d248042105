"""dvtp.models: bidirectional LLaDA-style (Llama) and Dream-style (Qwen2) LMs."""
from __future__ import annotations

import pytest
import torch
from transformers import LlamaForCausalLM, Qwen2ForCausalLM

import dvtp
from dvtp import models
from eager_reference import forward64, weights_of

BUILDERS = {
    "llada": lambda **kw: models.llada_lm(models.tiny_llada_config(**kw), seed=0),
    "dream": lambda **kw: models.dream_lm(models.tiny_dream_config(**kw), seed=0),
}


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def model(request):
    return BUILDERS[request.param]()


def _embeds(model, batch=2, n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, model.config.vocab_size - 1, (batch, n), generator=g)
    with torch.no_grad():
        return model.get_input_embeddings()(ids)


def _logits(model, embeds, impl, **kw):
    with torch.no_grad():
        if impl == "dvtp_sdpa":
            with dvtp.patched(model):
                return model(inputs_embeds=embeds, **kw).logits
        previous = model.config._attn_implementation
        model.set_attn_implementation(impl)
        try:
            return model(inputs_embeds=embeds, **kw).logits
        finally:
            model.set_attn_implementation(previous)


def test_builders_and_presets():
    llada = BUILDERS["llada"]()
    dream = BUILDERS["dream"]()
    assert isinstance(llada, LlamaForCausalLM) and isinstance(llada, models.LLaDALM)
    assert isinstance(dream, Qwen2ForCausalLM) and isinstance(dream, models.DreamLM)
    for m in (llada, dream):
        assert m.config.is_causal is False
        attn = dvtp.attention.attention_modules(m)
        assert len(attn) == m.config.num_hidden_layers
        assert all(a.is_causal is False for a in attn)
        assert not m.training
        assert m.config.mask_token_id == m.config.vocab_size - 1
    assert dream.config.num_key_value_heads < dream.config.num_attention_heads  # GQA preset
    assert dream.model.layers[0].self_attn.q_proj.bias is not None  # Qwen2 QKV bias
    # same seed -> same weights; global RNG untouched
    state = torch.random.get_rng_state()
    again = BUILDERS["llada"]()
    assert torch.equal(torch.random.get_rng_state(), state)
    for (k, a), (_, b) in zip(llada.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), k
    # full-size descriptions (not built)
    big = models.llada_8b_config()
    assert (big.hidden_size, big.num_hidden_layers, big.vocab_size, big.mask_token_id) == (4096, 32, 126464, 126336)
    dcfg = models.dream_7b_config()
    assert (dcfg.hidden_size, dcfg.num_key_value_heads, dcfg.vocab_size, dcfg.mask_token_id) == (3584, 4, 152064, 151666)
    with pytest.raises(ValueError, match="sliding"):
        models.dream_lm(models.tiny_dream_config(use_sliding_window=True, sliding_window=8, max_window_layers=0))


@pytest.mark.parametrize("impl", ["dvtp_sdpa", "sdpa", "eager"])
def test_every_position_attends_to_every_other(model, impl):
    """Changing the LAST token changes the logits at the FIRST positions (no causal mask)."""
    embeds = _embeds(model, batch=1)
    changed = embeds.clone()
    changed[:, -1] = _embeds(model, batch=1, seed=7)[:, -1]
    a = _logits(model, embeds, impl)
    b = _logits(model, changed, impl)
    assert (a[:, :2] - b[:, :2]).abs().max() > 1e-3


def test_stock_causal_llama_is_different():
    """Sanity of the test above: the same weights in a stock (causal) Llama do not see the future."""
    llada = BUILDERS["llada"]()
    causal = LlamaForCausalLM(models.tiny_llada_config()).eval()
    causal.load_state_dict(llada.state_dict())
    embeds = _embeds(llada, batch=1)
    changed = embeds.clone()
    changed[:, -1] += 1.0
    with torch.no_grad():
        a, b = causal(inputs_embeds=embeds).logits, causal(inputs_embeds=changed).logits
    assert torch.equal(a[:, :-1], b[:, :-1])


@pytest.mark.parametrize("impl", ["dvtp_sdpa", "sdpa", "eager"])
def test_logits_equal_independent_float64_forward(model, impl):
    embeds = _embeds(model, batch=2, n=45)
    got = _logits(model, embeds, impl).double()
    ref, _ = forward64(weights_of(model), embeds)
    assert got.shape == ref.shape
    torch.testing.assert_close(got, ref, rtol=0, atol=5e-5)


def test_padding_gives_the_unpadded_result(model):
    """A [B, N] attention_mask (key padding) under dvtp_sdpa = running the item alone."""
    embeds = _embeds(model, batch=2, n=30)
    mask = torch.ones(2, 30, dtype=torch.bool)
    mask[1, 22:] = False
    with torch.no_grad(), dvtp.patched(model):
        padded = model(inputs_embeds=embeds, attention_mask=mask).logits
        alone = model(inputs_embeds=embeds[1:, :22]).logits
        full = model(inputs_embeds=embeds[:1]).logits
    torch.testing.assert_close(padded[1, :22], alone[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(padded[0], full[0], rtol=0, atol=1e-5)
    ref, _ = forward64(weights_of(model), embeds, key_valid=mask)
    torch.testing.assert_close(padded[1, :22].double(), ref[1, :22], rtol=0, atol=5e-5)


def test_dream_logits_are_shifted_one_position():
    dream = BUILDERS["dream"]()
    plain = Qwen2ForCausalLM(models.tiny_dream_config()).eval()
    plain.load_state_dict(dream.state_dict())
    models.make_bidirectional(plain)
    embeds = _embeds(dream, batch=2, n=20)
    with torch.no_grad(), dvtp.patched(dream), dvtp.patched(plain):
        shifted = dream(inputs_embeds=embeds).logits
        raw = plain(inputs_embeds=embeds).logits
        last5 = dream(inputs_embeds=embeds, logits_to_keep=5).logits
        picked = dream(inputs_embeds=embeds, logits_to_keep=torch.tensor([[0, 3, 19], [1, 2, 4]])).logits
        everything = dream(inputs_embeds=embeds, logits_to_keep=20).logits
    torch.testing.assert_close(shifted[:, 1:], raw[:, :-1], rtol=0, atol=1e-6)
    torch.testing.assert_close(shifted[:, 0], raw[:, 0], rtol=0, atol=1e-6)
    torch.testing.assert_close(last5, shifted[:, -5:], rtol=0, atol=1e-6)
    torch.testing.assert_close(everything, shifted, rtol=0, atol=1e-6)
    torch.testing.assert_close(picked[0], shifted[0, [0, 3, 19]], rtol=0, atol=1e-6)
    torch.testing.assert_close(picked[1], shifted[1, [1, 2, 4]], rtol=0, atol=1e-6)
