"""The one check of a user-given device (`dvtp.load`, the tiny presets, the benchmarks,
the self-test and the CLI share it)."""
from __future__ import annotations

import torch

__all__ = ["resolve_device", "usable_devices"]


def usable_devices() -> list[str]:
    """The devices a model can be put on here: ``["cpu"]`` plus ``"cuda:N"`` for every
    visible CUDA device."""
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return ["cpu", *(f"cuda:{i}" for i in range(count))]


def _usable() -> str:
    return "usable here: " + ", ".join(repr(d) for d in usable_devices())


def resolve_device(device, name: str = "device") -> torch.device:
    """``device`` ("cpu", "cuda", "cuda:N", a CUDA index N or a torch.device) checked ->
    torch.device ("cuda" becomes the current CUDA device).

    ValueError naming ``name`` and the devices usable here for anything else, and for a
    CUDA device that is not there.
    """
    dev = None
    if isinstance(device, int) and not isinstance(device, bool):
        # an index means a CUDA device (as for torch's .to(0)); torch.device(0) itself
        # raises an unhelpful "no accelerator" error on a CPU-only build
        dev = torch.device("cuda", device) if device >= 0 else None
    elif isinstance(device, (str, torch.device)):
        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError, ValueError):
            dev = None
    if dev is None or dev.type not in ("cpu", "cuda") or (dev.type == "cpu" and dev.index not in (None, 0)):
        raise ValueError(f"{name} must be 'cpu', 'cuda' or 'cuda:<index>', got {device!r} ({_usable()})")
    if dev.type == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        from dvtp_kernels.dispatch import no_cuda_reason

        raise ValueError(f"{name}={device!r} but {no_cuda_reason()} ({_usable()})")
    count = torch.cuda.device_count()
    if dev.index is not None and dev.index >= count:
        raise ValueError(f"{name}={device!r} but there are only {count} CUDA device(s) ({_usable()})")
    return dev if dev.index is not None else torch.device("cuda", torch.cuda.current_device())
