"""``dvtp info``, ``dvtp selftest`` and ``dvtp bench``: the kernels' build, checks and timings."""
from __future__ import annotations

import math
import os
import platform

import click

from ._choices import BACKENDS, BENCH_OPS, DEVICES
from ._common import (Failure, OptionError, check_output_path, command, command_options, emit_json, error_document,
                      given, progress_bar, stdout_console)


# ---------------------------------------------------------------------------------------
# info
# ---------------------------------------------------------------------------------------


def info_json() -> dict:
    """What ``python -m dvtp_kernels.info`` prints, as a dict."""
    import torch

    import dvtp
    import dvtp_kernels
    from dvtp_kernels import _extension, dispatch
    from dvtp_kernels import info as kinfo

    problem = _extension.load()
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    env_value, env_invalid = kinfo.env_backend()
    devices = {}
    for device in DEVICES:
        entry = dict(default_order=list(dispatch.DEFAULT_ORDER[device]))
        if device == "cuda" and not torch.cuda.is_available():
            entry.update(available=False, reason=dispatch.no_cuda_reason())
            devices[device] = entry
            continue
        backends, usable = {}, {}
        for backend, ops in kinfo.usability(device).items():
            reasons = kinfo._backend_reasons(backend, device, ops, problem)
            usable[backend] = not reasons
            backends[backend] = dict(usable=not reasons, reasons=reasons)
        entry.update(available=True, backends=backends, default=kinfo._default_choice(device, usable))
        devices[device] = entry
    import transformers

    return dict(
        versions=dict(dvtp=dvtp.__version__, dvtp_kernels=dvtp_kernels.__version__,
                      python=platform.python_version(), torch=torch.__version__, torch_cuda=torch.version.cuda,
                      triton=triton_version, transformers=transformers.__version__),
        build=kinfo.build_info(),
        extension=dict(loaded=problem is None, problem=problem,
                       hint=None if problem is None else _extension.BUILD_HINT),
        triton_interpret=os.environ.get("TRITON_INTERPRET", "0"),
        cuda_device=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        dvtp_backend=dict(value=env_value, invalid=env_invalid),
        devices=devices,
    )


@command("info", short_help="Versions, compiled backends, what is usable here and why not.")
@command_options()
def info(quiet: bool, as_json: bool) -> None:
    """Versions, the compiled backends, and which backends are usable here and why not.

    The text is what `python -m dvtp_kernels.info` prints, after the versions of dvtp and
    its stack; --json gives the same as one document.
    """
    if as_json:
        emit_json(info_json())
        return
    import torch
    import transformers

    import dvtp
    from dvtp_kernels import info as kinfo

    click.echo(f"dvtp {dvtp.__version__} (torch {torch.__version__}, transformers {transformers.__version__})")
    kinfo.main()


# ---------------------------------------------------------------------------------------
# selftest
# ---------------------------------------------------------------------------------------


def _error_text(value: float) -> str:
    return "nan" if math.isnan(value) else f"{value:.3g}"


@command("selftest", short_help="Check every usable backend against the reference (exit 1 on a failure).")
@click.option("--device", type=click.Choice(DEVICES), default="cpu", show_default=True,
              help="Where the inputs live.")
@click.option("--quick", is_flag=True, help="A small subset of the grid (seconds on CPU).")
@click.option("--backend", "backends", multiple=True, type=click.Choice(BACKENDS),
              help="Check only this backend (repeatable); naming one that cannot run here fails.")
@click.option("--seed", type=int, default=0, show_default=True, help="Base seed of the random inputs.")
@command_options()
def selftest(device: str, quick: bool, backends: tuple[str, ...], seed: int, quiet: bool, as_json: bool) -> None:
    """Check every usable backend against the reference.

    Runs the three kernel ops of every usable backend on fresh random inputs over a grid
    of shapes and dtypes against the float64 PyTorch reference, and checks that the
    sampler with keep ratio 1.0 reproduces unpruned generation. Prints a pass/fail table
    with the worst error per case; exits 1 on any failure.
    """
    from dvtp import selftest as st

    with progress_bar("selftest", quiet=quiet or as_json) as update:
        report = st.run(device, quick=quick, backends=list(backends) or None, seed=seed, progress=update)
    failed = [r for r in report.results if not r.passed]
    failure = None if report.ok else Failure("selftest failed: " + "; ".join(_why_failed(report, failed)))
    if as_json:  # one document: the report, with the error in it when the run failed
        doc = report.to_json()
        if failure is not None:
            doc.update(error_document(failure))
        emit_json(doc)
    else:
        console = stdout_console()
        rows = failed if quiet else report.results
        if rows:
            from rich import box
            from rich.markup import escape
            from rich.table import Table

            table = Table(title=f"dvtp selftest on {report.device}" + (" (quick)" if quick else ""),
                          box=box.SIMPLE_HEAD)
            for name, justify in (("op", "left"), ("backend", "left"), ("dtype", "left"), ("case", "left"),
                                  ("worst error", "right"), ("tolerance", "right"), ("result", "left")):
                table.add_column(name, justify=justify, overflow="fold")
            for r in rows:  # labels hold brackets ("[B, N, 3]"): escaped, not read as markup
                result = "pass" if r.passed else f"[bold red]FAIL[/] {escape(r.detail)}"
                table.add_row(r.op, r.backend, r.dtype, escape(r.case), _error_text(r.worst_error),
                              _error_text(r.tolerance), result)
            console.print(table)
        if not quiet:
            for backend, why in report.unusable.items():
                console.print(f"not run: {backend}: {why}", markup=False)
        ran = sorted({r.backend for r in report.results})
        console.print(f"{len(report.results)} cases, {len(failed)} failed, backends run: "
                      f"{', '.join(ran) or 'none'}; {report.seconds:.1f} s", markup=False)
    if failure is not None:
        raise failure


def _why_failed(report, failed) -> list[str]:
    why = []
    if failed:
        why.append(f"{len(failed)} of {len(report.results)} cases failed")
    missing = [b for b in report.requested if b in report.unusable]
    if missing:
        why.append(f"requested backends cannot run on {report.device}: {', '.join(missing)}")
    if not any(r.backend != "reference" for r in report.results):
        why.append("no backend other than the reference could run, so nothing was checked")
    return why


# ---------------------------------------------------------------------------------------
# bench
# ---------------------------------------------------------------------------------------


def _default_path(path: str, option: str, picture: str | None = None) -> str:
    """A default output file in the user folder, its folder created, checked as a given one."""
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
    except OSError as err:
        raise OptionError(f"{option} (default {path}): cannot create its folder ({err.strerror or err}); "
                          f"give {option} or set $DVTP_RESULTS_DIR", option) from None
    return check_output_path(path, option, picture=picture)


def _num(x) -> str:
    return "n/a" if x is None else f"{x:.3g}"


@command("bench", short_help="Run the benchmarks, or render their report.")
@click.option("--op", type=click.Choice(BENCH_OPS), default="all",
              show_default=True, help="Which benchmarks: one op's grid, or all.")
@click.option("--device", type=click.Choice(DEVICES), default="cpu", show_default=True, help="Where they run.")
@click.option("--quick", is_flag=True, help="Small shapes that run in seconds.")
@click.option("--threads", type=click.IntRange(1), default=None, help="torch threads (default: torch's).")
@click.option("--out", default=None, metavar="FILE",
              help="JSON Lines file the records are appended to (default: <device>.jsonl in the user folder, "
                   "$DVTP_RESULTS_DIR or ~/.cache/dvtp/bench; with --quick nothing is saved unless --out is given).")
@click.option("--report", is_flag=True,
              help="Measure nothing: render the latest records as a Markdown table and a PNG plot.")
@click.option("--records", "record_files", multiple=True, metavar="FILE",
              help="With --report: a records file (repeatable; default: every *.jsonl in the user folder).")
@click.option("--png", default=None, metavar="FILE",
              help="With --report: where the plot goes (default: report.png in the user folder).")
@command_options()
def bench(op, device, quick, threads, out, report, record_files, png, quiet, as_json):
    """Run the benchmarks (with a progress bar) and print the table.

    Each op is timed against what a user would otherwise write (eager attention maps,
    torch.topk, index_select; `generate`: end to end, pruned vs unpruned). With --report
    nothing runs: the newest record per op, case, backend and platform is rendered as
    Markdown (stdout) and a PNG.

    Records and the plot go to a user folder ($DVTP_RESULTS_DIR, else
    $XDG_CACHE_HOME/dvtp/bench or ~/.cache/dvtp/bench) unless a path is given: the
    repository's benchmarks/results are written only when named (--out, --png).
    """
    # every path the run will write or read checked before anything is measured
    if report:
        for name, option in (("threads", "--threads"), ("quick", "--quick"), ("out", "--out"), ("op", "--op"),
                             ("device", "--device")):
            if given(name):
                raise OptionError(f"--report renders saved records: {option} does not apply", option)
        for path in record_files:
            if not os.path.isfile(path):
                raise OptionError(f"--records {path}: no such file", "--records")
        if png is not None:
            check_output_path(png, "--png", picture="matplotlib")
    else:
        if record_files or png is not None:
            option = "--records" if record_files else "--png"
            raise OptionError(f"{option} goes with --report", option)
        if out is not None:
            check_output_path(out, "--out")

    from dvtp import bench as bench_lib

    if report:
        if png is None:
            png = _default_path(os.path.join(bench_lib.results_dir(), "report.png"), "--png", picture="matplotlib")
        rendered = bench_lib.report(list(record_files) or None, png=png)
        if as_json:
            emit_json(dict(markdown=rendered.markdown, png=rendered.png))
        else:
            click.echo(rendered.markdown, nl=False)
            if not quiet:
                click.echo(f"\nplot: {rendered.png}", err=True)
        return
    if out is None and not quick:
        out = _default_path(bench_lib.results_path(device), "--out")
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    with progress_bar(f"bench {op}", quiet=quiet or as_json) as update:
        records = bench_lib.run(op, device=device, quick=quick, out=out, progress=update)
    if as_json:
        emit_json(dict(out=out, records=[r.to_dict() for r in records]))
        return
    if not quiet:
        from rich import box
        from rich.markup import escape
        from rich.table import Table

        table = Table(title=f"dvtp bench {op} on {device}" + (" (quick)" if quick else ""), box=box.SIMPLE_HEAD)
        for name, justify in (("op", "left"), ("case", "left"), ("backend", "left"), ("median ms", "right"),
                              ("IQR ms", "right"), ("peak MiB", "right"), ("speedup", "right")):
            table.add_column(name, justify=justify, overflow="fold")
        for r in records:
            backend = f"{r.backend} (baseline)" if r.backend == r.baseline else r.backend
            table.add_row(r.op, escape(r.case), backend, _num(r.median_ms), _num(r.iqr_ms), _num(r.peak_mib),
                          "n/a" if r.ratio is None else f"{r.ratio:.3g}x", end_section=False)
        stdout_console().print(table)
    click.echo(f"{len(records)} records" + (f" appended to {out}" if out else " (not saved)"))
