"""``python -m dvtp_kernels.info``: what was built, and which backends are usable here and why not."""
from __future__ import annotations

import json
import os
import platform
from importlib import resources

import torch

from . import _extension, dispatch

_PROBE_DEVICES = ("cpu", "cuda")


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


def main() -> None:
    info = build_info()
    print("dvtp_kernels build")
    if info is None:
        print("  no build record (source tree not built: run `pip install --no-build-isolation .`)")
    else:
        for key, value in info.items():
            print(f"  {key}: {value}")
    print("runtime")
    print(f"  python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda})")
    problem = _extension.load()
    print(f"  C++ extension: {'loaded' if problem is None else problem}")
    try:
        import triton

        print(f"  triton {triton.__version__}, TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET', '0')}")
    except ImportError:
        print("  triton: not installed")
    cuda = torch.cuda.is_available()
    print(f"  CUDA device: {torch.cuda.get_device_name(0) if cuda else 'none'}")
    print(f"  DVTP_BACKEND={os.environ.get('DVTP_BACKEND', '(unset)')}")
    for device in _PROBE_DEVICES:
        print(f"backends for {device.upper()} tensors (default order: {', '.join(dispatch.DEFAULT_ORDER[device])})")
        for backend, ops in usability(device).items():
            reasons = sorted({r for rs in ops.values() for r in rs})
            if not reasons:
                print(f"  {backend:<9} usable")
            else:
                print(f"  {backend:<9} unusable: " + "; ".join(reasons))


if __name__ == "__main__":
    main()
