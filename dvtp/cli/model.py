"""``dvtp demo``, ``dvtp answer`` and ``dvtp visualize``: LLaDA-V image + question runs."""
from __future__ import annotations

import statistics

import click

from dvtp.policies import available_policies
from dvtp_kernels.dispatch import BACKENDS

from ._common import (CONTEXT, DTYPES, command_options, emit_json, interactive_stderr, load_model,
                      model_name, progress_bar, read_image, resolve_device)

_KEEP = click.FloatRange(0.0, 1.0, min_open=True)


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
        if value == "block" or isinstance(value, int):
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
    --refresh, --threshold."""
    f = click.option("--threshold", type=click.FloatRange(0.0, min_open=True), default=None,
                     help="Parallel decoding: also transfer every masked position of the block whose "
                          "confidence is at least this (Fast-dLLM; e.g. 0.9).")(f)
    f = click.option("--refresh", type=_Refresh(), default="block", show_default=True,
                     help="With --cache: refill it at each block's first step, or every N steps.")(f)
    f = click.option("--cache", type=click.Choice(("prefix", "dual")), default=None,
                     help="Fast-dLLM's approximate K/V cache (default: none).")(f)
    f = click.option("--temperature", type=click.FloatRange(0.0), default=0.0, show_default=True,
                     help="Sampling temperature (0: greedy).")(f)
    f = click.option("--block-length", type=click.IntRange(1), default=None,
                     help="Block size of semi-autoregressive decoding (default: gen-length, one block).")(f)
    f = click.option("--steps", type=click.IntRange(1), default=None,
                     help="Denoising steps (default: gen-length).")(f)
    f = click.option("--gen-length", type=click.IntRange(1), default=32, show_default=True,
                     help="Response length in tokens.")(f)
    f = click.option("--backend", type=click.Choice(BACKENDS), default=None,
                     help="Kernel backend of the pruning ops (default: the best usable one).")(f)
    f = click.option("--policy", type=click.Choice(available_policies()), default="redvtp", show_default=True,
                     help="Pruning policy.")(f)
    return f


def _schedule(gen_length, steps, block_length, temperature, cache=None, refresh="block", threshold=None) -> dict:
    return dict(gen_length=gen_length, steps=gen_length if steps is None else steps,
                block_length=gen_length if block_length is None else block_length, temperature=temperature,
                cache=cache, refresh=refresh, threshold=threshold)


def _view_counts(tokens) -> list[dict]:
    from dvtp.visualize import view_counts

    return [dict(name=c.name, kept=c.kept, total=c.total) for c in view_counts(tokens)]


# ---------------------------------------------------------------------------------------
# demo
# ---------------------------------------------------------------------------------------


@click.command("demo", context_settings=CONTEXT, short_help="The built-in demo: tiny LLaDA-V, unpruned vs pruned.")
@click.option("--image", default=None, metavar="FILE|synthetic[:WxH]",
              help="The image (default: a synthetic 1024x768 photo).")
@click.option("--question", default=None, help="The question (default: describe the picture).")
@click.option("--keep", "keep", type=_KEEP, multiple=True, metavar="R",
              help="A keep ratio to compare with the unpruned run (repeatable; default 0.5 and 0.25).")
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
    unpruned and at each keep ratio, and prints the median latency, speedup, tokens per
    step, kept visual tokens and the answers. `make demo` runs it.
    """
    from dvtp import demo as demo_lib

    picture = None if image is None else read_image(image)
    with progress_bar("demo runs", quiet=quiet or as_json) as update:
        result = demo_lib.run(picture, question or demo_lib.DEFAULT_QUESTION, keep=keep or (0.5, 0.25),
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


def _run_answer(model, images, question, pruning, schedule, stop, seed, device, progress):
    import torch

    generator = None
    if schedule["temperature"] > 0:
        generator = torch.Generator(device=device).manual_seed(seed)
    picture = None if not images else images[0] if len(images) == 1 else list(images)
    return model.answer(picture, question, pruning=pruning, stop=stop, generator=generator,
                        progress=progress, **schedule)


@click.command("answer", context_settings=CONTEXT, short_help="Answer a question about images, optionally pruned.")
@_model_options
@click.option("--image", "images", multiple=True, metavar="FILE|synthetic[:WxH]",
              help="An image (repeatable: several images in one prompt; none: a text-only question).")
@click.option("--question", required=True, help="The question.")
@click.option("--keep-ratio", type=_KEEP, default=None,
              help="Fraction of visual tokens kept (RedVTP pruning); default: no pruning.")
@_generation_options
@click.option("--stop/--no-stop", default=True, show_default=True,
              help="End an answer at its <|eot_id|> (no-stop: run all steps, same work for every setting).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the sampling noise (temperature > 0).")
@click.option("--compare", is_flag=True,
              help="Also run unpruned and report the speedup (median of --repeats interleaved runs).")
@click.option("--repeats", type=click.IntRange(1), default=3, show_default=True,
              help="Timed runs per setting for --compare.")
@command_options()
def answer(model_spec, device, dtype, images, question, keep_ratio, policy, backend, gen_length, steps,
           block_length, temperature, cache, refresh, threshold, stop, seed, compare, repeats, quiet, as_json):
    """Answer a question about image(s), with optional visual-token pruning.

    Prints the answer, the visual tokens kept (per view), the sequence length per step and
    the timings; with --compare also the unpruned run's answer and the speedup.
    """
    import torch

    import dvtp
    from dvtp.sampler import check_generation_args

    if compare and keep_ratio is None:
        raise click.UsageError("--compare compares a pruned run with an unpruned one: give --keep-ratio too")
    device = resolve_device(device)
    pictures = [read_image(spec) for spec in images]
    pruning = None if keep_ratio is None else dvtp.PruningConfig(keep_ratio=keep_ratio, policy=policy,
                                                                 backend=backend)
    schedule = _schedule(gen_length, steps, block_length, temperature, cache, refresh, threshold)
    check_generation_args(**schedule, remasking="low_confidence", pruning=pruning)
    model = load_model(model_spec, device=device, dtype=dtype, quiet=quiet)
    show = not quiet and not as_json and interactive_stderr()
    out = _run_answer(model, pictures, question, pruning, schedule, stop, seed, device, show)

    comparison = None
    if compare:  # the first run was the warm-up; then interleaved rounds (load drift hits both alike)
        times = {"unpruned": [], "pruned": []}
        with progress_bar("compare", quiet=quiet or as_json) as update:
            update(0, repeats, "round 1")
            for i in range(repeats):
                base = _run_answer(model, pictures, question, None, schedule, stop, seed, device, False)
                times["unpruned"].append(base.timings)
                pruned = _run_answer(model, pictures, question, pruning, schedule, stop, seed, device, False)
                times["pruned"].append(pruned.timings)
                update(i + 1, repeats, f"round {i + 1}")
        median = {name: {key: statistics.median(t[key] for t in runs) for key in runs[0]}
                  for name, runs in times.items()}
        comparison = dict(
            repeats=repeats, unpruned_answer=base.texts[0], unpruned_tokens_per_step=base.tokens_per_step,
            median_seconds=median,
            speedup=median["unpruned"]["generate"] / median["pruned"]["generate"],
            speedup_total=median["unpruned"]["total"] / median["pruned"]["total"],
            same_tokens=bool(torch.equal(base.sequences, out.sequences)),
        )

    tokens = list(out.images[0])
    doc = dict(
        answer=out.texts[0], question=question, model=model_spec, device=device, dtype=dtype,
        images=list(images),
        pruning=None if pruning is None else dict(keep_ratio=pruning.keep_ratio, policy=pruning.policy,
                                                  backend=pruning.backend),
        generation=dict(schedule, stop=stop),
        visual_tokens=out.visual_tokens[0], kept_tokens=out.kept_counts[0],
        views=[_view_counts(t) if t.kept is not None else None for t in tokens],
        tokens_per_step=out.tokens_per_step, backends=dict(out.generation.backends),
        timings=dict(out.timings), compare=comparison,
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


def _print_answer(doc: dict, model_spec: str) -> None:
    say = click.echo
    say(f"answer: {doc['answer']!r}")
    say(f"model: {model_name(model_spec)} on {doc['device']}")
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
    lens = doc["tokens_per_step"]
    say(f"tokens per step: {lens[0]}" + (f" -> {lens[-1]}" if lens[-1] != lens[0] else "")
        + f" ({len(lens)} steps)")
    t = doc["timings"]
    say("time: " + ", ".join(f"{k} {t[k]:.2f}s" for k in ("preprocess", "vision", "generate", "total"))
        + " (one run, first call included)")
    c = doc["compare"]
    if c is not None:
        m = c["median_seconds"]
        runs = f"medians of {c['repeats']} runs" if c["repeats"] > 1 else "one run"
        say(f"compare ({runs} after a warm-up): generate {m['unpruned']['generate']:.2f}s "
            f"unpruned vs {m['pruned']['generate']:.2f}s pruned = {c['speedup']:.2f}x; total "
            f"{m['unpruned']['total']:.2f}s vs {m['pruned']['total']:.2f}s = {c['speedup_total']:.2f}x")
        say(f"unpruned answer: {c['unpruned_answer']!r} (same tokens: {'yes' if c['same_tokens'] else 'no'})")


# ---------------------------------------------------------------------------------------
# visualize
# ---------------------------------------------------------------------------------------


@click.command("visualize", context_settings=CONTEXT, short_help="Draw which visual tokens pruning kept (a PNG).")
@_model_options
@click.option("--image", required=True, metavar="FILE|synthetic[:WxH]", help="The image.")
@click.option("--question", required=True, help="The question.")
@click.option("--keep-ratio", type=_KEEP, required=True, help="Fraction of visual tokens kept.")
@click.option("--out", default="kept.png", show_default=True, type=click.Path(dir_okay=False),
              help="The picture to write (PNG; the format follows the extension).")
@_generation_options
@click.option("--panel", type=click.IntRange(16), default=512, show_default=True,
              help="Pixels of each panel's longer side.")
@click.option("--cmap", default="turbo", show_default=True, help="matplotlib colour map of the heat map.")
@click.option("--scale", type=click.Choice(("rank", "linear")), default="rank", show_default=True,
              help="Heat-map scale over the kept tokens: their rank, or min-max of the importance.")
@click.option("--no-title", is_flag=True, help="No header line above the panels.")
@command_options()
def visualize(model_spec, device, dtype, image, question, keep_ratio, out, policy, backend, gen_length, steps,
              block_length, temperature, cache, refresh, threshold, panel, cmap, scale, no_title, quiet, as_json):
    """Draw which visual tokens pruning kept.

    One panel per view (the base view, then the anyres grid; newline tokens are not
    drawn): pruned patches dimmed to grey, kept ones tinted by a heat map of the
    importance they were ranked by, with kept/total counts per view and a colour bar.
    """
    from dvtp import visualize as vis

    import dvtp
    from dvtp.sampler import check_generation_args

    device = resolve_device(device)
    picture = read_image(image)
    schedule = _schedule(gen_length, steps, block_length, temperature, cache, refresh, threshold)
    vis.check_options(out=out, panel=panel, cmap=cmap, scale=scale)  # all before the model loads
    check_generation_args(**schedule, remasking="low_confidence",
                          pruning=dvtp.PruningConfig(keep_ratio=keep_ratio, policy=policy, backend=backend))
    model = load_model(model_spec, device=device, dtype=dtype, quiet=quiet)
    title = None
    if not no_title:
        title = f"{model_name(model_spec)}, keep {keep_ratio} ({policy}): {{kept}}/{{total}} visual tokens kept"
    figure, result = vis.visualize(model, picture, question, keep_ratio=keep_ratio, out=out, policy=policy,
                                   backend=backend, panel=panel, cmap=cmap, scale=scale, title=title,
                                   progress=not quiet and not as_json and interactive_stderr(), **schedule)
    tokens = result.images[0][0]
    doc = dict(out=out, size=list(figure.size), answer=result.texts[0], question=question, model=model_spec,
               keep_ratio=keep_ratio, policy=policy, visual_tokens=tokens.num_tokens, kept_tokens=len(tokens.kept),
               views=_view_counts(tokens), timings=dict(result.timings))
    if as_json:
        emit_json(doc)
    elif not quiet:
        views = ", ".join(f"{v['name']} {v['kept']}/{v['total']}" for v in doc["views"])
        click.echo(f"wrote {out} ({figure.size[0]}x{figure.size[1]}): {views} kept; answer {result.texts[0]!r}")
