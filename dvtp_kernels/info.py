"""``python -m dvtp_kernels.info``: what was built, and which backends are usable here and why not.

Every reason is printed once: the extension's load problem and the build hint appear in
the "runtime" section only (backend lines point there), a backend tied to the other
device just says so, and the CUDA section is one line when there can be no CUDA tensors.
"""
from __future__ import annotations

import json
import os
import platform
from importlib import resources

import torch

from . import _extension, dispatch

_PROBE_DEVICES = ("cpu", "cuda")
# Backends that run on one device type only.
_HOME_DEVICE = {"cpu": "cpu", "cuda": "cuda"}
_SEE_ABOVE = "the C++ extension is not loaded (see 'C++ extension' above)"


def build_info() -> dict | None:
    """The record setup.py wrote at build time, or None for a source tree never built."""
    try:
        return json.loads(resources.files(__package__).joinpath("_build_info.json").read_text())
    except (FileNotFoundError, OSError):
        return None


def usability(device: str) -> dict[str, dict[str, list[str]]]:
    """{backend: {op: reasons}} for tensors on ``device`` (empty reasons = usable)."""
    dev = torch.device(device)
    return {
        backend: {op: dispatch.not_supported_reasons(backend, op, dev) for op in dispatch.OPS}
        for backend in dispatch.BACKENDS
    }


def env_backend() -> tuple[str | None, str | None]:
    """(DVTP_BACKEND's value or None when unset, why it is invalid or None)."""
    value = os.environ.get("DVTP_BACKEND") or None
    if value is not None and value not in dispatch.BACKENDS:
        return value, f"not a backend (expected one of {', '.join(dispatch.BACKENDS)})"
    return value, None


def _backend_reasons(backend: str, device: str, ops: dict[str, list[str]], problem: str | None) -> list[str]:
    """The distinct reasons over the ops, in order, with the load problem as a pointer."""
    home = _HOME_DEVICE.get(backend)
    if home is not None and home != device:
        return [f"takes {home.upper()} tensors only"]
    load_reason = None if problem is None else f"{problem}; {_extension.BUILD_HINT}"
    reasons = []
    for op_reasons in ops.values():
        for r in op_reasons:
            r = _SEE_ABOVE if r == load_reason else r
            if r not in reasons:
                reasons.append(r)
    return reasons


def _default_choice(device: str, usable: dict[str, bool]) -> str:
    value, invalid = env_backend()
    if invalid is not None:
        return "none: DVTP_BACKEND is invalid (see above), every call without backend= raises BackendError"
    if value is not None:
        if usable[value]:
            return f"{value} (DVTP_BACKEND)"
        return (f"none: DVTP_BACKEND={value} cannot run on {device.upper()} tensors, every call "
                "without backend= raises BackendError")
    for name in dispatch.DEFAULT_ORDER[device]:
        if usable[name]:
            return name
    return "none: no backend of the default order is usable"


def main() -> None:
    info = build_info()
    problem = _extension.load()
    print("dvtp_kernels build")
    if info is not None:
        for key, value in info.items():
            print(f"  {key}: {value}")
    elif problem is None:
        print("  no build record (dvtp_kernels/_build_info.json is absent), yet the C++ extension "
              "loads: it was built without this package's setup.py; see the backends below")
    else:
        print("  no build record: this copy of dvtp_kernels was never built (see 'C++ extension' below)")
    print("runtime")
    print(f"  python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda})")
    if problem is None:
        print("  C++ extension: loaded")
    else:
        print(f"  C++ extension: not loaded: {problem}")
        print(f"    {_extension.BUILD_HINT}")
    try:
        import triton

        print(f"  triton {triton.__version__}, TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET', '0')}")
    except ImportError:
        print("  triton: not installed")
    cuda = torch.cuda.is_available()
    print(f"  CUDA device: {torch.cuda.get_device_name(0) if cuda else 'none (' + dispatch.no_cuda_reason() + ')'}")
    value, invalid = env_backend()
    if value is None:
        print("  DVTP_BACKEND: unset (calls without backend= take the default order below)")
    elif invalid is not None:
        print(f"  DVTP_BACKEND={value!r} is INVALID: {invalid}; every call without backend= "
              "raises BackendError until it is fixed or unset")
    else:
        print(f"  DVTP_BACKEND={value} (calls without backend= use it)")
    for device in _PROBE_DEVICES:
        order = ", ".join(dispatch.DEFAULT_ORDER[device])
        if device == "cuda" and not cuda:
            print(f"backends for CUDA tensors (default order: {order}): none, there is no CUDA device (see above)")
            continue
        print(f"backends for {device.upper()} tensors (default order: {order})")
        usable = {}
        for backend, ops in usability(device).items():
            reasons = _backend_reasons(backend, device, ops, problem)
            usable[backend] = not reasons
            if not reasons:
                print(f"  {backend:<9} usable")
            else:
                print(f"  {backend:<9} unusable: " + "; ".join(reasons))
        print(f"  backend=None picks: {_default_choice(device, usable)}")


if __name__ == "__main__":
    main()
