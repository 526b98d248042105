"""`generate`'s arguments, checked once and frozen into a `GenerationRequest`.

Everything here runs before any forward: a bad argument raises ValueError / TypeError
naming it. Front ends that do work before generating (`dvtp.vlm.answer` runs the vision
tower) call `check_generation_args` first.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping

from ..config import LLADA_SUPPRESSED_IDS, PruningConfig

if TYPE_CHECKING:
    import torch

__all__ = [
    "ArgumentNames", "GenerationRequest", "check_generation_args", "check_model", "check_positions", "max_positions",
    "resolve_request", "CACHE_MODES",
]

REMASKING = ("low_confidence", "random")
CACHE_MODES = (None, "prefix", "dual")


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


class ArgumentNames:
    """How a front end calls `check_generation_args`' arguments in its messages.

    The library names its arguments (``gen_length=7``); the command line names its options
    (``--gen-length 7``). ``names`` maps an argument (``gen_length``, ``steps``,
    ``block_length``, ``temperature``, ``cache``, ``refresh``, ``threshold``, ``factor``,
    ``pruning.keep_ratio``, ``pruning.prune_step``, ...) to the caller's name for it; a name
    starting with ``--`` is shown as ``--option value``, any other as ``name=value``.
    """

    def __init__(self, names: Mapping[str, str] | None = None):
        self.names = dict(names or {})

    def __call__(self, arg: str) -> str:
        """The caller's name of ``arg``."""
        return self.names.get(arg, arg)

    def show(self, arg: str, value) -> str:
        """``arg`` with its value, as the caller writes it."""
        name = self(arg)
        return f"{name} {value}" if name.startswith("--") else f"{name}={value!r}"


def _is_generator(value) -> bool:
    # torch is imported only when a generator was given: the command line checks its
    # schedule options through this module before it imports torch (fast usage errors)
    import torch

    return isinstance(value, torch.Generator)


def _positive_int(value, name: str) -> int:
    if not _is_int(value) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class GenerationRequest:
    """What one `generate` call asked for, normalised (see `dvtp.generate` for each field).

    ``steps_per_block`` = ``steps // num_blocks``; ``refresh`` is "block" or an int >= 1;
    ``suppressed`` and ``stop_ids`` are sorted / ordered id tuples; ``shift`` is the
    model's logit shift (1 for Dream: ``logits[:, i]`` comes from position ``i - 1``);
    at most one of ``threshold`` / ``factor`` is set.
    """

    gen_length: int
    steps: int
    block_length: int
    temperature: float
    remasking: str
    mask_id: int
    pruning: PruningConfig | None
    stop_ids: tuple[int, ...]
    suppressed: tuple[int, ...]
    cache: str | None
    refresh: str | int
    threshold: float | None
    factor: float | None
    generator: torch.Generator | None
    progress: bool
    shift: int

    @property
    def num_blocks(self) -> int:
        return self.gen_length // self.block_length

    @property
    def steps_per_block(self) -> int:
        return self.steps // self.num_blocks

    @property
    def parallel(self) -> bool:
        """Whether a step may transfer more than the schedule's count (``threshold`` or
        ``factor``), so that a block can end before its last step."""
        return self.threshold is not None or self.factor is not None

    def is_refresh(self, step_in_block: int) -> bool:
        """Whether a cached run does a full forward (refilling the cache) at this step of a
        block: its first step, and with ``refresh=n`` every n-th step."""
        if step_in_block == 0:
            return True
        return self.refresh != "block" and step_in_block % self.refresh == 0


def check_generation_args(
    *, gen_length: int, steps: int, block_length: int | None, temperature: float, remasking: str,
    pruning: PruningConfig | None, generator: torch.Generator | None = None,
    cache: str | None = None, refresh: str | int = "block", threshold: float | None = None,
    factor: float | None = None, names: Mapping[str, str] | None = None,
) -> tuple[int, int, int, float]:
    """Check the sampler's schedule arguments (no model needed, so front ends such as
    `dvtp.vlm.answer` can check them before any forward).

    Returns ``(gen_length, steps, block_length, temperature)`` normalised
    (``block_length=None`` -> ``gen_length``). Raises ValueError/TypeError naming the
    argument; ``names`` (see `ArgumentNames`) renames the arguments in the messages, so
    the command line can name its options.
    """
    n = ArgumentNames(names)
    gen_length = _positive_int(gen_length, n("gen_length"))
    steps = _positive_int(steps, n("steps"))
    block_length = gen_length if block_length is None else _positive_int(block_length, n("block_length"))
    if gen_length % block_length:
        raise ValueError(f"{n.show('gen_length', gen_length)} must be a multiple of "
                         f"{n.show('block_length', block_length)}")
    num_blocks = gen_length // block_length
    if steps % num_blocks:
        raise ValueError(
            f"{n.show('steps', steps)} must be divisible by the number of blocks "
            f"({n('gen_length')} / {n('block_length')} = {num_blocks})"
        )
    if steps > gen_length:
        # steps // num_blocks > block_length: some steps of every block would transfer nothing
        # and still cost a forward
        raise ValueError(
            f"{n.show('steps', steps)} exceeds {n.show('gen_length', gen_length)}: each denoising step "
            f"transfers at least one token, so a block of {block_length} tokens takes at most "
            f"{block_length} steps ({n('steps')} <= {n('gen_length')})"
        )
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real) \
            or not (math.isfinite(float(temperature)) and temperature >= 0):
        raise ValueError(f"{n('temperature')} must be a finite number >= 0, got {temperature!r}")
    if remasking not in REMASKING:
        raise ValueError(f"{n('remasking')} must be one of {REMASKING}, got {remasking!r}")
    if pruning is not None and not isinstance(pruning, PruningConfig):
        raise TypeError(f"pruning must be a dvtp.PruningConfig or None, got {type(pruning).__name__}")
    if pruning is not None and pruning.prune_step > steps // num_blocks:
        raise ValueError(
            f"{n.show('pruning.prune_step', pruning.prune_step)} exceeds the steps of block 0 "
            f"({n('steps')} / number of blocks = {steps // num_blocks})"
        )
    if pruning is not None and pruning.prune_step == steps:
        # after the last step nothing runs on the pruned sequence (and no row is left masked)
        raise ValueError(
            f"{n.show('pruning.prune_step', pruning.prune_step)} is the last denoising step "
            f"({n.show('steps', steps)}): no step would run on the pruned sequence; prune at an earlier "
            "step or use more steps"
        )
    if generator is not None and not _is_generator(generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    if cache not in CACHE_MODES:
        raise ValueError(f"{n('cache')} must be None, 'prefix' or 'dual', got {cache!r}")
    if not (refresh == "block" or (_is_int(refresh) and refresh >= 1)):
        raise ValueError(f"{n('refresh')} must be 'block' or a positive int (refresh every n steps), got {refresh!r}")
    if cache is None and refresh != "block":
        raise ValueError(f"{n.show('refresh', refresh)} needs a cache ({n('cache')} prefix or dual); "
                         "without one every step is a full forward")
    if threshold is not None and (
        isinstance(threshold, bool) or not isinstance(threshold, numbers.Real)
        or not math.isfinite(float(threshold)) or not threshold > 0
    ):
        raise ValueError(f"{n('threshold')} must be a finite number > 0 (a confidence, e.g. 0.9), "
                         f"got {threshold!r}")
    if factor is not None and (
        isinstance(factor, bool) or not isinstance(factor, numbers.Real)
        or not math.isfinite(float(factor)) or not factor > 0
    ):
        raise ValueError(f"{n('factor')} must be a finite number > 0 (Fast-dLLM's factor, e.g. 1.0), got {factor!r}")
    if threshold is not None and factor is not None:
        raise ValueError(
            f"{n.show('threshold', threshold)} and {n.show('factor', factor)} are two parallel-decoding rules: "
            "give one of them"
        )
    return gen_length, steps, block_length, float(temperature)


def check_model(model) -> None:
    """The sampler needs a transformers language model in eval mode."""
    import torch

    if not isinstance(model, torch.nn.Module) or not callable(getattr(model, "get_input_embeddings", None)) \
            or getattr(model, "config", None) is None:
        raise TypeError(
            "model must be a transformers language model (e.g. dvtp.models.llada_lm(...), dvtp.load(path)), "
            f"got {type(model).__name__}"
        )
    if model.training:
        raise ValueError(
            f"model ({type(model).__name__}) is in training mode, where dropout would randomise every step: "
            "call model.eval() first"
        )


def _resolve_suppressed(suppress_tokens, vocab: int) -> tuple[int, ...]:
    if suppress_tokens is None:
        return ()
    if isinstance(suppress_tokens, str):
        if suppress_tokens != "llada":
            raise ValueError(f"suppress_tokens must be 'llada', None or a list of ids, got {suppress_tokens!r}")
        return tuple(i for i in LLADA_SUPPRESSED_IDS if i < vocab)
    ids = []
    for i in suppress_tokens:
        if not _is_int(i) or not -vocab <= i < vocab:
            raise ValueError(f"suppress_tokens entries must be ids in [-vocab_size, vocab_size) = [{-vocab}, {vocab}), got {i!r}")
        ids.append(int(i) % vocab)  # negative ids count from the end of the vocabulary
    return tuple(sorted(set(ids)))


def _resolve_stop(stop_tokens, vocab: int) -> tuple[int, ...]:
    if stop_tokens is None:
        return ()
    ids = [stop_tokens] if _is_int(stop_tokens) else list(stop_tokens)
    if not all(_is_int(i) for i in ids):
        raise ValueError(f"stop_tokens must be an id or a list of ids, got {stop_tokens!r}")
    bad = [i for i in ids if not 0 <= i < vocab]
    if bad:
        # an id the model can never produce would silently never stop anything
        raise ValueError(f"stop_tokens must be ids in the vocabulary [0, vocab_size={vocab}), got {bad[0]!r}")
    return tuple(int(i) for i in ids)


def max_positions(model) -> int | None:
    """The language model's ``max_position_embeddings`` (a VLM's text config's), or None."""
    config = model.config
    text = config.get_text_config() if callable(getattr(config, "get_text_config", None)) else config
    limit = getattr(text, "max_position_embeddings", None)
    return int(limit) if _is_int(limit) else None


def check_positions(model, prompt_lengths, gen_length: int) -> None:
    """Refuse a prompt whose length plus ``gen_length`` exceeds the model's position range.

    Checked on the unpruned lengths: the first steps (pruning comes after its scoring step)
    run the whole prompt, at positions ``0 .. P + gen_length - 1`` -- and with
    ``renumber_positions=False`` the kept tokens keep those positions for good. In a batch
    the longest item decides (every item is numbered from 0 on its own).
    """
    limit = max_positions(model)
    if limit is None:
        return
    longest = max(prompt_lengths)
    if longest + gen_length > limit:
        which = "the prompt" if len(prompt_lengths) == 1 else \
            f"the longest prompt of the batch (item {list(prompt_lengths).index(longest)})"
        raise ValueError(
            f"{which} has {longest} tokens; with gen_length={gen_length} the sequence needs "
            f"{longest + gen_length} positions, more than the model's max_position_embeddings={limit}: "
            "shorten the prompt or gen_length"
        )


def _check_backend_usable(pruning: PruningConfig, device: torch.device) -> None:
    """An explicit pruning backend that cannot run here fails before the first forward."""
    from dvtp_kernels import BackendError, dispatch

    ops = dispatch.OPS if pruning.needs_scores else ("select_visual_tokens", "gather_compact")
    reasons = sorted({r for op in ops for r in dispatch.not_supported_reasons(pruning.backend, op, device)})
    if reasons:
        raise BackendError(
            f"pruning.backend={pruning.backend!r} cannot run on {device} tensors: " + "; ".join(reasons)
        )


def resolve_request(
    model, device: torch.device, *, gen_length, steps, block_length, temperature, remasking, mask_id,
    pruning, stop_tokens, suppress_tokens, generator, cache, refresh, threshold, progress, factor=None,
) -> GenerationRequest:
    """Check every generation argument against ``model`` (on ``device``) and freeze them."""
    from ..attention import attention_modules

    vocab = model.get_input_embeddings().weight.shape[0]
    gen_length, steps, block_length, temperature = check_generation_args(
        gen_length=gen_length, steps=steps, block_length=block_length, temperature=temperature,
        remasking=remasking, pruning=pruning, generator=generator, cache=cache, refresh=refresh,
        threshold=threshold, factor=factor,
    )
    if mask_id is None:
        mask_id = getattr(model.config, "mask_token_id", None)
        if mask_id is None:
            raise ValueError("mask_id is required (the model config has no mask_token_id)")
    if not _is_int(mask_id) or not 0 <= mask_id < vocab:
        raise ValueError(f"mask_id must be an id in [0, vocab_size={vocab}), got {mask_id!r}")
    if generator is not None and generator.device != device and (temperature > 0 or remasking == "random"):
        # draws are made where the logits are: a generator elsewhere would cost a copy per step
        raise ValueError(
            f"generator is on {generator.device} but the model runs on {device}: "
            f"create it with torch.Generator(device={str(device)!r})"
        )
    if pruning is not None:
        if pruning.backend is not None:
            _check_backend_usable(pruning, device)
        num_layers = len(attention_modules(model))
        if pruning.score_layers is not None and max(pruning.score_layers) >= num_layers:
            raise ValueError(
                f"pruning.score_layers={list(pruning.score_layers)} names a layer >= the model's "
                f"{num_layers} attention layers"
            )
    return GenerationRequest(
        gen_length=gen_length, steps=steps, block_length=block_length, temperature=temperature,
        remasking=remasking, mask_id=int(mask_id), pruning=pruning, stop_ids=_resolve_stop(stop_tokens, vocab),
        suppressed=_resolve_suppressed(suppress_tokens, vocab), cache=cache, refresh=refresh,
        threshold=None if threshold is None else float(threshold),
        factor=None if factor is None else float(factor), generator=generator,
        progress=bool(progress), shift=int(getattr(model, "logits_shift", 0)),
    )
