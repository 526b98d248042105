"""The built-in demo (``dvtp demo``, ``make demo``, ``python -m dvtp demo``).

Runs `dvtp.vlm.tiny_llada_v` (seeded random weights, LLaDA-V's real view geometry, prompt
template and special tokens) on a synthetic 1024x768 photo (or a given image) and a
question, unpruned and with RedVTP pruning at keep 0.5 and 0.25, and reports for each
setting the median latency over several runs after a warm-up (with the spread), the
speedup, the sequence length per step, the kept visual tokens (and where they lie: base
view vs anyres grid) and the answer. Well under a minute on a 2-core CPU.

`run` does the work and returns a `DemoResult`; `report` formats it as text and
`to_json` as a JSON-able dict. The options are parsed by the ``dvtp demo`` command
(`dvtp.cli`); this module never imports the command line (layers import downward).
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from .config import PruningConfig
from .vlm.answer import AnswerOutput
from .vlm.images import load_image, synthetic_photo
from .vlm.packing import BASE, GRID, NEWLINE

__all__ = ["run", "report", "to_json", "DemoResult", "DemoSetting", "DEFAULT_QUESTION"]

DEFAULT_QUESTION = "What is in the picture? Describe the objects and their colours."


@dataclass
class DemoSetting:
    """One setting's runs: ``keep_ratio`` None = unpruned; ``times`` in seconds (one per
    timed run, end to end); ``output`` the last run's `AnswerOutput`."""

    name: str
    keep_ratio: float | None
    times: list[float]
    output: AnswerOutput

    @property
    def median(self) -> float:
        return statistics.median(self.times)


@dataclass
class DemoResult:
    """What `run` measured (settings in order, the unpruned one first)."""

    model: str
    image: str
    question: str
    gen_length: int
    steps: int
    block_length: int
    threads: int
    repeats: int
    settings: list[DemoSetting]


def _describe_model(model) -> str:
    cfg = model.config
    return (f"tiny LLaDA-V (random weights): SigLIP {cfg.vision_config.num_hidden_layers} layers x "
            f"{cfg.vision_config.hidden_size}, LLaDA {cfg.text_config.num_hidden_layers} layers x "
            f"{cfg.text_config.hidden_size}, vocab {cfg.text_config.vocab_size}")


def run(image: Any = None, question: str = DEFAULT_QUESTION, *, keep: Sequence[float] = (0.5, 0.25),
        gen_length: int = 32, steps: int = 16, block_length: int = 32, repeats: int = 5, threads: int = 2,
        backend: str | None = None, image_name: str | None = None,
        progress: Callable[[int, int, str], None] | None = None) -> DemoResult:
    """Run the demo.

    Args:
        image: an image (anything `dvtp.vlm.images.load_image` takes) or None for a
            synthetic 1024x768 photo; ``image_name`` describes it in the report.
        question: the question.
        keep: the keep ratios compared with the unpruned run.
        gen_length, steps, block_length: the generation schedule (all steps run,
            ``stop=False``, so every setting does the same number of forwards).
        repeats: timed runs per setting after one warm-up (interleaved over the settings).
        threads: ``torch.set_num_threads`` for the run.
        backend: the `dvtp_kernels` backend of the pruning ops (None: the best usable).
        progress: called as ``progress(done, total, label)`` after each run.
    """
    from .vlm import tiny_llada_v

    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be an int >= 1, got {repeats!r}")
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be an int >= 1, got {threads!r}")
    if not keep:
        raise ValueError("keep must name at least one keep ratio")
    settings = [("unpruned", None, None)] + [
        (f"keep {r}", r, PruningConfig(keep_ratio=r, backend=backend)) for r in keep
    ]
    if image is None:
        picture, image_name = load_image(synthetic_photo(1024, 768)), image_name or "synthetic photo"
    else:
        picture = load_image(image, name="image")
    torch.set_num_threads(threads)
    model = tiny_llada_v(seed=0)

    common = dict(gen_length=gen_length, steps=steps, block_length=block_length, stop=False)
    total, done = 1 + repeats * len(settings), 0
    model.answer(picture, question, pruning=settings[-1][2], **common)  # warm-up (checks the arguments first)
    done += 1
    if progress is not None:
        progress(done, total, "warm-up")
    times = {name: [] for name, _, _ in settings}
    outs = {}
    for _ in range(repeats):  # interleaved: machine-load drift hits every setting alike
        for name, _, pruning in settings:
            t0 = time.perf_counter()
            outs[name] = model.answer(picture, question, pruning=pruning, **common)
            times[name].append(time.perf_counter() - t0)
            done += 1
            if progress is not None:
                progress(done, total, name)
    return DemoResult(
        model=_describe_model(model),
        image=f"{picture.width}x{picture.height}" + (f" ({image_name})" if image_name else ""),
        question=question, gen_length=gen_length, steps=steps, block_length=block_length,
        threads=threads, repeats=repeats,
        settings=[DemoSetting(name, ratio, times[name], outs[name]) for name, ratio, _ in settings],
    )


def _kept_where(setting: DemoSetting) -> tuple[str, str]:
    """("kept/total", "base/grid/newline kept") of the setting's image."""
    tokens = setting.output.images[0][0]
    if tokens.kept is None:
        return "-", ""
    kinds = tokens.layout.kinds()[tokens.kept]
    return (f"{len(tokens.kept)}/{tokens.num_tokens}",
            "/".join(str(int((kinds == k).sum())) for k in (BASE, GRID, NEWLINE)))


def report(result: DemoResult) -> str:
    """The demo's text report: the set-up, a table of the settings and the answers."""
    first = result.settings[0].output
    layout = first.images[0][0].layout
    lines = [
        f"model: {result.model}",
        f"image: {result.image}",
        f"question: {result.question!r}; gen_length {result.gen_length}, steps {result.steps}, "
        f"block_length {result.block_length}, temperature 0, {result.threads} threads",
        "",
        f"visual tokens: {first.visual_tokens[0]} = base view {layout.num_base} + anyres grid "
        f"{layout.grid[0]}x{layout.grid[1]} views -> {layout.packed[0]}x{layout.packed[1]} features "
        f"+ {layout.packed[0]} newlines; prompt {first.prompt_lengths[0]} tokens",
        "",
        f"{'setting':<10} {'median':>8} {'min-max':>13} {'speedup':>8} {'tokens per step':>16} {'kept':>10}"
        f"  {'base/grid/newline kept':>22}",
    ]
    base = result.settings[0].median
    for s in result.settings:
        lens = s.output.tokens_per_step
        steps_text = f"{lens[0]}" if lens[0] == lens[-1] else f"{lens[0]}->{lens[-1]}"
        kept, where = _kept_where(s)
        spread = f"{min(s.times):.2f}-{max(s.times):.2f}s"
        lines.append(f"{s.name:<10} {s.median:>7.2f}s {spread:>13} {base / s.median:>7.2f}x "
                     f"{steps_text:>16} {kept:>10}  {where:>22}")
    lines.append("")
    for s in result.settings:
        out = s.output
        same = torch.equal(out.sequences, first.sequences)
        agree = (out.sequences == first.sequences).float().mean().item()
        gen = out.generation
        lines.append(f"[{s.name}] answer: {out.texts[0]!r}")
        lines.append(
            f"    same tokens as unpruned: {'yes' if same else f'no ({100 * agree:.0f}% of positions)'}"
            + (f"; scoring step {gen.scoring_time:.3f}s, select+compact {1000 * gen.prune_time:.1f} ms, "
               f"kernels {gen.backends}" if gen.prune_time is not None else ""))
    lines.append("")
    lines.append(
        f"Times are medians of {result.repeats} runs after a warm-up; min-max shows the noise of this "
        "machine. The weights are random, so the answers are noise and pruning changes them; keep 1.0 "
        "would reproduce the unpruned tokens exactly. Generation ran all steps (stop=False) so every "
        "setting does the same number of forwards; answers are cut at the first <|eot_id|>.")
    return "\n".join(lines)


def to_json(result: DemoResult) -> dict:
    """`DemoResult` as a JSON-able dict (times in seconds)."""
    first = result.settings[0].output
    base = result.settings[0].median
    settings = []
    for s in result.settings:
        out = s.output
        tokens = out.images[0][0]
        settings.append(dict(
            name=s.name, keep_ratio=s.keep_ratio, times=s.times, median=s.median, speedup=base / s.median,
            tokens_per_step=out.tokens_per_step, visual_tokens=tokens.num_tokens,
            kept_tokens=None if tokens.kept is None else len(tokens.kept),
            answer=out.texts[0], same_tokens_as_unpruned=bool(torch.equal(out.sequences, first.sequences)),
            backends=dict(out.generation.backends),
        ))
    return dict(model=result.model, image=result.image, question=result.question,
                gen_length=result.gen_length, steps=result.steps, block_length=result.block_length,
                threads=result.threads, repeats=result.repeats, settings=settings)
