"""dvtp calls transformers with its current API: no deprecation warning from dvtp's calls,
and the test suite's guard (tests/conftest.py) turns one into an error."""
from __future__ import annotations

import warnings

import pytest
import torch

import dvtp
from conftest import DvtpDeprecatedCall
from dvtp.config import PruningConfig

MASK = 127


def _prompt(model, n=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        return model.get_input_embeddings()(torch.randint(0, MASK, (n,), generator=g))


@pytest.mark.parametrize("cache", [None, "prefix", "dual"])
@pytest.mark.parametrize("which", ["llada", "dream"])
def test_generate_raises_no_deprecation_warning(which, cache, request):
    """Every forward dvtp makes (full, cached, scoring) uses transformers' current names:
    nothing dvtp calls warns (a FutureWarning about ``past_key_values`` did)."""
    model = request.getfixturevalue(which)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        out = dvtp.generate(model, [_prompt(model)], gen_length=8, steps=4, block_length=4, mask_id=MASK,
                            cache=cache, pruning=PruningConfig(keep_ratio=0.5), visual_span=(2, 10))
    assert out.num_forwards == 4
    deprecations = [str(w.message) for w in seen if issubclass(w.category, (DeprecationWarning, FutureWarning))]
    assert deprecations == []


def test_the_cache_reaches_every_layer_through_the_current_argument(llada):
    """``cache=`` (not ``past_key_values=``) is what the decoder layers hand to our cache's
    ``update``: a cached step attends to what the refresh stored."""
    from dvtp.generation.kv_cache import DiffusionCache

    kv = DiffusionCache(llada.config.num_hidden_layers)
    calls = []
    for layer in kv.layers:
        real = layer.update
        layer.update = lambda k, v, *a, _real=real, **kw: (calls.append(k.shape), _real(k, v, *a, **kw))[1]
    x = _prompt(llada).unsqueeze(0)
    with torch.no_grad(), dvtp.patched(llada), kv.fill():
        llada(inputs_embeds=x, cache=kv, use_cache=False)
    assert len(calls) == llada.config.num_hidden_layers and kv.is_filled


# -- the guard itself: a deprecated call made from a dvtp module fails the test -----------

_DVTP_CALLER = '''
def call(model, x):
    return model(inputs_embeds=x, past_key_values=None)
'''


def _as_module(name: str):
    """``call(model, x)`` defined in a module named ``name`` (what the guard looks at)."""
    scope = {"__name__": name}
    exec(compile(_DVTP_CALLER, f"<{name}>", "exec"), scope)
    return scope["call"]


def test_guard_fails_a_deprecated_call_made_by_dvtp(llada):
    """The old call, made from a dvtp module, is an error under the suite's guard; the
    warning itself is attributed to torch's Module call (so a module-regex filter alone
    could not tell who made it)."""
    x = _prompt(llada).unsqueeze(0)
    with torch.no_grad(), pytest.raises(DvtpDeprecatedCall, match="dvtp.sampler made a deprecated call.*past_key_values"):
        _as_module("dvtp.sampler")(llada, x)


def test_guard_leaves_other_callers_alone(llada):
    """The same call from a test (or any other package) is only a warning."""
    x = _prompt(llada).unsqueeze(0)
    with torch.no_grad(), pytest.warns(FutureWarning, match="past_key_values") as seen:
        _as_module("someone_else")(llada, x)
    assert seen[0].filename.endswith("module.py")  # torch's Module call, whoever the caller


def test_guard_sees_through_dreams_override(dream):
    """DreamLM.forward re-declares the deprecation, so the warning names Dream's caller, not
    dvtp.models (which would make every user's old call look like dvtp's)."""
    x = _prompt(dream).unsqueeze(0)
    with torch.no_grad(), pytest.warns(FutureWarning, match="DreamLM.forward") as seen:
        _as_module("someone_else")(dream, x)
    assert not seen[0].filename.endswith("models.py")
    with torch.no_grad(), pytest.raises(DvtpDeprecatedCall):
        _as_module("dvtp.vlm.answer")(dream, x)
