"""dvtp's benchmarks: each op against what a user would otherwise write, one record format.

* `cases(op, device=, quick=)`: the grid of an op ("scores", "select", "compact" -- the
  kernel ops of `dvtp.bench.ops` -- "generate" -- end to end, `dvtp.bench.generate` -- or
  "all"); ``quick`` picks small shapes that run in seconds.
* `run(op, device=, quick=, out=)`: measure a grid (`dvtp.bench.harness.run_case`) and
  append the records to ``out`` (JSON Lines, see `harness.results_path`).
* `report(paths, png=)`: the newest record per (op, case, backend, device) as a Markdown
  table, and a PNG plot of the speedup over the baseline against the sequence length.

Importing this package imports torch and dvtp_kernels only (matplotlib when a PNG is drawn).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from . import ops as kernel_ops
from .harness import (
    Case,
    Measurement,
    Record,
    append_records,
    load_records,
    measure,
    resolve_device,
    repository_results_dir,
    results_dir,
    results_path,
    run_case,
)
from .report import Report

OPS = ("scores", "select", "compact", "generate")

__all__ = [
    "OPS", "cases", "run", "report", "Report", "Case", "Record", "Measurement", "measure",
    "run_case", "append_records", "load_records", "results_dir", "results_path", "repository_results_dir",
]


def _check_op(op: str) -> tuple[str, ...]:
    if op == "all":
        return OPS
    if op not in OPS:
        raise ValueError(f"op must be 'all' or one of {', '.join(repr(o) for o in OPS)}, got {op!r}")
    return (op,)


def _generate_cases(device: torch.device, quick: bool) -> list[Case]:
    try:
        from .generate import cases as generate_cases
    except ModuleNotFoundError as exc:
        if exc.name != f"{__name__}.generate":
            raise
        raise ValueError(
            "op 'generate' needs dvtp.bench.generate (the end-to-end cases), which this dvtp "
            "does not have; the kernel ops 'scores', 'select', 'compact' are available"
        ) from None
    return generate_cases(device, quick)


def cases(op: str = "all", *, device="cpu", quick: bool = False) -> list[Case]:
    """The benchmark cases of ``op`` ("all" or one of `OPS`) on ``device`` ("cpu", "cuda",
    "cuda:N"); ``quick``: small shapes. ValueError for a bad op or device (CUDA where there
    is none) before anything is built."""
    ops_wanted = _check_op(op)
    dev = resolve_device(device)
    if not isinstance(quick, bool):
        raise TypeError(f"quick must be True or False, got {quick!r}")
    found = []
    for name in ops_wanted:
        found += _generate_cases(dev, quick) if name == "generate" else kernel_ops.CASES[name](dev, quick)
    return found


def run(
    op: str = "all",
    *,
    device: str = "cpu",
    quick: bool = False,
    out: str | None = None,
    progress: Callable[[int, int, str], None] | None = None,
) -> list[Record]:
    """Measure every case of ``op`` on ``device`` and return the records.

    ``out``: a JSON Lines file the records are appended to, case by case (a long run keeps
    what it measured); None writes nothing (`results_path(device)` is the usual file).
    ``progress(index, total, label)`` is called before each case (``label``: op, case name,
    and, the first time they apply, the implementations not measured and why) and once with
    ``index == total`` at the end. Torch's thread count is the caller's choice (the records
    say which it was).
    """
    selected = cases(op, device=device, quick=quick)
    dev = resolve_device(device)
    records: list[Record] = []
    told = set()
    for i, case in enumerate(selected):
        if progress is not None:
            label = f"{case.op}: {case.name}"
            new = {(n, why) for n, why in case.skipped.items()} - told  # each reason once per run
            if new:
                label += " (not measured: " + "; ".join(f"{n}: {why}" for n, why in sorted(new)) + ")"
                told |= new
            progress(i, len(selected), label)
        measured = run_case(case, dev, quick=quick)
        if out is not None:
            append_records(measured, out)
        records += measured
    if progress is not None:
        progress(len(selected), len(selected), "done")
    return records


def report(paths: Sequence[str] | None = None, *, png: str | None = None) -> Report:
    """The newest record per (op, case, backend, device) of the JSON Lines files ``paths``
    (default: every ``*.jsonl`` in the user folder `results_dir`) as Markdown, and a PNG at ``png``.

    (This function shadows the ``dvtp.bench.report`` module as a package attribute; the
    module's own names: ``from dvtp.bench.report import ...``.)"""
    from .report import render

    return render(paths, png=png)
