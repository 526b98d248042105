"""Timing, peak-memory and result-file helpers shared by the benchmark scripts.

Peak memory: on CUDA, the caching allocator's peak; on CPU, the process's resident-set
high-water mark (VmHWM, reset through /proc/self/clear_refs) above its size before the
call. glibc's malloc keeps freed large blocks resident once its mmap threshold has
grown, which would hide later peaks, so the scripts pin the threshold (see
`pin_malloc_threshold`) before torch allocates anything.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from typing import Callable

import torch

MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536"}


def pin_malloc_threshold() -> None:
    """Re-exec the running script once with a fixed glibc mmap threshold (CPU memory numbers)."""
    if all(os.environ.get(k) == v for k, v in MALLOC_ENV.items()):
        return
    os.environ.update(MALLOC_ENV)
    os.execv(sys.executable, [sys.executable, *sys.argv])


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(fn: Callable[[], object], device: torch.device, *, reps: int = 10, warmup: int = 2) -> float:
    """Median wall time of ``fn`` in milliseconds (CUDA: events around each call)."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _proc_status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_extra_mib(fn: Callable[[], object], device: torch.device) -> float | None:
    """Memory ``fn`` needs beyond what is allocated before it, in MiB (None if unmeasurable)."""
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
        before = _proc_status_kib("VmRSS")
        fn()
        return max(0, _proc_status_kib("VmHWM") - before) / 1024
    except OSError:
        return None


def cpu_tensor_peak(fn: Callable[[], object]) -> tuple[int, int]:
    """(peak live CPU tensor bytes above the start, largest single allocation) while ``fn``
    runs, from the profiler's memory timeline: counts tensors only, whatever malloc does."""
    from torch.profiler import ProfilerActivity, profile
    from torch.profiler._memory_profiler import Action

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        fn()
    live = peak = largest = 0
    for _, action, _, size in prof._memory_profile().timeline:
        if action == Action.CREATE:
            live += size
            largest = max(largest, size)
        elif action == Action.DESTROY:
            live -= size
        peak = max(peak, live)
    return peak, largest


def environment(device: torch.device) -> dict:
    record = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "device_type": device.type,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
    }
    try:
        import triton

        record["triton"] = triton.__version__
    except ImportError:
        record["triton"] = None
    return record


def save_json(path: str | None, record: dict) -> None:
    """Write ``record`` to ``path`` (directories created) and say so; nothing when path is None."""
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            json.dump(record, f, indent=2)
        print(f"wrote {path}")


def write_json(path: str | None, record: dict) -> None:
    text = json.dumps(record, indent=2)
    print(text)
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            f.write(text + "\n")
