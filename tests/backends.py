"""Which (backend, device) pairs the op tests run on, and when a missing one is a failure.

`make test` sets DVTP_REQUIRE_BACKENDS=reference,cpu,triton so a broken build fails the
run instead of skipping its tests; a CUDA-less machine skips "cuda" (and the CUDA
device) with the reason. DVTP_TEST_BACKENDS=cpu,... restricts the pairs to those
backends (`make sanitize` runs the cpu backend only).
"""
import os

import pytest
import torch

from dvtp_kernels import dispatch

REQUIRED = {b for b in os.environ.get("DVTP_REQUIRE_BACKENDS", "").split(",") if b}
SELECTED = {b for b in os.environ.get("DVTP_TEST_BACKENDS", "").split(",") if b}
HAS_CUDA = torch.cuda.is_available()

_PAIRS = [("reference", "cpu"), ("cpu", "cpu"), ("triton", "cpu"),
          ("reference", "cuda"), ("triton", "cuda"), ("cuda", "cuda")]


def backend_params():
    params = []
    for backend, device in _PAIRS:
        if SELECTED and backend not in SELECTED:
            continue
        if device == "cpu" and backend == "triton" and HAS_CUDA:
            continue  # on a GPU machine triton is tested compiled, on CUDA tensors
        marks = [pytest.mark.cuda] if device == "cuda" else []
        params.append(pytest.param(backend, device, id=f"{backend}-{device}", marks=marks))
    return params


def require(backend: str, device: str, op: str) -> torch.device:
    """Skip (or fail, for a required backend) when ``backend`` cannot run ``op`` on ``device``."""
    if device == "cuda" and not HAS_CUDA:
        pytest.skip("no CUDA device on this machine")
    reasons = dispatch.not_supported_reasons(backend, op, torch.device(device))
    if reasons:
        message = f"{backend} cannot run {op} on {device}: " + "; ".join(reasons)
        if backend in REQUIRED and (device == "cpu" or HAS_CUDA):
            pytest.fail("required backend unusable: " + message)
        pytest.skip(message)
    return torch.device(device)


def is_interpreted(backend: str, device: str) -> bool:
    """Triton under TRITON_INTERPRET=1 is slow: such tests use the smaller shape lists."""
    return backend == "triton" and device == "cpu"
