"""What every ``dvtp`` command shares: options, error handling, output, models, images.

Conventions (docs/cli.md): results on stdout (one JSON document with ``--json``),
progress and errors on stderr; exit 0 = ok, 1 = failure (a failed check, an error while
running), 2 = bad usage (a bad option value, a missing file, a device or backend that
cannot be used here); an error is one ``Error: ...`` line without a traceback unless
``--debug``, and with ``--json`` also an ``{"error": ...}`` document on stdout.

This module imports click only: torch, transformers, PIL and matplotlib are imported
inside the functions that need them, so ``--help`` and usage errors start fast.
"""
from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import re
import sys
import traceback
from typing import Any, Callable, Iterator

import click

# Exceptions the library raises for bad input: a ValueError (BackendError is one) names
# the argument and what was expected; a missing file or folder.
_USAGE_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError)
_OPTION = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*)")


class OptionError(click.UsageError):
    """A usage error (exit code 2) about ``option`` (e.g. "--out"), whose message names it."""

    def __init__(self, message: str, option: str | None = None):
        super().__init__(message)
        self.option = option


class Failure(click.ClickException):
    """A run that failed (exit code 1): the message goes to stderr as ``Error: ...``."""

    exit_code = 1


def error_option(err: click.ClickException) -> str | None:
    """The option a usage error is about ("--keep-ratio"), or None: the option click's own
    errors carry, else the first ``--option`` the message names."""
    option = getattr(err, "option", None)
    if option is None and isinstance(err, (click.NoSuchOption, click.BadOptionUsage)):
        option = err.option_name
    if option is None and isinstance(err, click.BadParameter):
        hint = err.param_hint
        if isinstance(hint, (list, tuple)):
            hint = hint[0] if hint else None
        if hint is None and err.param is not None and err.param.opts:
            hint = max(err.param.opts, key=len)  # the long name
        option = hint
    if option is None and isinstance(err, click.UsageError):
        found = _OPTION.search(err.format_message())
        option = found.group(1) if found else None
    return option.strip("'\"") if isinstance(option, str) else None


def error_document(err: click.ClickException) -> dict:
    """The ``--json`` form of an error (docs/cli.md)."""
    usage = err.exit_code == 2
    return {"error": {"type": "usage" if usage else "failure", "message": err.format_message(),
                      "option": error_option(err) if usage else None, "exit_code": err.exit_code}}


_emitted = {"json": False}  # whether this run has already printed its JSON document


def _json_requested(args: list[str]) -> bool:
    return "--json" in (args[: args.index("--")] if "--" in args else args)


class _ErrorReporting:
    """`main` of the group and of each command: click's own errors (a bad option value, a
    missing required option) and the commands' are reported alike -- one ``Error: ...``
    line on stderr (no usage text: --help shows it), plus the error document on stdout
    under ``--json`` -- with exit code 2 for bad usage and 1 for a failure."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        args = list(sys.argv[1:] if args is None else args)
        _emitted["json"] = False
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.ClickException as err:
            if not standalone_mode:
                raise
            click.echo(f"Error: {err.format_message()}", err=True)
            if _json_requested(args) and not _emitted["json"]:
                emit_json(error_document(err))
            sys.exit(err.exit_code)
        except click.Abort:
            if not standalone_mode:
                raise
            click.echo("Aborted!", err=True)
            sys.exit(1)
        if not standalone_mode:
            return rv
        sys.exit(rv if isinstance(rv, int) else 0)  # an int: the code of an explicit ctx.exit


class Command(_ErrorReporting, click.Command):
    pass


class Group(_ErrorReporting, click.Group):
    command_class = Command


CONTEXT = dict(help_option_names=["-h", "--help"], max_content_width=100)


def command(name: str, **kwargs) -> Callable:
    """``click.command`` with dvtp's error reporting and context settings."""
    return click.command(name, cls=Command, context_settings=CONTEXT, **kwargs)


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
    text = " ".join(str(err).split())
    if isinstance(err, FileNotFoundError) and err.filename and err.filename not in text:
        text = f"{text}: {err.filename}"
    return text or type(err).__name__


def given(name: str) -> bool:
    """Whether the current command's parameter ``name`` was given (not its default)."""
    from click.core import ParameterSource

    source = click.get_current_context().get_parameter_source(name)
    return source not in (None, ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP)


# ---------------------------------------------------------------------------------------
# parameter types
# ---------------------------------------------------------------------------------------


class Number(click.ParamType):
    """A finite float (NaN and inf are refused: a range check alone lets NaN through),
    optionally within ``low`` / ``high`` (``open_low``: ``> low`` rather than ``>=``)."""

    name = "float"

    def __init__(self, low: float | None = None, high: float | None = None, *, open_low: bool = False):
        self.low, self.high, self.open_low = low, high, open_low

    def _range(self) -> str:
        parts = []
        if self.low is not None:
            parts.append(f"{'>' if self.open_low else '>='} {self.low:g}")
        if self.high is not None:
            parts.append(f"<= {self.high:g}")
        return " and ".join(parts)

    def convert(self, value, param, ctx):
        if isinstance(value, float) and math.isfinite(value):
            number = value
        else:
            try:
                number = float(value)
            except (TypeError, ValueError):
                self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number" + (f" ({self._range()})" if self._range() else ""),
                      param, ctx)
        low_bad = self.low is not None and (number <= self.low if self.open_low else number < self.low)
        if low_bad or (self.high is not None and number > self.high):
            self.fail(f"{value!r} is not {self._range()}", param, ctx)
        return number


class Text(click.ParamType):
    """A string with something besides whitespace in it."""

    name = "text"

    def convert(self, value, param, ctx):
        if not isinstance(value, str) or not value.strip():
            self.fail("must not be empty", param, ctx)
        return value


KEEP_RATIO = Number(0.0, 1.0, open_low=True)

# check_generation_args' argument names -> the options that set them (its messages then
# name the options: "--gen-length 7 must be a multiple of --block-length 4")
GENERATION_NAMES = {
    "gen_length": "--gen-length", "steps": "--steps", "block_length": "--block-length",
    "temperature": "--temperature", "cache": "--cache", "refresh": "--refresh",
    "threshold": "--threshold", "factor": "--factor", "pruning.keep_ratio": "--keep-ratio",
}


def check_schedule(schedule: dict, pruning, *, names: dict | None = None, steps_default: str = "") -> None:
    """The generation schedule checked before any model loads, its messages naming the
    options. Pruning scores the first denoising step and prunes after it, so it needs a
    step after that one: checked here because the command line has no prune-step option
    the library's message could name. ``steps_default``: what --steps defaults to, when
    it was not given (said in that message)."""
    names = {**GENERATION_NAMES, **(names or {})}
    if pruning is not None and schedule["steps"] < 2:
        raise OptionError(
            f"{names['pruning.keep_ratio']} prunes after the first denoising step, so it needs at least 2 steps, "
            f"got {names['steps']} {schedule['steps']}" + (f" ({names['steps']} defaults to {steps_default})"
                                                            if steps_default else ""), names["steps"])
    from dvtp.generation.request import check_generation_args

    check_generation_args(**schedule, remasking="low_confidence", pruning=pruning, names=names)


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
    """Print the run's one JSON document on stdout."""
    click.echo(json.dumps(jsonable(doc), indent=2, allow_nan=False))
    _emitted["json"] = True


def json_line(doc: Any) -> str:
    """``doc`` as one line of JSON Lines (strict JSON, as `emit_json`)."""
    return json.dumps(jsonable(doc), allow_nan=False, ensure_ascii=False)


# ---------------------------------------------------------------------------------------
# output files
# ---------------------------------------------------------------------------------------


def _picture_written(ext: str, kind: str) -> bool:
    """Whether the writer of ``kind`` saves a file ending in ``ext``: "pil" (Pillow, an RGB
    picture) or "matplotlib" (Figure.savefig)."""
    if kind == "pil":
        from dvtp.paths import pil_writes_rgb

        return pil_writes_rgb(ext)
    from matplotlib.backend_bases import FigureCanvasBase

    return ext.lstrip(".") in FigureCanvasBase.get_supported_filetypes()


def check_output_path(path: str, option: str, *, picture: str | None = None) -> str:
    """``path``, a file a command will write, checked before anything runs: not a folder,
    in an existing folder where a file can be created (tried: permission bits say nothing
    for root or in /proc), and with ``picture`` ("pil" or "matplotlib") an extension that
    writer can save. A usage error naming ``option`` otherwise."""

    def bad(why: str):
        raise OptionError(f"{option} {path}: {why}", option)

    from dvtp.paths import unwritable_reason

    problem = unwritable_reason(path)
    if problem is not None:
        bad(problem)
    if picture is not None:
        ext = os.path.splitext(path)[1].lower()
        if not ext or not _picture_written(ext, picture):
            examples = ".png, .jpg, .webp" if picture == "pil" else ".png, .pdf, .svg"
            bad(f"{'no' if not ext else 'the'} file extension {ext!r} is not one that can be written "
                f"(e.g. {examples})")
    return path


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
        return str(resolve(device, name=param))
    except ValueError as err:
        raise OptionError(str(err), param) from None


def check_model_spec(spec: str, param: str = "--model") -> None:
    """``--model`` checked without loading anything: "tiny" or an existing folder."""
    if spec != "tiny" and not os.path.isdir(spec):
        raise click.BadParameter(
            f"{spec!r} is not a folder: pass a local LLaDA-V checkpoint folder or 'tiny' "
            "(the built-in model with random weights)", param_hint=param)


def load_model(spec: str, *, device: str, dtype: str, quiet: bool):
    """``spec`` "tiny" -> `dvtp.vlm.tiny_llada_v(seed=0)` (float32 unless ``dtype``);
    a folder -> `dvtp.load(spec, dtype=..., device=...)`, with transformers' loading bar
    only where our own progress shows (not under --quiet, not when stderr is a pipe)."""
    check_model_spec(spec)
    if spec == "tiny":
        from dvtp.vlm import tiny_llada_v

        with status("building the tiny model", quiet=quiet):
            return tiny_llada_v(seed=0, dtype=None if dtype == "auto" else dtype, device=device)
    import dvtp

    with status(f"loading {spec}", quiet=quiet):
        return dvtp.load(spec, dtype=None if dtype == "auto" else dtype, device=device,
                         progress=not quiet and interactive_stderr())


def model_dtype(model) -> str:
    """The dtype the model's weights are in ("float32", "bfloat16", ...)."""
    param = next(iter(model.parameters()), None)
    return "unknown" if param is None else str(param.dtype).removeprefix("torch.")


def model_name(spec: str) -> str:
    return "tiny LLaDA-V (random weights)" if spec == "tiny" else os.path.basename(os.path.normpath(spec))


SYNTHETIC = "synthetic"


def check_image_spec(spec: str, param: str = "--image") -> tuple[int, int] | None:
    """An ``--image`` value checked without reading it (nor importing torch): a file that
    exists, or ``synthetic[:WxH]`` -> its (width, height); None for a file."""
    if spec == SYNTHETIC or spec.startswith(SYNTHETIC + ":"):
        size = spec[len(SYNTHETIC) + 1:] or "1024x768"
        try:
            width, height = (int(v) for v in size.lower().split("x"))
        except ValueError:
            width = height = 0
        if not (1 <= width <= 8192 and 1 <= height <= 8192):
            raise click.BadParameter(f"{spec!r}: expected synthetic or synthetic:WxH with 1 <= W, H <= 8192 "
                                     "(e.g. synthetic:1024x768)", param_hint=param)
        return width, height
    if not os.path.exists(spec):
        raise click.BadParameter(f"{spec}: no such file", param_hint=param)
    if os.path.isdir(spec):
        raise click.BadParameter(f"{spec}: is a folder, not an image file", param_hint=param)
    from PIL import Image, UnidentifiedImageError  # the header only: cheap, and no torch

    try:
        with Image.open(spec):
            pass
    except (UnidentifiedImageError, OSError) as err:
        raise click.BadParameter(f"{spec}: not an image file Pillow can read ({_one_line(err)})",
                                 param_hint=param) from None
    return None


def read_image(spec: str, param: str = "--image"):
    """An ``--image`` value as an RGB PIL image: a file, or ``synthetic[:WxH]`` for
    `dvtp.vlm.images.synthetic_photo` (default 1024x768)."""
    size = check_image_spec(spec, param)
    from dvtp.vlm.images import load_image, synthetic_photo

    if size is not None:
        return load_image(synthetic_photo(*size))
    return load_image(spec, name=f"{param} {spec}")
