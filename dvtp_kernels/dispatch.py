"""Backend choice for the three ops, with the reasons a backend cannot take an input.

Backends: "reference" (PyTorch, any device), "cpu" (C++ extension), "triton" (GPU; on
CPU only on request and under ``TRITON_INTERPRET=1``), "cuda" (CUDA extension).
``backend=None`` takes the first usable backend of the device's preference list,
``DVTP_BACKEND`` overrides that default, and a backend that was asked for but cannot
take the input raises `BackendError` listing why.
"""
from __future__ import annotations

import contextlib
import functools
import os
import threading

import torch

from . import _extension, reference

BACKENDS = ("reference", "cpu", "triton", "cuda")
OPS = ("accumulate_visual_scores", "select_visual_tokens", "gather_compact")

# Fastest first, as measured by benchmarks/ (see README's backend table).
DEFAULT_ORDER = {
    "cpu": ("cpu", "reference"),
    "cuda": ("cuda", "triton", "reference"),
}


class BackendError(ValueError):
    """No backend (or not the requested one) can run an op on the given input."""


@functools.lru_cache(maxsize=None)
def _triton_module():
    """(module, None) or (None, why triton is unusable). Imported lazily: triton is optional."""
    try:
        from . import triton_backend
    except Exception as exc:  # ImportError, or triton failing to initialise
        return None, f"triton is not usable ({type(exc).__name__}: {exc})"
    return triton_backend, None


def not_supported_reasons(backend: str, op: str, device: torch.device, args: dict | None = None) -> list[str]:
    """Why ``backend`` cannot run ``op`` on tensors on ``device`` ([] when it can).

    With the normalised ``args`` of a call, input-specific limits are checked too.
    """
    reasons = []
    if backend == "reference":
        return reasons
    if backend in ("cpu", "cuda"):
        want = "cpu" if backend == "cpu" else "cuda"
        if device.type != want:
            reasons.append(f"the {backend} backend takes {want.upper()} tensors, got tensors on {device}")
        elif want == "cuda" and args is None and not torch.cuda.is_available():
            reasons.append(no_cuda_reason())
        problem = _extension.load()
        if problem is not None:
            reasons.append(f"{problem}; {_extension.BUILD_HINT}")
        elif not _extension.has_kernel(op, want.upper()):
            reasons.append(f"the extension was built without {want.upper()} kernels")
        return reasons
    if backend == "triton":
        module, problem = _triton_module()
        if problem is not None:
            reasons.append(problem)
        if device.type == "cuda" and args is None and not torch.cuda.is_available():
            # Probing without tensors (python -m dvtp_kernels.info): real CUDA tensors
            # prove a device. The interpreter does not run CUDA tensors either.
            reasons.append(no_cuda_reason())
        if device.type == "cpu":
            if os.environ.get("TRITON_INTERPRET") != "1":
                reasons.append(
                    "triton runs CPU tensors only in its interpreter: set TRITON_INTERPRET=1 "
                    "before importing dvtp_kernels"
                )
        elif device.type != "cuda":
            reasons.append(f"triton takes CUDA tensors, got tensors on {device}")
        if module is not None and args is not None:
            reasons.extend(module.cannot_take(op, **args))
        return reasons
    raise BackendError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")


def no_cuda_reason() -> str:
    """Why there can be no CUDA tensors here (torch.cuda.is_available() is False)."""
    if torch.version.cuda is None and getattr(torch.version, "hip", None) is None:
        return f"torch {torch.__version__} is a CPU-only build: there are no CUDA tensors"
    return f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no CUDA device"


INFO_HINT = "`python -m dvtp_kernels.info` shows what is built and usable here"


def _device_of(op: str, args: dict) -> torch.device:
    if op == "accumulate_visual_scores":
        return args["q"].device
    if op == "select_visual_tokens":
        return args["scores"].device
    return args["gather_index"].device


def choose(op: str, args: dict, backend: str | None = None) -> str:
    """The backend that runs ``op`` on ``args``: ``backend`` if given, else DVTP_BACKEND, else the default."""
    requested = backend or os.environ.get("DVTP_BACKEND") or None
    if requested is not None:
        if requested not in BACKENDS:
            source = "backend" if backend else "DVTP_BACKEND"
            raise BackendError(f"{source}={requested!r} is not a backend; expected one of {', '.join(BACKENDS)}")
        reasons = not_supported_reasons(requested, op, _device_of(op, args), args)
        if reasons:
            how = "backend" if backend else "DVTP_BACKEND"
            raise BackendError(
                f"{how}={requested!r} cannot run {op} on this input:\n  - " + "\n  - ".join(reasons)
                + f"\n({INFO_HINT})"
            )
        return requested
    device = _device_of(op, args)
    order = DEFAULT_ORDER.get(device.type, ("reference",))
    all_reasons = {}
    for name in order:
        reasons = not_supported_reasons(name, op, device, args)
        if not reasons:
            if name == "reference" and "cpu" in all_reasons and _extension.load() is not None:
                _extension.warn_fallback(_extension.load())
            return name
        all_reasons[name] = reasons
    lines = [f"{name}: {'; '.join(r)}" for name, r in all_reasons.items()]
    raise BackendError(
        f"no backend can run {op} on this input:\n  - " + "\n  - ".join(lines) + f"\n({INFO_HINT})"
    )


_recorders = threading.local()


@contextlib.contextmanager
def recording():
    """Record which backend ran each op inside the block: yields a dict ``{op: backend}``
    filled by every `run` call on this thread (the last call of an op wins). This is how
    callers report the backend that actually ran rather than re-deriving the choice."""
    ran: dict[str, str] = {}
    stack = getattr(_recorders, "stack", None)
    if stack is None:
        stack = _recorders.stack = []
    stack.append(ran)
    try:
        yield ran
    finally:
        stack.remove(ran)


def run(backend: str, op: str, **args):
    """Run a normalised op call on a backend (no checks: callers validated and chose)."""
    for ran in getattr(_recorders, "stack", ()):
        ran[op] = backend
    if backend == "reference":
        return _REFERENCE[op](**args)
    if backend == "triton":
        module, _ = _triton_module()
        return getattr(module, op)(**args)
    return getattr(torch.ops.dvtp, op).default(**args)  # the one overload: no overload resolution


def _reference_select(scores, row_mask, seq_len, key_start, key_len, keep_count, max_new_len, max_keep):
    """The op contract on the reference: outputs max_new_len / max_keep wide, -1 padded, and
    the per-item NaN flag."""
    importance = reference.selected_importance(scores, row_mask)
    gather_index, _, keep_index = reference.select_from_importance(
        importance, seq_len, key_start, key_len, keep_count
    )
    gather_index = torch.nn.functional.pad(gather_index, (0, max_new_len - gather_index.shape[1]), value=-1)
    keep_index = torch.nn.functional.pad(keep_index, (0, max_keep - keep_index.shape[1]), value=-1)
    return gather_index, keep_index, reference.nan_items(importance, key_len)


_REFERENCE = {
    "accumulate_visual_scores": reference.accumulate_visual_scores,
    "select_visual_tokens": _reference_select,
    "gather_compact": reference.gather_compact,
}
