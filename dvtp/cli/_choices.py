"""The command line's choice lists, kept free of torch so that ``--help`` and usage errors
start in a fraction of a second (importing `dvtp_kernels` or `dvtp.policies` imports torch
and transformers).

tests/test_cli.py checks that each list equals the library's, so they cannot drift.
"""
from __future__ import annotations

# dvtp_kernels.dispatch.BACKENDS
BACKENDS = ("reference", "cpu", "triton", "cuda")
# dvtp.policies.available_policies()
POLICIES = ("random", "redvtp", "uniform")
# dvtp.generation.request.CACHE_MODES without None (no cache: the option left out)
CACHE_MODES = ("prefix", "dual")
# weights' dtypes of --dtype: auto (the checkpoint's) or a torch dtype's name
DTYPES = ("auto", "float32", "bfloat16", "float16")
# devices of selftest and bench (answer and visualize also take cuda:N)
DEVICES = ("cpu", "cuda")
# dvtp.bench.OPS, and "all"
BENCH_OPS = ("scores", "select", "compact", "generate", "all")
