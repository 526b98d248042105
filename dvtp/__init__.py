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

from . import models, policies, vlm
from .attention import ATTENTION_NAME, AttentionHook, patched
from .checkpoint import load
from .config import PruningConfig
from .policies import PruningPolicy, available_policies, register_policy
from .sampler import GenerationOutput, generate

__all__ = [
    "PruningConfig",
    "generate",
    "GenerationOutput",
    "patched",
    "AttentionHook",
    "ATTENTION_NAME",
    "policies",
    "models",
    "vlm",
    "load",
    "PruningPolicy",
    "register_policy",
    "available_policies",
]
__version__ = "0.1.0"

