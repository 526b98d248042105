"""``dvtp demo``, ``dvtp answer`` and ``dvtp visualize``: LLaDA-V image + question runs.

Every option is checked (paths, combinations, the generation schedule) before a model is
built or loaded; the cheap checks come first and import neither torch nor transformers.
"""
from __future__ import annotations

import json
import os
import sys

import click

from ._choices import BACKENDS, CACHE_MODES, DTYPES, POLICIES
from ._common import (KEEP_RATIO, Number, OptionError, Text, check_image_spec, check_model_spec,
                      check_output_path, check_schedule, command, command_options, emit_json, given,
                      interactive_stderr, json_line, load_model, model_dtype, model_name, progress_bar,
                      read_image, resolve_device)


def _model_options(f):
    """--model, --device, --dtype."""
    f = click.option("--dtype", type=click.Choice(DTYPES), default="auto", show_default=True,
                     help="Weights' dtype (auto: the checkpoint's; float32 for tiny).")(f)
    f = click.option("--device", default=None, metavar="cpu|cuda[:N]",
                     help="Where the model runs (default: cuda when a GPU is visible, else cpu).")(f)
    f = click.option("--model", "model_spec", required=True, metavar="DIR|tiny",
                     help="A local LLaDA-V checkpoint folder, or 'tiny' (built-in, random weights).")(f)
    return f


class _Refresh(click.ParamType):
    """"block" or a positive int (refresh the cache every n steps)."""

    name = "block|N"

    def convert(self, value, param, ctx):
        if value == "block" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
            return value
        try:
            n = int(value)
        except ValueError:
            n = 0
        if n < 1:
            self.fail(f"expected 'block' or a positive int, got {value!r}", param, ctx)
        return n


def _generation_options(f):
    """--policy, --backend, --gen-length, --steps, --block-length, --temperature, --cache,
    --refresh, --threshold, --factor."""
    f = click.option("--factor", type=Number(0.0, open_low=True), default=None,
                     help="Parallel decoding by Fast-dLLM's factor rule, as LLaDA-V's fast path: transfer the "
                          "top n masked positions whose n-th confidence is >= 1 - F/(n+1) (e.g. 1.0); "
                          "not with --threshold.")(f)
    f = click.option("--threshold", type=Number(0.0, open_low=True), default=None,
                     help="Parallel decoding: also transfer every masked position of the block whose "
                          "confidence is at least this (Fast-dLLM; e.g. 0.9).")(f)
    f = click.option("--refresh", type=_Refresh(), default="block", show_default=True,
                     help="With --cache: refill it at each block's first step, or every N steps.")(f)
    f = click.option("--cache", type=click.Choice(CACHE_MODES), default=None,
                     help="Fast-dLLM's approximate K/V cache (default: none).")(f)
    f = click.option("--temperature", type=Number(0.0), default=0.0, show_default=True,
                     help="Sampling temperature (0: greedy).")(f)
    f = click.option("--block-length", type=click.IntRange(1), default=None,
                     help="Block size of semi-autoregressive decoding (default: gen-length, one block).")(f)
    f = click.option("--steps", type=click.IntRange(1), default=None,
                     help="Denoising steps (default: gen-length).")(f)
    f = click.option("--gen-length", type=click.IntRange(1), default=32, show_default=True,
                     help="Response length in tokens.")(f)
    f = click.option("--backend", type=click.Choice(BACKENDS), default=None,
                     help="Kernel backend of the pruning ops (default: the best usable one).")(f)
    f = click.option("--policy", type=click.Choice(POLICIES), default="redvtp", show_default=True,
                     help="Pruning policy.")(f)
    return f


def _schedule(gen_length, steps, block_length, temperature, cache=None, refresh="block", threshold=None,
              factor=None) -> dict:
    return dict(gen_length=gen_length, steps=gen_length if steps is None else steps,
                block_length=gen_length if block_length is None else block_length, temperature=temperature,
                cache=cache, refresh=refresh, threshold=threshold, factor=factor)


def _pruning(keep_ratio, policy, backend):
    if keep_ratio is None:
        return None
    from dvtp.config import PruningConfig

    return PruningConfig(keep_ratio=keep_ratio, policy=policy, backend=backend)


def _view_counts(tokens) -> list[dict]:
    from dvtp.visualize import view_counts

    return [dict(name=c.name, kept=c.kept, total=c.total) for c in view_counts(tokens)]


# ---------------------------------------------------------------------------------------
# demo
# ---------------------------------------------------------------------------------------


@command("demo", short_help="The built-in demo: tiny LLaDA-V, unpruned vs pruned.")
@click.option("--image", default=None, metavar="FILE|synthetic[:WxH]",
              help="The image (default: a synthetic 1024x768 photo).")
@click.option("--question", type=Text(), default=None, help="The question (default: describe the picture).")
@click.option("--keep", "keep", type=KEEP_RATIO, multiple=True, metavar="R",
              help="A keep ratio (0 < R <= 1) to compare with the unpruned run (repeatable; default 0.5 and 0.25).")
@click.option("--gen-length", "--gen", type=click.IntRange(1), default=32, show_default=True,
              help="Response length in tokens.")
@click.option("--steps", type=click.IntRange(1), default=16, show_default=True, help="Denoising steps.")
@click.option("--block-length", "--block", type=click.IntRange(1), default=32, show_default=True,
              help="Block length.")
@click.option("--repeats", type=click.IntRange(1), default=5, show_default=True,
              help="Timed runs per setting after a warm-up (the median is reported).")
@click.option("--threads", type=click.IntRange(1), default=2, show_default=True, help="torch threads.")
@click.option("--backend", type=click.Choice(BACKENDS), default=None,
              help="Kernel backend of the pruning ops (default: the best usable one).")
@command_options()
def demo(image, question, keep, gen_length, steps, block_length, repeats, threads, backend, quiet, as_json):
    """The built-in demo: image + question through the tiny LLaDA-V, unpruned vs pruned.

    Runs the built-in LLaDA-V (random weights, the real model's view geometry and prompt)
    unpruned and at each keep ratio, and prints the median latency with its min-max,
    speedup, tokens per step, kept visual tokens and the answers. `make demo` runs it.
    """
    if image is not None:
        check_image_spec(image)
    keep = keep or (0.5, 0.25)
    schedule = _schedule(gen_length, steps, block_length, 0.0)
    check_schedule(schedule, _pruning(min(keep), "redvtp", backend), names={"pruning.keep_ratio": "--keep"})
    from dvtp import demo as demo_lib

    picture = None if image is None else read_image(image)
    with progress_bar("demo runs", quiet=quiet or as_json) as update:
        result = demo_lib.run(picture, question or demo_lib.DEFAULT_QUESTION, keep=keep,
                              gen_length=gen_length, steps=steps, block_length=block_length, repeats=repeats,
                              threads=threads, backend=backend, image_name=image, progress=update)
    if as_json:
        emit_json(demo_lib.to_json(result))
    elif quiet:
        for s in result.settings:
            click.echo(f"{s.name}: {s.median:.2f}s ({result.settings[0].median / s.median:.2f}x) "
                       f"{s.output.texts[0]!r}")
    else:
        click.echo(demo_lib.report(result))


# ---------------------------------------------------------------------------------------
# answer
# ---------------------------------------------------------------------------------------


def _generator(schedule: dict, seed: int, device: str):
    if schedule["temperature"] <= 0:
        return None
    import torch

    return torch.Generator(device=device).manual_seed(seed)


def _run_answer(model, images, question, pruning, schedule, stop, seed, device, progress):
    picture = None if not images else images[0] if len(images) == 1 else list(images)
    return model.answer(picture, question, pruning=pruning, stop=stop, generator=_generator(schedule, seed, device),
                        progress=progress, **schedule)


def _spread(times: list[float]) -> dict:
    """Median, quartiles, min and max of a setting's timed runs (seconds)."""
    from dvtp.bench.harness import quartiles

    q1, median, q3 = quartiles(times)
    return dict(median=median, q1=q1, q3=q3, min=min(times), max=max(times), runs=list(times))


def _compare(model, pictures, question, pruning, schedule, stop, seed, device, repeats, out, quiet):
    """The first (pruned) run was the warm-up; then interleaved rounds of unpruned +
    pruned (load drift hits both alike), with the cores other processes kept busy."""
    import torch

    from dvtp.bench.harness import busy_seconds, others_cpu_cores
    from time import perf_counter

    times = {"unpruned": [], "pruned": []}
    busy_before, t0 = busy_seconds(), perf_counter()
    with progress_bar("compare", quiet=quiet) as update:
        update(0, repeats, "round 1")
        for i in range(repeats):
            base = _run_answer(model, pictures, question, None, schedule, stop, seed, device, False)
            times["unpruned"].append(base.timings)
            pruned = _run_answer(model, pictures, question, pruning, schedule, stop, seed, device, False)
            times["pruned"].append(pruned.timings)
            update(i + 1, repeats, f"round {i + 1}")
    others = others_cpu_cores(busy_before, busy_seconds(), perf_counter() - t0)
    seconds = {name: {key: _spread([t[key] for t in runs]) for key in runs[0]} for name, runs in times.items()}
    return dict(
        repeats=repeats, unpruned_answer=base.texts[0], unpruned_tokens_per_step=base.tokens_per_step,
        seconds=seconds,
        speedup=seconds["unpruned"]["generate"]["median"] / seconds["pruned"]["generate"]["median"],
        speedup_total=seconds["unpruned"]["total"]["median"] / seconds["pruned"]["total"]["median"],
        same_tokens=bool(torch.equal(base.sequences, out.sequences)),
        machine=dict(others_cpu_cores=others, loadavg_1m=os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
                     cpu_count=os.cpu_count()),
    )


def _sequence_stats(gen, item: int = 0) -> dict:
    """What one item's generation ran on, from its `GenerationOutput`: the sequence
    before and after pruning, and the forwards (full ones over the whole sequence; cached
    ones over their active tokens only, attending to the cached keys)."""
    cached = [i for i, n in enumerate(gen.cache_len_per_step) if n > 0]
    return dict(
        sequence_length=dict(before=gen.seq_len_before[item], after=gen.seq_len_after[item]),
        # 1-based, as PruningConfig.prune_step counts (the event's step is a 0-based index)
        pruned_after_step=None if gen.pruned_at_step is None else gen.pruned_at_step + 1,
        forwards=dict(total=gen.num_forwards, full=gen.full_forwards, cached=len(cached),
                      cached_tokens=[gen.tokens_per_step[i] for i in cached],
                      cached_keys=[gen.cache_len_per_step[i] for i in cached]),
    )


_BATCH_KEYS = ("image", "question", "id")


def _read_items(path: str) -> list[dict]:
    """The items of an ``--input`` JSON Lines file, every line checked before anything
    runs: ``{"image": FILE | [FILE, ...] | null, "question": TEXT, "id": any}`` ("image"
    and "id" optional; relative image paths are relative to the input file's folder;
    ``synthetic[:WxH]`` as for --image). Blank lines are skipped."""
    if not os.path.isfile(path):
        raise OptionError(f"--input {path}: no such file", "--input")
    base = os.path.dirname(os.path.abspath(path))
    items = []
    try:
        with open(path, encoding="utf-8") as f:
            lines = list(f)
    except (OSError, UnicodeDecodeError) as err:
        raise OptionError(f"--input {path}: cannot be read ({err})", "--input") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"--input {path} line {number}"

        def bad(why: str):
            raise OptionError(f"{where}: {why}", "--input")

        try:
            entry = json.loads(line)
        except ValueError as err:
            bad(f"not JSON ({err})")
        if not isinstance(entry, dict):
            bad(f"expected an object {{\"image\": ..., \"question\": ...}}, got {type(entry).__name__}")
        unknown = sorted(set(entry) - set(_BATCH_KEYS))
        if unknown:
            bad(f"unknown keys {unknown} (known: {', '.join(_BATCH_KEYS)})")
        question = entry.get("question")
        if not isinstance(question, str) or not question.strip():
            bad("\"question\" must be a non-empty string")
        image = entry.get("image")
        specs = [] if image is None else [image] if isinstance(image, str) else image
        if not isinstance(specs, list) or not all(isinstance(s, str) for s in specs):
            bad("\"image\" must be a path, a list of paths or null")
        resolved = []
        for spec in specs:
            full = spec if spec == "synthetic" or spec.startswith("synthetic:") or os.path.isabs(spec) else os.path.join(base, spec)
            try:
                check_image_spec(full)
            except click.BadParameter as err:
                bad(f"image {err.message}")
            resolved.append(full)
        items.append(dict(line=number, id=entry.get("id"), question=question, images=specs, paths=resolved))
    if not items:
        raise OptionError(f"--input {path}: no items (expected one JSON object per line)", "--input")
    return items


def _answer_batch(model, items, *, pruning, schedule, stop, seed, device, batch_size, output, quiet):
    """Answer ``items`` ``batch_size`` at a time; one JSON line per item, in input order,
    written as each batch finishes."""
    sink = sys.stdout if output is None else open(output, "w", encoding="utf-8")
    try:
        with progress_bar("answers", quiet=quiet) as update:
            update(0, len(items), "")
            for start in range(0, len(items), batch_size):
                batch = items[start:start + batch_size]
                pictures = [[read_image(p) for p in item["paths"]] or None for item in batch]
                out = model.answer(pictures, [item["question"] for item in batch], pruning=pruning, stop=stop,
                                   generator=_generator(schedule, seed, device), **schedule)
                for b, item in enumerate(batch):
                    doc = dict(id=item["id"], line=item["line"], question=item["question"], images=item["images"],
                               answer=out.texts[b], visual_tokens=out.visual_tokens[b],
                               kept_tokens=out.kept_counts[b],
                               sequence_length=dict(before=out.generation.seq_len_before[b],
                                                    after=out.generation.seq_len_after[b]))
                    sink.write(json_line(doc) + "\n")
                sink.flush()
                update(start + len(batch), len(items), f"line {batch[-1]['line']}")
    finally:
        if output is not None:
            sink.close()


@command("answer", short_help="Answer a question about images (or a file of questions), optionally pruned.")
@_model_options
@click.option("--image", "images", multiple=True, metavar="FILE|synthetic[:WxH]",
              help="An image (repeatable: several images in one prompt; none: a text-only question).")
@click.option("--question", type=Text(), default=None, help="The question (required unless --input).")
@click.option("--input", "input_path", default=None, metavar="FILE",
              help="Batch mode: a JSON Lines file of {\"image\": FILE|[FILE...]|null, \"question\": TEXT, "
                   "\"id\": ...} items; one JSON line per answer, in input order.")
@click.option("--output", default=None, metavar="FILE",
              help="With --input: the JSON Lines file the answers go to (default: stdout).")
@click.option("--batch-size", type=click.IntRange(1), default=8, show_default=True,
              help="With --input: items answered together in one batch.")
@click.option("--keep-ratio", type=KEEP_RATIO, default=None, metavar="R",
              help="Fraction of visual tokens kept, 0 < R <= 1 (RedVTP pruning); default: no pruning.")
@_generation_options
@click.option("--stop/--no-stop", default=True, show_default=True,
              help="End an answer at its <|eot_id|> (no-stop: run all steps, same work for every setting).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the sampling noise (only with --temperature > 0).")
@click.option("--compare", is_flag=True,
              help="Also run unpruned and report the speedup (median of --repeats interleaved runs).")
@click.option("--repeats", type=click.IntRange(1), default=3, show_default=True,
              help="Timed runs per setting with --compare.")
@command_options()
def answer(model_spec, device, dtype, images, question, input_path, output, batch_size, keep_ratio, policy, backend,
           gen_length, steps, block_length, temperature, cache, refresh, threshold, factor, stop, seed, compare,
           repeats, quiet, as_json):
    """Answer a question about image(s), with optional visual-token pruning.

    Prints the answer, the visual tokens kept (per view), the sequence length before and
    after pruning, the forwards and the timings; with --compare also the unpruned run's
    answer, the speedup and the spread of the timed runs and the machine's load.
    With --input, answers a JSON Lines file of questions in batches (docs/cli.md).
    """
    # options that would be silently ignored are refused (docs/cli.md), before anything runs
    if input_path is not None:
        for name, option in (("images", "--image"), ("question", "--question"), ("compare", "--compare"),
                             ("repeats", "--repeats"), ("as_json", "--json")):
            if given(name):
                raise OptionError(f"{option} does not go with --input (the items hold the images and questions; "
                                  "the answers are JSON Lines)", option)
        if output is not None:
            check_output_path(output, "--output")
        items = _read_items(input_path)
    else:
        if question is None:
            raise OptionError("Missing option '--question' (or --input FILE for a batch of questions)", "--question")
        for name, option in (("output", "--output"), ("batch_size", "--batch-size")):
            if given(name):
                raise OptionError(f"{option} goes with --input", option)
        for spec in images:
            check_image_spec(spec)
    if compare and keep_ratio is None:
        raise OptionError("--compare compares a pruned run with an unpruned one: give --keep-ratio too", "--compare")
    if given("repeats") and not compare:
        raise OptionError("--repeats sets the timed runs of --compare: give --compare too", "--repeats")
    for name, option in (("policy", "--policy"), ("backend", "--backend")):
        if given(name) and keep_ratio is None:
            raise OptionError(f"{option} applies to pruning: give --keep-ratio too (without it nothing is pruned)",
                              option)
    if given("seed") and temperature == 0:
        raise OptionError("--seed seeds the sampling noise, which only --temperature > 0 draws", "--seed")
    check_model_spec(model_spec)
    pruning = _pruning(keep_ratio, policy, backend)
    schedule = _schedule(gen_length, steps, block_length, temperature, cache, refresh, threshold, factor)
    check_schedule(schedule, pruning, steps_default="" if given("steps") else "--gen-length")
    device = resolve_device(device)

    if input_path is not None:
        model = load_model(model_spec, device=device, dtype=dtype, quiet=quiet)
        _answer_batch(model, items, pruning=pruning, schedule=schedule, stop=stop, seed=seed, device=device,
                      batch_size=batch_size, output=output, quiet=quiet)
        return

    pictures = [read_image(spec) for spec in images]
    model = load_model(model_spec, device=device, dtype=dtype, quiet=quiet)
    show = not quiet and not as_json and interactive_stderr()
    out = _run_answer(model, pictures, question, pruning, schedule, stop, seed, device, show)
    comparison = None
    if compare:
        comparison = _compare(model, pictures, question, pruning, schedule, stop, seed, device, repeats, out,
                              quiet or as_json)

    tokens = list(out.images[0])
    doc = dict(
        answer=out.texts[0], question=question, model=model_spec, device=device, dtype=model_dtype(model),
        dtype_requested=dtype, images=list(images),
        pruning=None if pruning is None else dict(keep_ratio=pruning.keep_ratio, policy=pruning.policy,
                                                  backend=pruning.backend),
        generation=dict(schedule, stop=stop, seed=seed if schedule["temperature"] > 0 else None),
        visual_tokens=out.visual_tokens[0], kept_tokens=out.kept_counts[0],
        views=[_view_counts(t) if t.kept is not None else None for t in tokens],
        **_sequence_stats(out.generation),
        tokens_per_step=out.tokens_per_step, cache_len_per_step=out.generation.cache_len_per_step,
        backends=dict(out.generation.backends), timings=dict(out.timings), compare=comparison,
    )
    if as_json:
        emit_json(doc)
        return
    if quiet:
        click.echo(out.texts[0])
        return
    _print_answer(doc, model_spec)


def _backends_text(backends: dict) -> str:
    """"cpu" when every op ran on one backend, else "op backend, ..."; "-" when none ran."""
    if len(set(backends.values())) == 1:
        return next(iter(backends.values()))
    return ", ".join(f"{op} {b}" for op, b in backends.items()) or "-"


def _range(values: list[int]) -> str:
    return f"{min(values)}" if min(values) == max(values) else f"{min(values)}-{max(values)}"


def _print_answer(doc: dict, model_spec: str) -> None:
    say = click.echo
    say(f"answer: {doc['answer']!r}")
    say(f"model: {model_name(model_spec)} on {doc['device']} ({doc['dtype']})")
    if doc["pruning"] is None:
        say(f"visual tokens: {doc['visual_tokens']} (no pruning)")
    elif doc["kept_tokens"] is None:
        say("visual tokens: none (a text-only question: nothing to prune)")
    else:
        p = doc["pruning"]
        say(f"visual tokens: {doc['visual_tokens']} -> {doc['kept_tokens']} kept "
            f"(keep {p['keep_ratio']}, {p['policy']}; kernels: {_backends_text(doc['backends'])})")
        for i, views in enumerate(doc["views"]):
            if views:
                say(f"  image {i}: " + ", ".join(f"{v['name']} {v['kept']}/{v['total']}" for v in views))
    seq, fw = doc["sequence_length"], doc["forwards"]
    line = f"sequence: {seq['before']} tokens"
    if doc["pruned_after_step"] is not None:
        line += f", {seq['after']} after pruning at step {doc['pruned_after_step']}"
    line += f"; {fw['total']} forwards"
    if fw["cached"]:
        line += (f" ({fw['full']} over the whole sequence, {fw['cached']} cached over "
                 f"{_range(fw['cached_tokens'])} tokens attending to {_range(fw['cached_keys'])} cached keys)")
    say(line)
    t = doc["timings"]
    say("time: " + ", ".join(f"{k} {t[k]:.2f}s" for k in ("preprocess", "vision", "generate", "total"))
        + " (one run, first call included)")
    c = doc["compare"]
    if c is not None:
        s = c["seconds"]

        def timed(name, key):
            x = s[name][key]
            return f"{x['median']:.2f}s [{x['min']:.2f}-{x['max']:.2f}]"

        runs = f"medians of {c['repeats']} runs" if c["repeats"] > 1 else "one run"
        say(f"compare ({runs} after a warm-up, [min-max]): generate {timed('unpruned', 'generate')} unpruned vs "
            f"{timed('pruned', 'generate')} pruned = {c['speedup']:.2f}x; total {timed('unpruned', 'total')} vs "
            f"{timed('pruned', 'total')} = {c['speedup_total']:.2f}x")
        m = c["machine"]
        load = []
        if m["others_cpu_cores"] is not None:
            load.append(f"other processes kept {m['others_cpu_cores']:.1f} of {m['cpu_count']} cores busy")
        if m["loadavg_1m"] is not None:
            load.append(f"1-min load {m['loadavg_1m']:.1f}")
        if load:
            say("machine during the runs: " + ", ".join(load))
        say(f"unpruned answer: {c['unpruned_answer']!r} (same tokens: {'yes' if c['same_tokens'] else 'no'})")


# ---------------------------------------------------------------------------------------
# visualize
# ---------------------------------------------------------------------------------------


@command("visualize", short_help="Draw which visual tokens pruning kept (a PNG).")
@_model_options
@click.option("--image", "images", required=True, multiple=True, metavar="FILE|synthetic[:WxH]",
              help="An image (repeatable: several images in one prompt, one row of panels each).")
@click.option("--question", type=Text(), required=True, help="The question.")
@click.option("--keep-ratio", type=KEEP_RATIO, required=True, metavar="R",
              help="Fraction of visual tokens kept, 0 < R <= 1.")
@click.option("--out", default="kept.png", show_default=True, metavar="FILE",
              help="The picture to write (the format follows the extension: .png, .jpg, ...).")
@_generation_options
@click.option("--panel", type=click.IntRange(16), default=512, show_default=True,
              help="Pixels of each panel's longer side.")
@click.option("--cmap", default="turbo", show_default=True, help="matplotlib colour map of the heat map.")
@click.option("--scale", type=click.Choice(("rank", "linear")), default="rank", show_default=True,
              help="Heat-map scale over the kept tokens: their rank, or min-max of the importance.")
@click.option("--no-title", is_flag=True, help="No header line above the panels.")
@command_options()
def visualize(model_spec, device, dtype, images, question, keep_ratio, out, policy, backend, gen_length, steps,
              block_length, temperature, cache, refresh, threshold, factor, panel, cmap, scale, no_title, quiet,
              as_json):
    """Draw which visual tokens pruning kept.

    One row of panels per image, one panel per view (the base view, then the anyres
    grid; newline tokens are not drawn): pruned patches dimmed to grey, kept ones tinted
    by a heat map of the importance they were ranked by, with kept/total counts per view
    and a colour bar. With --policy uniform or random, which rank nothing, kept patches
    get one tint and a kept/pruned legend replaces the colour bar.
    """
    for spec in images:
        check_image_spec(spec)
    check_output_path(out, "--out", picture="pil")
    check_model_spec(model_spec)
    pruning = _pruning(keep_ratio, policy, backend)
    schedule = _schedule(gen_length, steps, block_length, temperature, cache, refresh, threshold, factor)
    check_schedule(schedule, pruning, steps_default="" if given("steps") else "--gen-length")
    from dvtp import visualize as vis

    try:  # --panel and --scale are checked by their types and --out above: what is left is --cmap
        vis.check_options(panel=panel, cmap=cmap, scale=scale)
    except ValueError as err:
        raise OptionError(f"--cmap {cmap}: {err}", "--cmap") from None
    device = resolve_device(device)
    pictures = [read_image(spec) for spec in images]
    model = load_model(model_spec, device=device, dtype=dtype, quiet=quiet)
    title = None
    if not no_title:
        title = f"{model_name(model_spec)}, keep {keep_ratio} ({policy}): {{kept}}/{{total}} visual tokens kept"
    figure, result = vis.visualize(model, pictures, question, keep_ratio=keep_ratio, out=out, policy=policy,
                                   backend=backend, panel=panel, cmap=cmap, scale=scale, title=title,
                                   progress=not quiet and not as_json and interactive_stderr(), **schedule)
    tokens = result.images[0]  # the item's ImageTokens, one per image
    doc = dict(out=out, size=list(figure.size), answer=result.texts[0], question=question, model=model_spec,
               images=list(images), keep_ratio=keep_ratio, policy=policy, visual_tokens=result.visual_tokens[0],
               kept_tokens=result.kept_counts[0], views=[_view_counts(t) for t in tokens],
               timings=dict(result.timings))
    if as_json:
        emit_json(doc)
    elif not quiet:
        per_image = [", ".join(f"{v['name']} {v['kept']}/{v['total']}" for v in views) for views in doc["views"]]
        if len(per_image) > 1:
            per_image = [f"image {i + 1}: {text}" for i, text in enumerate(per_image)]
        click.echo(f"wrote {out} ({figure.size[0]}x{figure.size[1]}): {'; '.join(per_image)} kept; "
                   f"answer {result.texts[0]!r}")
