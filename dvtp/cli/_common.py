"""What every ``dvtp`` command shares: options, error handling, output, models, images.

Conventions (docs/cli.md): results on stdout (one JSON document with ``--json``),
progress and errors on stderr; exit 0 = ok, 1 = failure (a failed check, an error while
running), 2 = bad usage (a bad option value, a missing file, a device or backend that
cannot be used here); errors print one line without a traceback unless ``--debug``.
"""
from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import sys
import traceback
from typing import Any, Callable, Iterator

import click

# Exceptions the library raises for bad input: a ValueError (BackendError is one) names
# the argument and what was expected; a missing file or folder.
_USAGE_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError)
CONTEXT = dict(help_option_names=["-h", "--help"], max_content_width=100)


class Failure(click.ClickException):
    """A run that failed (exit code 1): the message goes to stderr as ``Error: ...``."""

    exit_code = 1


def command_options(*, json_output: bool = True) -> Callable:
    """Add ``--quiet``, ``--debug`` (and ``--json``) to a command and map its errors to
    exit codes: library ValueErrors (bad input) -> usage error (2), any other exception ->
    `Failure` (1), with the traceback only under ``--debug``."""

    def decorate(f):
        @functools.wraps(f)
        def wrapper(*args, debug: bool = False, **kwargs):
            try:
                return f(*args, **kwargs)
            except (click.ClickException, click.exceptions.Exit, click.Abort):
                raise
            except _USAGE_ERRORS as err:
                if debug:
                    traceback.print_exc()
                raise click.UsageError(_one_line(err)) from None
            except Exception as err:  # a failure while running: no traceback unless --debug
                if debug:
                    traceback.print_exc()
                hint = "" if debug else " (run with --debug for the traceback)"
                raise Failure(f"{type(err).__name__}: {_one_line(err)}{hint}") from None

        wrapper = click.option("--debug", is_flag=True, help="Print the traceback of an error.")(wrapper)
        wrapper = click.option("--quiet", "-q", is_flag=True,
                               help="No progress bars; print only the essential result.")(wrapper)
        if json_output:
            wrapper = click.option("--json", "as_json", is_flag=True,
                                   help="Print one JSON document on stdout (progress stays on stderr).")(wrapper)
        return wrapper

    return decorate


def _one_line(err: BaseException) -> str:
    text = str(err).strip()
    if isinstance(err, FileNotFoundError) and err.filename and err.filename not in text:
        text = f"{text}: {err.filename}"
    return text or type(err).__name__


# ---------------------------------------------------------------------------------------
# output
# ---------------------------------------------------------------------------------------


def stdout_console():
    """A rich console on stdout; 160 columns when stdout is not a terminal (tables stay
    readable in logs and pipes)."""
    from rich.console import Console

    console = Console(highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(highlight=False, width=160)
    return console


def interactive_stderr() -> bool:
    """Progress bars only on a terminal: in logs they would print stray lines."""
    return sys.stderr.isatty()


@contextlib.contextmanager
def progress_bar(description: str, *, quiet: bool) -> Iterator[Callable[[int, int, str], None]]:
    """A rich progress bar on stderr; yields ``update(done, total, label)``. Disabled with
    ``quiet`` or when stderr is not a terminal."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    disable = quiet or not interactive_stderr()
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), TextColumn("{task.fields[label]}"),
                        console=Console(stderr=True), transient=True, disable=disable)
    with progress:
        task = progress.add_task(description, total=None, label="")

        def update(done: int, total: int, label: str = "") -> None:
            progress.update(task, completed=done, total=total, label=label[:60])

        yield update


@contextlib.contextmanager
def status(message: str, *, quiet: bool) -> Iterator[None]:
    """A spinner on stderr for a step with no natural count (loading a model)."""
    if quiet or not interactive_stderr():
        yield
        return
    from rich.console import Console

    with Console(stderr=True).status(message):
        yield


def jsonable(obj: Any) -> Any:
    """``obj`` with tuples as lists, non-finite floats as "inf" / "-inf" / "nan" strings
    (strict JSON has no such numbers) and tensors / numpy scalars as Python values."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, bool) or obj is None or isinstance(obj, (int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else str(obj)
    if hasattr(obj, "tolist"):  # torch tensors, numpy arrays and scalars
        return jsonable(obj.tolist())
    return str(obj)


def emit_json(doc: Any) -> None:
    click.echo(json.dumps(jsonable(doc), indent=2, allow_nan=False))


# ---------------------------------------------------------------------------------------
# devices, models, images
# ---------------------------------------------------------------------------------------


def resolve_device(device: str | None, param: str = "--device") -> str:
    """``device`` checked ("cpu", "cuda", "cuda:N"); None -> "cuda" when a GPU is visible,
    else "cpu". A CUDA device that is not there is a usage error."""
    import torch

    from dvtp.devices import resolve_device as resolve

    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        return str(resolve(device))
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint=param) from None


DTYPES = ("auto", "float32", "bfloat16", "float16")


def load_model(spec: str, *, device: str, dtype: str, quiet: bool):
    """``spec`` "tiny" -> `dvtp.vlm.tiny_llada_v(seed=0)` (float32 unless ``dtype``);
    a folder -> `dvtp.load(spec, dtype=..., device=...)`."""
    import torch

    if spec == "tiny":
        from dvtp.vlm import tiny_llada_v

        with status("building the tiny model", quiet=quiet):
            model = tiny_llada_v(seed=0, dtype=None if dtype == "auto" else getattr(torch, dtype))
            return model.to(device)
    if not os.path.isdir(spec):
        raise click.BadParameter(
            f"{spec!r} is not a folder: pass a local LLaDA-V checkpoint folder or 'tiny' "
            "(the built-in model with random weights)", param_hint="--model")
    import dvtp

    with status(f"loading {spec}", quiet=quiet):
        return dvtp.load(spec, dtype=None if dtype == "auto" else dtype, device=device)


def model_name(spec: str) -> str:
    return "tiny LLaDA-V (random weights)" if spec == "tiny" else os.path.basename(os.path.normpath(spec))


SYNTHETIC = "synthetic"


def read_image(spec: str, param: str = "--image"):
    """An ``--image`` value as an RGB PIL image: a file, or ``synthetic[:WxH]`` for
    `dvtp.vlm.images.synthetic_photo` (default 1024x768)."""
    from dvtp.vlm.images import load_image, synthetic_photo

    if spec == SYNTHETIC or spec.startswith(SYNTHETIC + ":"):
        size = spec[len(SYNTHETIC) + 1:] or "1024x768"
        try:
            width, height = (int(v) for v in size.lower().split("x"))
        except ValueError:
            width = height = 0
        if not (1 <= width <= 8192 and 1 <= height <= 8192):
            raise click.BadParameter(f"{spec!r}: expected synthetic or synthetic:WxH with 1 <= W, H <= 8192 "
                                     "(e.g. synthetic:1024x768)", param_hint=param)
        return load_image(synthetic_photo(width, height))
    return load_image(spec, name=f"{param} {spec}")

