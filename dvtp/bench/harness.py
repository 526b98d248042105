"""The one timing / peak-memory helper and record format of every dvtp benchmark.

* `Case`: one benchmark configuration (op, shape) whose ``setup`` builds the inputs on the
  device and returns the implementations to compare, one of them the baseline.
* `measure`: median and IQR of one zero-argument callable, and its peak memory.
  CPU: as pytest-benchmark does -- `time.perf_counter`, the number of calls per round
  calibrated so a round lasts at least a minimum time, several rounds. CUDA: CUDA events
  around each call after warm-up calls.
* `run_case`: every implementation of a case measured, baseline first -> `Record` list.
* `append_records` / `load_records`: JSON Lines files, one `Record` per line, by default
  in a user folder (`results_dir`, `results_path`); the repository's committed records
  are under ``benchmarks/results/`` (`repository_results_dir`).

Peak memory is what a call needs above what was allocated before it. CUDA: the caching
allocator's ``max_memory_allocated``. CPU: the process's resident-set high-water mark
(VmHWM, reset to the current RSS by writing 5 to ``/proc/self/clear_refs``) above the RSS
before the call; None where /proc does not offer that. glibc's malloc keeps freed heap
blocks resident (its dynamic mmap threshold grows to 32 MiB), so a call reusing them would
not raise the RSS: ``malloc_trim(0)`` before the call hands those pages back to the kernel
first (they fault in again, and count, when reused).
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import dataclasses
import datetime
import functools
import json
import math
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch

from ..devices import resolve_device  # noqa: F401  (re-exported: dvtp.bench uses it)

MIB = 2**20


@dataclass
class Case:
    """One benchmark configuration: the implementations ``setup`` returns, on one shape.

    ``setup()`` builds the inputs on the device and returns impl name -> zero-argument
    callable; ``baseline`` names the one ratios are relative to. ``shape`` holds JSON-able
    parameters ("N", the sequence length, where one exists: the report's x axis).
    ``metrics(impl, last_return_value)`` adds JSON-able fields to a record's ``extra``
    (an ``extra["bytes_moved"]`` there also yields ``extra["effective_GBps"]``).
    ``repeats`` fixes the number of timed rounds (slow end-to-end cases). ``skipped``: impl
    names not in ``setup()``'s result -> why they cannot run here.
    """

    op: str
    name: str
    shape: dict
    baseline: str
    setup: Callable[[], dict[str, Callable[[], object]]]
    metrics: Callable[[str, object], dict] | None = None
    repeats: int | None = None
    skipped: dict[str, str] = field(default_factory=dict)


@dataclass
class Record:
    """One implementation's result on one case (one line of a results file).

    ``ratio`` is baseline median / this median (the speedup over the baseline, 1.0 for the
    baseline itself; None if the baseline could not be measured). ``env``: torch, triton,
    cuda and python versions, threads, cpu_count, git commit (None outside a checkout) and
    whether the tree had changes, 1-minute load average, the cores other processes kept
    busy while the case ran (``others_cpu_cores``; None without /proc/stat), UTC timestamp.
    """

    op: str
    case: str
    shape: dict
    backend: str
    device: str
    device_name: str
    median_ms: float
    iqr_ms: float
    peak_mib: float | None
    ratio: float | None
    baseline: str
    extra: dict
    env: dict

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Record:
        names = [f.name for f in dataclasses.fields(cls)]
        missing = [n for n in names if n not in data]
        unknown = [k for k in data if k not in names]
        if missing or unknown:
            raise ValueError(f"not a benchmark record: missing fields {missing}, unknown fields {unknown}")
        return cls(**{n: data[n] for n in names})


@dataclass
class Measurement:
    """Timing and memory of one callable.

    ``times_ms``: per-call time of each round (a round being ``calls_per_round`` calls);
    ``median_ms`` and ``iqr_ms`` (upper minus lower quartile) are over those rounds.
    ``peak_mib``: memory the call needs above what was allocated before it (module doc).
    ``last``: the return value of the final call (for `Case.metrics`).
    """

    median_ms: float
    iqr_ms: float
    times_ms: list[float]
    calls_per_round: int
    peak_mib: float | None
    last: object = field(default=None, repr=False)


@dataclass(frozen=True)
class Budget:
    """How long `measure` spends on one callable.

    ``warmup`` untimed calls first; rounds last at least ``min_round_s`` (CPU: calls per
    round calibrated to it; CUDA: one call per round, timed by events); as many rounds as
    fill ``max_time_s``, at least ``min_rounds`` and at most ``max_rounds``.
    """

    warmup: int
    min_round_s: float
    max_time_s: float
    min_rounds: int
    max_rounds: int


BUDGETS = {
    ("cpu", False): Budget(warmup=1, min_round_s=0.002, max_time_s=1.0, min_rounds=5, max_rounds=10_000),
    ("cpu", True): Budget(warmup=1, min_round_s=0.0005, max_time_s=0.02, min_rounds=3, max_rounds=100),
    ("cuda", False): Budget(warmup=3, min_round_s=0.0, max_time_s=0.25, min_rounds=10, max_rounds=1000),
    ("cuda", True): Budget(warmup=1, min_round_s=0.0, max_time_s=0.01, min_rounds=3, max_rounds=100),
}


# ---------------------------------------------------------------------------------------
# devices
# ---------------------------------------------------------------------------------------


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model name from /proc/cpuinfo (else platform's words)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


@functools.cache
def _git_state() -> tuple[str | None, bool | None]:
    """(commit, tree has uncommitted changes) of the checkout holding dvtp, or (None, None)."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if not os.path.exists(os.path.join(root, ".git")):
        return None, None
    try:
        commit = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None, None
    return commit or None, bool(status.strip())


def environment(device: torch.device) -> dict:
    """What a result depends on besides the code: versions, threads, commit, load, time."""
    try:
        import triton

        triton_version = triton.__version__
    except Exception:  # absent, or failing to initialise: either way not a version to report
        triton_version = None
    commit, dirty = _git_state()
    return {
        "torch": torch.__version__,
        "triton": triton_version,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "commit": commit,
        "dirty": dirty,
        # the machine may be shared: the load (and, from run_case, "others_cpu_cores": the
        # cores other processes kept busy while the case ran) says how far to trust a timing
        "loadavg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def busy_seconds() -> tuple[float, float] | None:
    """(CPU seconds all processes have spent busy, of them this process), None without /proc/stat."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = ticks
    own = time.process_time()  # every thread of this process
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK"), own


def others_cpu_cores(before: tuple[float, float] | None, after: tuple[float, float] | None, wall_s: float) -> float | None:
    """Cores other processes kept busy on average between two `busy_seconds` readings:
    on a shared machine, how far a CPU timing was disturbed (None where unknown)."""
    if before is None or after is None or wall_s <= 0:
        return None
    return max(0.0, ((after[0] - before[0]) - (after[1] - before[1])) / wall_s)


# ---------------------------------------------------------------------------------------
# memory
# ---------------------------------------------------------------------------------------


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None (another libc)."""
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None


def _proc_status_kib(field_name: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise OSError(f"{field_name} not in /proc/self/status")


def peak_mib(fn: Callable[[], object], device: torch.device) -> tuple[float | None, object]:
    """(memory ``fn()`` needs above what is allocated before it in MiB or None, its return value)."""
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        value = fn()
        synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / MIB, value
    trim = _malloc_trim()
    if trim is not None:
        trim(0)  # freed heap pages back to the kernel, so reusing them counts (module doc)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # VmHWM := current RSS
        before = _proc_status_kib("VmRSS")
    except OSError:
        return None, fn()
    value = fn()
    return max(0, _proc_status_kib("VmHWM") - before) / 1024, value


def cpu_tensor_peak(fn: Callable[[], object]) -> tuple[int, int]:
    """(peak bytes of live CPU tensors allocated while ``fn`` runs, largest single allocation).

    Counts the CPU allocator's tensors only, whatever malloc does, from the memory events
    of torch.profiler's Chrome trace: each carries the bytes of one allocation (negative:
    a free) and the allocator's running total, so the peak is the largest total minus the
    total before the first event.
    """
    import tempfile

    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "trace.json")
        prof.export_chrome_trace(path)
        with open(path) as f:
            trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    memory = sorted(
        (e["ts"], e["args"]["Total Allocated"], e["args"]["Bytes"])
        for e in events
        if e.get("name") == "[memory]" and e.get("args", {}).get("Device Type") == 0  # 0: CPU
    )
    if not memory:
        return 0, 0
    start = memory[0][1] - memory[0][2]
    return max(0, max(total for _, total, _ in memory) - start), max(0, max(b for _, _, b in memory))


# ---------------------------------------------------------------------------------------
# timing
# ---------------------------------------------------------------------------------------


def quartiles(times: Sequence[float]) -> tuple[float, float, float]:
    """(lower quartile, median, upper quartile) of ``times`` (inclusive method: for one
    sample all three are that sample)."""
    if not times:
        raise ValueError("times must hold at least one measurement")
    if len(times) < 2:
        return float(times[0]), float(times[0]), float(times[0])
    q1, q2, q3 = statistics.quantiles(times, n=4, method="inclusive")
    return float(q1), float(q2), float(q3)


def median_iqr(times: Sequence[float]) -> tuple[float, float]:
    """(median, upper minus lower quartile) of ``times``."""
    q1, q2, q3 = quartiles(times)
    return q2, q3 - q1


def _rounds(budget: Budget, round_s: float, repeats: int | None) -> int:
    if repeats is not None:
        return repeats
    wanted = math.ceil(budget.max_time_s / max(round_s, 1e-9))
    return max(budget.min_rounds, min(budget.max_rounds, wanted))


def _time_cpu(fn, budget: Budget, repeats: int | None) -> tuple[list[float], int]:
    timer = time.perf_counter
    calls, tries = 1, 0
    while True:  # calibration: calls per round so a round lasts min_round_s
        t0 = timer()
        for _ in range(calls):
            fn()
        elapsed = timer() - t0
        tries += 1
        if elapsed >= budget.min_round_s:
            break
        calls = max(2 * calls, math.ceil(calls * budget.min_round_s / max(elapsed, 1e-9)))
    rounds = _rounds(budget, elapsed, repeats)
    # A first try long enough was a round like the others (after the warm-up): kept, so a
    # slow end-to-end case pays no extra call for calibration.
    times = [elapsed * 1e3] if tries == 1 and rounds > 1 else []
    for _ in range(rounds - len(times)):
        t0 = timer()
        for _ in range(calls):
            fn()
        times.append((timer() - t0) * 1e3 / calls)
    return times, calls


def _time_cuda(fn, device: torch.device, budget: Budget, repeats: int | None) -> list[float]:
    def timed_calls(n: int) -> list[float]:
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(n)]
        for start, end in events:
            start.record()
            fn()
            end.record()
        torch.cuda.synchronize(device)
        return [start.elapsed_time(end) for start, end in events]

    if repeats is None:  # as many rounds as fill the budget, from two calls' times
        repeats = _rounds(budget, max(timed_calls(2)) / 1e3, None)
    return timed_calls(repeats)


def measure(
    fn: Callable[[], object],
    device,
    *,
    repeats: int | None = None,
    warmup: int | None = None,
    quick: bool = False,
    memory: bool = True,
) -> Measurement:
    """Time ``fn()`` on ``device`` and measure its peak memory (module doc).

    ``repeats``: timed rounds (default: as many as the device's `Budget` allows);
    ``warmup``: untimed calls first (default from the budget); ``quick``: the small budget
    (tests, smoke runs); ``memory=False`` skips the memory call (``peak_mib`` None).
    """
    device = resolve_device(device)
    budget = BUDGETS[(device.type, bool(quick))]
    if repeats is not None and (not isinstance(repeats, int) or repeats < 1):
        raise ValueError(f"repeats must be a positive int or None, got {repeats!r}")
    warmup = budget.warmup if warmup is None else warmup
    if not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup must be a non-negative int or None, got {warmup!r}")
    with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():
        for _ in range(warmup):
            fn()
        synchronize(device)
        if device.type == "cuda":
            times, calls = _time_cuda(fn, device, budget, repeats), 1
        else:
            times, calls = _time_cpu(fn, budget, repeats)
        peak, last = peak_mib(fn, device) if memory else (None, fn())
        synchronize(device)
    median, iqr = median_iqr(times)
    return Measurement(median, iqr, times, calls, peak, last)


# ---------------------------------------------------------------------------------------
# cases -> records
# ---------------------------------------------------------------------------------------


def run_case(case: Case, device, *, quick: bool = False, impls: Iterable[str] | None = None) -> list[Record]:
    """Measure the implementations of ``case`` (all, or those named in ``impls``) on ``device``.

    The baseline is always measured first (every ratio needs it) and returned too. The
    implementations ``case.skipped`` lists, and any that run out of device memory, are
    not measured: the first record's (the baseline's, unless it ran out of memory; then
    every ratio is None) ``extra["skipped"]`` says why.
    """
    device = resolve_device(device)
    wanted = None if impls is None else list(impls)
    built = case.setup()
    if case.baseline not in built:
        raise ValueError(f"case {case.op} {case.name!r}: setup() returned no baseline {case.baseline!r}")
    if wanted is not None:
        bad = [n for n in wanted if n not in built]
        if bad:
            why = "; ".join(f"{n}: {case.skipped[n]}" for n in bad if n in case.skipped)
            raise ValueError(
                f"impls names {bad} that case {case.op} {case.name!r} cannot run here; available: "
                f"{', '.join(built)}" + (f" ({why})" if why else "")
            )
    names = [case.baseline] + [n for n in built if n != case.baseline and (wanted is None or n in wanted)]
    skipped = {n: why for n, why in case.skipped.items() if wanted is None or n in wanted}
    env = environment(device)
    dev_name = device_name(device)
    measured: dict[str, tuple[Measurement, dict]] = {}
    busy_before, t0 = busy_seconds(), time.perf_counter()
    for name in names:
        try:
            m = measure(built[name], device, repeats=case.repeats, quick=quick)
        except torch.OutOfMemoryError as exc:
            skipped[name] = f"out of memory: {str(exc).splitlines()[0]}"
            if device.type == "cuda":
                torch.cuda.empty_cache()
            continue
        extra = {"rounds": len(m.times_ms), "calls_per_round": m.calls_per_round}
        if case.metrics is not None:
            extra.update(case.metrics(name, m.last))
        if "bytes_moved" in extra:
            extra["effective_GBps"] = extra["bytes_moved"] / (m.median_ms * 1e6)
        m.last = None  # the output can be large (device memory): not kept past its metrics
        measured[name] = (m, extra)
    del built
    env["others_cpu_cores"] = others_cpu_cores(busy_before, busy_seconds(), time.perf_counter() - t0)
    if not measured:
        raise RuntimeError(f"case {case.op} {case.name!r}: no implementation could be measured: {skipped}")
    if skipped:
        next(iter(measured.values()))[1]["skipped"] = dict(skipped)
    base = measured.get(case.baseline)
    records = []
    for name, (m, extra) in measured.items():
        records.append(Record(
            op=case.op, case=case.name, shape=dict(case.shape), backend=name, device=device.type,
            device_name=dev_name, median_ms=m.median_ms, iqr_ms=m.iqr_ms, peak_mib=m.peak_mib,
            ratio=None if base is None else base[0].median_ms / m.median_ms, baseline=case.baseline,
            extra=extra, env=dict(env),
        ))
    return records


# ---------------------------------------------------------------------------------------
# results files
# ---------------------------------------------------------------------------------------


RESULTS_ENV = "DVTP_RESULTS_DIR"


def results_dir() -> str:
    """Where benchmark records go unless a path is given: ``$DVTP_RESULTS_DIR``, else
    ``$XDG_CACHE_HOME/dvtp/bench``, else ``~/.cache/dvtp/bench`` -- a user folder, so a run
    never changes the records committed under the repository's ``benchmarks/results``
    (`repository_results_dir`); those are written only when asked for by path."""
    if os.environ.get(RESULTS_ENV):
        return os.path.abspath(os.path.expanduser(os.environ[RESULTS_ENV]))
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(os.path.abspath(cache), "dvtp", "bench")


def repository_results_dir() -> str | None:
    """``benchmarks/results`` of the checkout dvtp is imported from (the committed records
    and report), or None outside a checkout."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    folder = os.path.join(root, "benchmarks", "results")
    return folder if os.path.isdir(folder) else None


def results_path(device) -> str:
    """The default results file of a device type: ``<results_dir()>/<cpu|cuda>.jsonl``."""
    return os.path.join(results_dir(), f"{torch.device(device).type}.jsonl")


def append_records(records: Iterable[Record], path: str | None = None) -> None:
    """Append ``records`` to the JSON Lines file ``path`` (default: `results_path` of each
    record's device), creating directories as needed."""
    by_path: dict[str, list[Record]] = {}
    for r in records:
        by_path.setdefault(path or results_path(r.device), []).append(r)
    for p, recs in by_path.items():
        os.makedirs(os.path.dirname(os.path.abspath(p)), exist_ok=True)
        with open(p, "a") as f:
            for r in recs:
                f.write(json.dumps(r.to_dict(), sort_keys=True) + "\n")


def load_records(paths: str | Sequence[str]) -> list[Record]:
    """Every record of the JSON Lines files ``paths`` (one path or several), in file order."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    records = []
    for p in paths:
        with open(p) as f:
            for i, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    records.append(Record.from_dict(json.loads(line)))
                except ValueError as exc:  # json.JSONDecodeError is a ValueError
                    raise ValueError(f"{p}:{i}: {exc}") from None
    return records


def save_json(path: str | None, obj: dict) -> None:
    """Write one JSON document (an end-to-end benchmark's full result) to ``path`` and say
    so; nothing when path is None."""
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            json.dump(obj, f, indent=2)
            f.write("\n")
        print(f"wrote {path}")
