"""A model that produces NaN/inf logits is reported as such, once, in the sampler's words:
not as a kernel's complaint about NaN importance (pruning) or an empty answer (no pruning)."""
from __future__ import annotations

import pytest
import torch

import dvtp
from dvtp import models
from dvtp.config import PruningConfig
from dvtp.sampler import NonFiniteLogitsError

MASK = 127
MESSAGE = r"the model produced NaN/inf logits \(check the weights and dtype\): first at denoising step 0 " \
          r"\(block 0, step 0 of the block\)"


def _broken(kind: str):
    model = models.llada_lm(models.tiny_llada_config(), seed=0)
    with torch.no_grad():
        if kind == "nan-weight":  # one NaN in a layer: every hidden state downstream is NaN
            model.model.layers[0].self_attn.q_proj.weight[0, 0] = float("nan")
        else:  # an inf row of the head: that vocabulary entry's logit is inf/NaN everywhere
            model.lm_head.weight[5] = float("inf")
    return model


def _forward_counter(model):
    calls = []
    model.register_forward_pre_hook(lambda *_: calls.append(1))
    return calls


def _prompts(model):
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        return [model.get_input_embeddings()(torch.randint(0, MASK, (n,), generator=g)) for n in (24, 20)]


@pytest.mark.parametrize("cache", [None, "dual"])
@pytest.mark.parametrize("pruned", [False, True], ids=["unpruned", "pruned"])
@pytest.mark.parametrize("kind", ["nan-weight", "inf-head"])
def test_non_finite_logits_are_reported(kind, pruned, cache):
    model = _broken(kind)
    calls = _forward_counter(model)
    kw = dict(gen_length=8, steps=8, block_length=4, mask_id=MASK, cache=cache, visual_span=[(2, 10), (1, 8)])
    if pruned:
        kw["pruning"] = PruningConfig(keep_ratio=0.5, prune_step=2)
    with pytest.raises(NonFiniteLogitsError, match=MESSAGE):
        dvtp.generate(model, _prompts(model), **kw)
    # pruned: raised at the pruning step, before its selection (2 forwards); else at the end
    assert len(calls) == (2 if pruned else 8)


@pytest.mark.parametrize("rule", [dict(threshold=0.9), dict(factor=1.0)])
def test_parallel_decoding_reports_at_its_next_check(rule):
    """With threshold/factor the loop syncs every step anyway: the error comes one step later."""
    model = _broken("nan-weight")
    calls = _forward_counter(model)
    with pytest.raises(NonFiniteLogitsError, match=MESSAGE):
        dvtp.generate(model, _prompts(model), gen_length=8, steps=8, block_length=4, mask_id=MASK, **rule)
    assert len(calls) == 1


def test_later_non_finite_step_is_located():
    """Logits that turn non-finite at a later step are reported at that step and block."""
    model = models.llada_lm(models.tiny_llada_config(), seed=0)
    seen = []

    def poison(module, args, output):  # finite until the 6th forward (block 1, step 1)
        seen.append(1)
        if len(seen) == 6:
            output.logits[0, 0, 0] = float("nan")
        return output

    model.register_forward_hook(poison)
    with pytest.raises(NonFiniteLogitsError, match=r"step 5 \(block 1, step 1 of the block\)"):
        dvtp.generate(model, _prompts(model), gen_length=8, steps=8, block_length=4, mask_id=MASK)


def test_finite_models_are_unaffected(llada):
    """-inf the sampler writes itself (suppressed ids) is not the model's: no error."""
    out = dvtp.generate(llada, _prompts(llada), gen_length=8, steps=8, block_length=4, mask_id=MASK,
                        suppress_tokens=[3, 4])
    assert (out.sequences != MASK).all()
