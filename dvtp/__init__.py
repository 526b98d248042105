"""dvtp: RedVTP visual-token pruning for diffusion (V)LMs, on top of the `dvtp_kernels` ops.

* `PruningConfig` - how much / when / by which policy to prune.
* `generate` - the LLaDA diffusion sampler with pruning (returns `GenerationOutput`).
* `patched` - install the dvtp attention hook on a transformers model (context manager).
* `dvtp.models` - bidirectional LLaDA-style (Llama) and Dream-style (Qwen2) LMs.
* `dvtp.policies` - the pruning-policy registry ("redvtp", "random", "uniform").
* `load` - a local LLaDA-V or LLaDA checkpoint folder -> model with ``.answer(...)``.
* `dvtp.vlm` - LLaDA-V: image + question -> answer (`dvtp.vlm.tiny_llada_v` offline).

Importing dvtp patches nothing: the attention function is registered with transformers
on the first `patched` call, and only while a model is patched does it use it.
"""
from __future__ import annotations

import importlib

# Public names -> the submodule defining them. Loaded on first use (PEP 562), so that
# `import dvtp` -- and the `dvtp` command line's --help and usage errors -- do not pay for
# importing transformers and torch's model code until something needs them.
_EXPORTS = {
    "PruningConfig": "config",
    "generate": "sampler",
    "GenerationOutput": "generation.output",
    "patched": "attention",
    "AttentionHook": "attention",
    "ATTENTION_NAME": "attention",
    "load": "checkpoint",
    "PruningPolicy": "policies",
    "register_policy": "policies",
    "available_policies": "policies",
}
_SUBMODULES = ("models", "policies", "vlm")

__all__ = [*_EXPORTS, *_SUBMODULES]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    elif not name.startswith("_"):  # a submodule (dvtp.models, dvtp.sampler, ...)
        try:
            value = importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module 'dvtp' has no attribute {name!r}") from None
    else:
        raise AttributeError(f"module 'dvtp' has no attribute {name!r}")
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__():
    return sorted([*globals(), *__all__])
