"""Loading of the compiled extension ``dvtp_kernels._C`` (C++ CPU, and CUDA when built).

Loading is lazy and cached: importing dvtp_kernels never loads it, so a missing or
broken build costs nothing until a compiled backend is wanted, and never touches CUDA.
"""
from __future__ import annotations

import functools
import warnings

import torch

BUILD_HINT = (
    "build it with `pip install --no-build-isolation .` in a checkout (needs a C++ compiler and "
    "ninja; a CUDA toolkit and a CUDA torch for the CUDA kernels), or run `make test`"
)


@functools.lru_cache(maxsize=None)
def load() -> str | None:
    """Load the extension once; return None on success, else why it is unusable."""
    try:
        from . import _C  # noqa: F401  (registers the dvtp ops with the dispatcher)
    except (ImportError, OSError) as exc:
        return f"the C++ extension dvtp_kernels._C could not be loaded ({type(exc).__name__}: {exc})"
    from . import fake

    fake.register_extension_fakes()
    return None


@functools.lru_cache(maxsize=None)  # asked on every call of an op; registrations only grow
def has_kernel(op: str, dispatch_key: str) -> bool:
    return load() is None and torch._C._dispatch_has_kernel_for_dispatch_key(f"dvtp::{op}", dispatch_key)


@functools.lru_cache(maxsize=None)
def warn_fallback(problem: str) -> None:
    warnings.warn(
        f"dvtp_kernels: {problem}; falling back to the PyTorch reference on CPU; {BUILD_HINT}",
        RuntimeWarning,
        stacklevel=4,
    )
