"""The one check of a user-given device (the benchmarks, the self-test and the CLI share it)."""
from __future__ import annotations

import torch

__all__ = ["resolve_device"]


def resolve_device(device, name: str = "device") -> torch.device:
    """``device`` ("cpu", "cuda", "cuda:N" or a torch.device) checked -> torch.device
    ("cuda" becomes the current CUDA device).

    ValueError naming ``name`` for anything else, and for a CUDA device that is not there.
    """
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda") or (dev.type == "cpu" and dev.index not in (None, 0)):
        raise ValueError(f"{name} must be 'cpu', 'cuda' or 'cuda:<index>', got {device!r}")
    if dev.type == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        from dvtp_kernels.dispatch import no_cuda_reason

        raise ValueError(f"{name}={device!r} but {no_cuda_reason()}")
    count = torch.cuda.device_count()
    if dev.index is not None and dev.index >= count:
        raise ValueError(f"{name}={device!r} but there are only {count} CUDA device(s)")
    return dev if dev.index is not None else torch.device("cuda", torch.cuda.current_device())
