"""Benchmark records -> a Markdown table and a PNG plot (matplotlib, imported when drawing).

"Latest records": the newest record (by ``env["timestamp"]``, then file order) per op,
case, backend and platform, a platform being the device type, its name and, on CPU, the
thread count -- so runs on different machines or thread counts are never mixed in a row.
"""
from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from dataclasses import dataclass

from .harness import Record, load_records, repository_results_dir, results_dir

OP_ORDER = ("scores", "select", "compact", "generate")


@dataclass
class Report:
    """``markdown``: one table per platform; ``png``: the path of the plot, None if none was asked."""

    markdown: str
    png: str | None


def platform_of(r: Record) -> tuple:
    return (r.device, r.device_name, r.env.get("threads") if r.device == "cpu" else None)


def latest(records: Sequence[Record]) -> list[Record]:
    """The newest record per (op, case, backend, platform), in first-appearance order."""
    newest: dict[tuple, tuple[tuple[str, int], Record]] = {}
    for i, r in enumerate(records):
        key = (r.op, r.case, r.backend, platform_of(r))
        stamp = (r.env.get("timestamp") or "", i)  # ISO UTC stamps sort in time order
        if key not in newest or stamp >= newest[key][0]:
            newest[key] = (stamp, r)
    first: dict[tuple, int] = {}
    for i, r in enumerate(records):
        first.setdefault((r.op, r.case, r.backend, platform_of(r)), i)
    return [newest[k][1] for k in sorted(newest, key=first.__getitem__)]


def _ordered(records: Sequence[Record]) -> list[Record]:
    """Grouped by platform, op (OP_ORDER first), case; the baseline first within a case."""
    order = {}
    for i, r in enumerate(records):
        order.setdefault(("platform", platform_of(r)), i)
        order.setdefault(("case", platform_of(r), r.op, r.case), i)
    op_rank = {op: i for i, op in enumerate(OP_ORDER)}
    return sorted(
        records,
        key=lambda r: (order[("platform", platform_of(r))], op_rank.get(r.op, len(OP_ORDER)), r.op,
                       order[("case", platform_of(r), r.op, r.case)], r.backend != r.baseline),
    )


def _num(x: float | None) -> str:
    if x is None:
        return "n/a"
    if x >= 100:
        return f"{x:.0f}"
    if x >= 10:
        return f"{x:.1f}"
    if x >= 1:
        return f"{x:.2f}"
    return f"{x:.3f}"


def _platform_title(device: str, name: str, threads, records: Sequence[Record]) -> str:
    envs = [r.env for r in records]
    torch_versions = sorted({e.get("torch") for e in envs if e.get("torch")})
    commits = sorted({(e.get("commit") or "no commit")[:10] + (" + local changes" if e.get("dirty") else "") for e in envs})
    days = sorted({(e.get("timestamp") or "")[:10] for e in envs} - {""})
    loads = [e["loadavg_1m"] for e in envs if e.get("loadavg_1m") is not None]
    where = f"{device}: {name}" + (f", {threads} threads" if threads is not None else "")
    facts = [f"torch {', '.join(torch_versions)}", f"commit {', '.join(commits)}"]
    if days:
        facts.append(f"measured {days[0]}" + (f" to {days[-1]}" if days[-1] != days[0] else ""))
    for label, values in (("1-min load", loads),
                          ("cores busy with other processes", [e["others_cpu_cores"] for e in envs
                                                               if e.get("others_cpu_cores") is not None])):
        if values:
            low, high = f"{min(values):.1f}", f"{max(values):.1f}"
            facts.append(f"{label} {low}" + (f" to {high}" if high != low else ""))
    return f"**{where}** ({'; '.join(facts)})"


def markdown(records: Sequence[Record]) -> str:
    """One table per platform: op, case, backend, median / IQR ms, peak MiB, speedup."""
    rows = _ordered(records)
    parts = []
    platforms = []
    for r in rows:
        if platform_of(r) not in platforms:
            platforms.append(platform_of(r))
    for plat in platforms:
        recs = [r for r in rows if platform_of(r) == plat]
        lines = [_platform_title(*plat, recs), "",
                 "| op | case | backend | median ms | IQR ms | peak MiB | speedup vs baseline |",
                 "|---|---|---|---:|---:|---:|---:|"]
        previous = None
        skipped: dict[tuple[str, str], list[tuple[str, str]]] = {}
        for r in recs:
            same = previous == (r.op, r.case)
            previous = (r.op, r.case)
            backend = f"{r.backend} (baseline)" if r.backend == r.baseline else r.backend
            speedup = "n/a" if r.ratio is None else f"{_num(r.ratio)}x"
            lines.append(f"| {'' if same else r.op} | {'' if same else r.case} | {backend} | {_num(r.median_ms)} | "
                         f"{_num(r.iqr_ms)} | {_num(r.peak_mib)} | {speedup} |")
            for name, why in r.extra.get("skipped", {}).items():
                skipped.setdefault((name, why), []).append((r.op, r.case))
        notes = []
        for (name, why), where in skipped.items():
            # per op when every case of the op skipped it (an unusable backend), else per case
            ops = sorted({op for op, _ in where})
            whole = all(sum(o == op for o, _ in where) == len({r.case for r in recs if r.op == op}) for op in ops)
            scope = ", ".join(ops) if whole else ", ".join(f"{op} {case}" for op, case in where)
            notes.append(f"- not measured: {name} ({scope}): {why}")
        parts.append("\n".join(lines + ([""] + notes if notes else [])))
    return "\n\n".join(parts) + "\n"


def _series(records: Sequence[Record]) -> dict[tuple, list[Record]]:
    """Records of one op on one platform with an "N" -> lines: (backend, the shape values
    that vary independently of N) -> records. A shape key taking one value per N (the
    visual-token count paired with each N) goes with N and does not split lines."""
    with_n = [r for r in records if isinstance(r.shape.get("N"), (int, float))]
    keys = sorted({k for r in with_n for k in r.shape} - {"N"})
    split = []
    for k in keys:
        per_n: dict = {}
        values = set()
        for r in with_n:
            v = repr(r.shape.get(k))
            per_n.setdefault(r.shape["N"], set()).add(v)
            values.add(v)
        if len(values) > 1 and any(len(v) > 1 for v in per_n.values()):
            split.append(k)
    lines: dict[tuple, list[Record]] = {}
    for r in with_n:
        label = tuple((k, r.shape.get(k)) for k in split)
        lines.setdefault((r.backend, label), []).append(r)
    return lines


def plot(records: Sequence[Record], path: str) -> None:
    """Speedup over the baseline against N, one panel per (platform, op), one line per
    backend and shape setting measured at several N (the table has the other cases);
    log-log axes, the baseline at 1."""
    # the Figure API, not pyplot: no global backend state; savefig draws with Agg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter, NullLocator

    rows = _ordered([r for r in records if r.ratio is not None and "N" in r.shape])
    panels: list[tuple[tuple, str]] = []
    for r in rows:
        if (platform_of(r), r.op) not in panels:
            panels.append((platform_of(r), r.op))
    if not panels:
        raise ValueError("no record with a sequence length (shape['N']) and a ratio to plot")
    cols = min(len(panels), 3)
    nrows = -(-len(panels) // cols)
    fig = Figure(figsize=(5.2 * cols, 4.0 * nrows), layout="constrained")
    axes = fig.subplots(nrows, cols, squeeze=False)
    colours = {}
    for i, (plat, op) in enumerate(panels):
        ax = axes[i // cols][i % cols]
        recs = [r for r in rows if platform_of(r) == plat and r.op == op]
        baseline = recs[0].baseline
        ax.axhline(1.0, color="0.5", linestyle="--", linewidth=1, label=f"{baseline} (baseline)")
        series = {k: v for k, v in _series(recs).items() if k[0] != baseline}
        # lines over N where a setting has several; lone points only when nothing else
        lines = {k: v for k, v in series.items() if len({r.shape["N"] for r in v}) > 1} or series
        varying = [i for i in range(max((len(k[1]) for k in lines), default=0))
                   if len({k[1][i] for k in lines}) > 1]
        markers = "osD^v<>p*h"
        for j, ((backend, setting), pts) in enumerate(sorted(lines.items(), key=lambda kv: str(kv[0]))):
            pts = sorted(pts, key=lambda r: r.shape["N"])
            colour = colours.setdefault(backend, f"C{len(colours) % 10}")
            label = backend + "".join(f" {setting[i][0]}={setting[i][1]}" for i in varying)
            ax.plot([r.shape["N"] for r in pts], [r.ratio for r in pts], color=colour,
                    marker=markers[j % len(markers)], linestyle="-" if len(pts) > 1 else "none", label=label)
        _, name, threads = plat
        ax.set_title(f"{op} vs {baseline}\n{name}" + (f", {threads} threads" if threads else ""), fontsize=9)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        n_values = sorted({r.shape["N"] for pts in lines.values() for r in pts})
        ax.set_xticks(n_values, [str(n) for n in n_values])  # the measured lengths, not powers of 2
        ax.xaxis.set_minor_locator(NullLocator())
        ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("sequence length N")
        ax.set_ylabel(f"speedup over {baseline}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    for k in range(len(panels), nrows * cols):
        axes[k // cols][k % cols].set_visible(False)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)


def render(paths: Sequence[str] | str | None = None, *, png: str | None = None) -> Report:
    """`Report` of the latest records of ``paths`` (default: ``results_dir()/*.jsonl``)."""
    if paths is None:
        paths = sorted(glob.glob(os.path.join(results_dir(), "*.jsonl")))
        if not paths:
            committed = repository_results_dir()
            hint = "" if committed is None else (
                f"; the repository's records: --records {os.path.join(os.path.relpath(committed), 'cpu.jsonl')}")
            raise ValueError(f"no benchmark records: no *.jsonl file in {results_dir()} (run `dvtp bench` first"
                             f"{hint})")
    elif isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise ValueError(f"paths names files that do not exist: {', '.join(map(str, missing))}")
    records = latest(load_records(list(paths)))
    if not records:
        raise ValueError(f"no benchmark records in {', '.join(map(str, paths))}")
    if png is not None:
        plot(records, png)
    return Report(markdown(records), png)
