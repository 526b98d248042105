"""The LLaDA diffusion sampler with RedVTP visual-token pruning.

Semantics (docs/semantics.md): the response of ``gen_length`` mask tokens is generated
in ``gen_length // block_length`` blocks, left to right, with ``steps // num_blocks``
denoising steps per block. Before a block's first step its masked positions are counted
and split into equal per-step transfer counts (the first ``count % steps`` steps take
one more). Each step runs the whole sequence through the model, predicts every masked
position (argmax; Gumbel noise on the logits when ``temperature > 0``), and transfers
the ``k`` predictions with the highest softmax probability ("low_confidence" remasking)
or ``k`` random ones ("random"), only from masked positions not beyond the current
block. Masks are detected by value, so a transferred prediction that *is* the mask id
stays masked. Ties in confidence go to the lower position (deterministic; LLaDA's
``torch.topk`` leaves them unspecified).

Pruning (`PruningConfig`): at block 0, step ``prune_step``, the forward runs with the
dvtp attention hook scoring (every response row against every visual token, summed over
heads and layers into a float32 ``[B, gen_length, Vmax]`` buffer, no attention maps);
after that step's transfer, the response rows that still hold the mask id select
which of those rows count, `dvtp_kernels.select_visual_tokens` picks the kept tokens and
one `dvtp_kernels.gather_compact` call compacts the prompt-side tensors. All later steps
run on the shorter sequence.

Layout (`dvtp.batching.sequence_layout`): the sampler keeps full-sequence,
sequence-aligned state (embeddings, token ids, original position ids) plus the response
ids in response coordinates ``0..gen_length-1`` (block logic, mask bookkeeping). Item b
occupies the first ``seq_len[b]`` slots of a ``[B, N]`` sequence as ``[prompt_b | response]``
followed by padding: from the start when prompts differ in length (``seq_len[b] = P_b +
gen_length``), and after pruning when items keep different numbers of tokens (one
`gather_compact` call with the index from `select_visual_tokens` compacts the
sequence-aligned tensors into that same layout). The response starts at ``seq_len[b] -
gen_length`` (its logits are read at those positions through ``logits_to_keep``), padding
is hidden by a ``[B, N]`` key-valid vector (an SDPA ``[B, 1, 1, N]`` mask, never N x N),
and ``arange`` positions number every item exactly as if it ran alone, because every item
starts at slot 0. Dream's one-position logit shift stays correct because nothing is
inserted between an item's prompt and its response. When every item has the same length
there is no mask and ``logits_to_keep = gen_length``.

Several images in one prompt: see `dvtp.spans` (joint selection over the item's visual
tokens; text between the images is always kept).
"""
from __future__ import annotations

import numbers
import time
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import torch
import torch.nn.functional as F

import dvtp_kernels

from .attention import attention_modules, patched
from .batching import resolve_prompt, sequence_layout
from .config import PruningConfig
from .models import LLADA_SUPPRESSED_IDS
from .policies import PolicyContext, get_policy
from .spans import SpanGeometry, resolve_visual_spans

__all__ = ["generate", "GenerationOutput", "check_generation_args", "check_model", "num_transfer_tokens", "kernel_backends"]

_REMASKING = ("low_confidence", "random")


@dataclass
class GenerationOutput:
    """Result and statistics of `generate`.

    Attributes:
        sequences: ``[B, gen_length]`` int64 generated ids (positions left unfinished by
            an early stop keep the mask id).
        num_forwards: model forwards run (one per denoising step).
        step_times: wall time of each denoising step in seconds (forward, sampling and,
            at the pruning step, scoring and compaction).
        tokens_per_step: sequence length each step's forward ran on (padded, response
            included): the "before" value until the pruning step, the "after" one later.
        seq_len_before / seq_len_after: per item, tokens before / after pruning, prompt and
            response, padding excluded (equal when nothing was pruned).
        kept_indices: per item, ascending visual-local indices of the kept visual tokens:
            indices into the concatenation of the item's visual tokens in span order
            (int64, on CPU), or None when the item was not pruned (no pruning, no span).
        importance: per item, the importance the selection ranked its visual tokens by
            (float32 ``[n_visual_b]`` on CPU, visual-local indices as ``kept_indices``: the
            policy's scores summed over its still-masked rows; for "redvtp" the attention
            they pay to each token summed over heads and scored layers), or None when the
            item was not pruned.
        visual_spans: per item, its resolved ``(start, length)`` pairs in item coordinates,
            sorted, zero-length ones dropped; ``[]`` for a text-only item.
        prompt_lengths: per item, its prompt length ``P_b`` (padding excluded).
        pruned_at_step: index (0-based, over all steps) of the step after which the
            sequence was pruned, or None.
        scoring_time: wall time of the scoring step's forward (None without scoring).
        prune_time: wall time of selection + compaction (None without pruning).
        scored_layers: layers whose attention fed the scores at the scoring step.
        lse_from_attention: whether every scored layer took its row log-sum-exp from the
            attention kernel (else the score op computed it for the response rows).
        backends: kernel backend per dvtp op used for the pruning (empty without pruning).
        stop_positions: per item, first response index holding a stop token, or -1.
        stopped_early: generation ended before its last scheduled step (every item was done
            with its stop token, see ``stop_tokens``).
    """

    sequences: torch.Tensor
    num_forwards: int = 0
    step_times: list[float] = field(default_factory=list)
    tokens_per_step: list[int] = field(default_factory=list)
    seq_len_before: list[int] = field(default_factory=list)
    seq_len_after: list[int] = field(default_factory=list)
    kept_indices: list[torch.Tensor | None] = field(default_factory=list)
    importance: list[torch.Tensor | None] = field(default_factory=list)
    visual_spans: list[list[tuple[int, int]]] = field(default_factory=list)
    prompt_lengths: list[int] = field(default_factory=list)
    pruned_at_step: int | None = None
    scoring_time: float | None = None
    prune_time: float | None = None
    scored_layers: list[int] = field(default_factory=list)
    lse_from_attention: bool | None = None
    backends: dict[str, str] = field(default_factory=dict)
    stop_positions: list[int] = field(default_factory=list)
    stopped_early: bool = False

    @property
    def total_time(self) -> float:
        return float(sum(self.step_times))

    @property
    def kept_counts(self) -> list[int | None]:
        return [None if k is None else int(k.numel()) for k in self.kept_indices]


# ----------------------------------------------------------------------------------------
# argument checks
# ----------------------------------------------------------------------------------------


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _positive_int(value, name: str) -> int:
    if not _is_int(value) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def _resolve_suppressed(suppress_tokens, vocab: int) -> list[int]:
    if suppress_tokens is None:
        return []
    if isinstance(suppress_tokens, str):
        if suppress_tokens != "llada":
            raise ValueError(f"suppress_tokens must be 'llada', None or a list of ids, got {suppress_tokens!r}")
        return [i for i in LLADA_SUPPRESSED_IDS if i < vocab]
    ids = []
    for i in suppress_tokens:
        if not _is_int(i) or not -vocab <= i < vocab:
            raise ValueError(f"suppress_tokens entries must be ids in [-vocab_size, vocab_size) = [{-vocab}, {vocab}), got {i!r}")
        ids.append(int(i) % vocab)  # negative ids count from the end of the vocabulary
    return sorted(set(ids))


def _resolve_stop(stop_tokens) -> list[int]:
    if stop_tokens is None:
        return []
    if _is_int(stop_tokens):
        return [int(stop_tokens)]
    ids = list(stop_tokens)
    if not all(_is_int(i) for i in ids):
        raise ValueError(f"stop_tokens must be an id or a list of ids, got {stop_tokens!r}")
    return [int(i) for i in ids]


# ----------------------------------------------------------------------------------------
# sampler pieces
# ----------------------------------------------------------------------------------------


def check_generation_args(
    *, gen_length: int, steps: int, block_length: int | None, temperature: float, remasking: str,
    pruning: PruningConfig | None, generator: torch.Generator | None = None,
) -> tuple[int, int, int, float]:
    """Check the sampler's schedule arguments (no model needed, so front ends such as
    `dvtp.vlm.answer` can check them before any forward).

    Returns ``(gen_length, steps, block_length, temperature)`` normalised
    (``block_length=None`` -> ``gen_length``). Raises ValueError/TypeError naming the argument.
    """
    gen_length = _positive_int(gen_length, "gen_length")
    steps = _positive_int(steps, "steps")
    block_length = gen_length if block_length is None else _positive_int(block_length, "block_length")
    if gen_length % block_length:
        raise ValueError(
            f"gen_length={gen_length} must be a multiple of block_length={block_length}"
        )
    num_blocks = gen_length // block_length
    if steps % num_blocks:
        raise ValueError(
            f"steps={steps} must be divisible by the number of blocks "
            f"(gen_length // block_length = {num_blocks})"
        )
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real) or not temperature >= 0:
        raise ValueError(f"temperature must be a number >= 0, got {temperature!r}")
    if remasking not in _REMASKING:
        raise ValueError(f"remasking must be one of {_REMASKING}, got {remasking!r}")
    if pruning is not None and not isinstance(pruning, PruningConfig):
        raise TypeError(f"pruning must be a dvtp.PruningConfig or None, got {type(pruning).__name__}")
    if pruning is not None and pruning.prune_step > steps // num_blocks:
        raise ValueError(
            f"pruning.prune_step={pruning.prune_step} exceeds the steps of block 0 "
            f"(steps // num_blocks = {steps // num_blocks})"
        )
    if pruning is not None and pruning.prune_step == steps:
        # after the last step nothing runs on the pruned sequence (and no row is left masked)
        raise ValueError(
            f"pruning.prune_step={pruning.prune_step} is the last denoising step (steps={steps}): no step "
            "would run on the pruned sequence; prune at an earlier step"
        )
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    return gen_length, steps, block_length, float(temperature)


def check_model(model) -> None:
    """The sampler needs a transformers language model in eval mode."""
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


def _check_backend_usable(pruning: PruningConfig, device: torch.device) -> None:
    """An explicit pruning backend that cannot run here fails before the first forward."""
    from dvtp_kernels import BackendError, dispatch

    ops = dispatch.OPS if pruning.needs_scores else ("select_visual_tokens", "gather_compact")
    reasons = sorted({r for op in ops for r in dispatch.not_supported_reasons(pruning.backend, op, device)})
    if reasons:
        raise BackendError(
            f"pruning.backend={pruning.backend!r} cannot run on {device} tensors: " + "; ".join(reasons)
        )


def num_transfer_tokens(block_mask: torch.Tensor, steps: int) -> torch.Tensor:
    """``[B, steps]`` int64: equal split of each item's masked count, remainder to the first steps."""
    count = block_mask.sum(dim=1, keepdim=True)
    base, rem = count // steps, count % steps
    step = torch.arange(steps, device=block_mask.device).unsqueeze(0)
    return base + (step < rem).to(torch.int64)


def kernel_backends(device: torch.device, backend: str | None = None) -> dict[str, str]:
    """Which backend each dvtp op picks for tensors on ``device`` (as `dvtp_kernels.dispatch` would)."""
    import os

    from dvtp_kernels import dispatch

    chosen = {}
    requested = backend or os.environ.get("DVTP_BACKEND") or None
    for op in dispatch.OPS:
        if requested:
            chosen[op] = requested
            continue
        for name in dispatch.DEFAULT_ORDER.get(device.type, ("reference",)):
            if not dispatch.not_supported_reasons(name, op, device):
                chosen[op] = name
                break
        else:
            chosen[op] = "none"
    return chosen


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _StepClock:
    """Wall time of each denoising step without a host sync per step: on CUDA, events
    recorded on the stream are read once after the loop; on CPU, perf_counter."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.marks: list = []

    def mark(self) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append(event)
        else:
            self.marks.append(time.perf_counter())

    def durations(self) -> list[float]:
        pairs = list(zip(self.marks, self.marks[1:]))
        if self.cuda:
            if self.marks:
                self.marks[-1].synchronize()
            return [a.elapsed_time(b) / 1e3 for a, b in pairs]
        return [b - a for a, b in pairs]


def _gen_rand(shape, generator, device, dtype=torch.float64):
    if generator is not None and generator.device != device:
        return torch.rand(shape, generator=generator, dtype=dtype).to(device)
    return torch.rand(shape, generator=generator, dtype=dtype, device=device)


# ----------------------------------------------------------------------------------------
# generate
# ----------------------------------------------------------------------------------------


@torch.no_grad()
def generate(
    model: torch.nn.Module,
    inputs: torch.Tensor | Sequence[torch.Tensor] | None = None,
    *,
    input_ids: torch.Tensor | Sequence[torch.Tensor] | None = None,
    inputs_embeds: torch.Tensor | Sequence[torch.Tensor] | None = None,
    attention_mask: torch.Tensor | None = None,
    visual_span=None,
    gen_length: int = 128,
    steps: int = 128,
    block_length: int | None = None,
    temperature: float = 0.0,
    remasking: str = "low_confidence",
    mask_id: int | None = None,
    pruning: PruningConfig | None = None,
    stop_tokens: int | Iterable[int] | None = None,
    suppress_tokens: str | Sequence[int] | None = "llada",
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> GenerationOutput:
    """Generate ``gen_length`` tokens with the LLaDA diffusion sampler, pruning visual tokens.

    Every item's result equals that item run alone (batch size 1), whatever the other
    items' prompt lengths and spans (up to float rounding of the padded batch's kernels).

    Args:
        model: a bidirectional transformers LM (`dvtp.models.llada_lm` / `dream_lm`, or any
            model going through transformers' AttentionInterface; it is run under
            `dvtp.patched`, which makes attention bidirectional). Its ``logits[:, i]``
            must predict token i (DreamLM applies Dream's shift itself).
        inputs: the prompt (or use ``input_ids=`` / ``inputs_embeds=``): token ids ``[B, P]``
            or embeddings ``[B, P, hidden]`` (e.g. text embeddings with projected image
            features spliced in); or a list of per-item tensors of different lengths, all
            ids ``[P_b]`` or all embeddings ``[P_b, hidden]`` (``[1, P_b]`` / ``[1, P_b,
            hidden]`` also accepted). See `dvtp.batching`.
        attention_mask: with a padded tensor prompt, ``[B, P]`` bool or 0/1 ints, True =
            real token: the real tokens of row b, in order, are item b's prompt (left or
            right padding). Not allowed with a list. Default: every token is real.
        visual_span: where the visual tokens are, in item coordinates (indices into the
            item's own prompt, padding excluded): None (text only, never pruned); one
            ``(start, length)`` pair for every item; or a list of one entry per item, each
            None, one pair, or a list of pairs (several images; sorted by start,
            non-overlapping). Checked by `dvtp.spans.resolve_visual_spans`.
        gen_length: response length; a multiple of ``block_length``.
        steps: denoising steps in all; divisible by the number of blocks.
        block_length: semi-autoregressive block size (default ``gen_length``: one block).
        temperature: 0 = greedy; > 0 adds Gumbel noise (float64) to the logits.
        remasking: "low_confidence" (transfer the most probable predictions) or "random".
        mask_id: the mask token id (default ``model.config.mask_token_id``).
        pruning: a `PruningConfig`, or None for no pruning. An item with several spans is
            pruned jointly over all its images: it keeps ``max(1, floor(n_visual *
            keep_ratio))`` of the union of its visual tokens (the most important ones,
            whichever image they are in), and always keeps the text between its images;
            the policy sees the item's visual tokens concatenated in span order, the same
            indices as ``kept_indices`` (details in `dvtp.spans`).
        stop_tokens: id(s), with LLaDA-V's stopping: once an item's response holds one,
            only the masks before its first stop token are filled, and the item is done
            when none is left (or generation has moved past that token's block);
            generation ends when every item is done (``stopped_early``). Positions after
            an item's stop token may stay masked. One host sync per step (docs/semantics.md).
        suppress_tokens: ids whose logits are -inf at masked positions: "llada" (default:
            126081, 126080, 126346, 126347, those below the vocabulary size), None, or a
            list of ids (negative ids count from the end of the vocabulary).
        generator: RNG for Gumbel noise and random remasking (default: the global RNG).
        progress: show a tqdm bar over the steps.

    Returns:
        `GenerationOutput`.
    """
    check_model(model)
    prompt = resolve_prompt(
        model, inputs, input_ids=input_ids, inputs_embeds=inputs_embeds, attention_mask=attention_mask
    )
    B, _, hidden = prompt.embeds.shape
    device = prompt.embeds.device
    embedding = model.get_input_embeddings()
    vocab = embedding.weight.shape[0]

    gen_length, steps, block_length, temperature = check_generation_args(
        gen_length=gen_length, steps=steps, block_length=block_length,
        temperature=temperature, remasking=remasking, pruning=pruning, generator=generator,
    )
    num_blocks = gen_length // block_length
    steps_per_block = steps // num_blocks
    if mask_id is None:
        mask_id = getattr(model.config, "mask_token_id", None)
        if mask_id is None:
            raise ValueError("mask_id is required (the model config has no mask_token_id)")
    if not _is_int(mask_id) or not 0 <= mask_id < vocab:
        raise ValueError(f"mask_id must be an id in [0, vocab_size={vocab}), got {mask_id!r}")
    geometry = SpanGeometry.from_spans(resolve_visual_spans(visual_span, prompt.lengths))
    suppressed = _resolve_suppressed(suppress_tokens, vocab)
    stop_ids = _resolve_stop(stop_tokens)
    if pruning is not None:
        if pruning.backend is not None:
            _check_backend_usable(pruning, device)
        num_layers = len(attention_modules(model))
        if pruning.score_layers is not None and max(pruning.score_layers) >= num_layers:
            raise ValueError(
                f"pruning.score_layers={list(pruning.score_layers)} names a layer >= the model's "
                f"{num_layers} attention layers"
            )

    # The score buffer spans each item's range (first span's start to last span's end).
    vmax = max(geometry.key_len)
    will_prune = pruning is not None and vmax > 0
    policy = get_policy(pruning.policy) if will_prune else None

    G = gen_length
    layout = sequence_layout([p + G for p in prompt.lengths], G, device)
    N = layout.length
    # Full-sequence state, sequence-aligned (these are what pruning compacts): embeddings
    # (response rows refreshed from the ids every step), token ids (-1 where the prompt
    # was given as embeddings, and at padding), and the original position ids (for
    # renumber_positions=False: every item starts at slot 0, so arange is its own).
    resp = torch.full((B, G), mask_id, dtype=torch.int64, device=device)
    x_embeds = torch.cat([prompt.embeds, prompt.embeds.new_zeros((B, G, hidden))], dim=1)
    x_ids = torch.cat([prompt.ids, torch.full((B, G), -1, dtype=torch.int64, device=device)], dim=1)
    _write_response(x_ids, x_embeds, layout.resp_idx, resp, embedding)
    keep_positions = will_prune and not pruning.renumber_positions
    x_pos = torch.arange(N, device=device).expand(B, N) if keep_positions else None
    position_ids = None  # None = arange over the sequence (the reference passes none)

    out = GenerationOutput(
        sequences=resp,
        seq_len_before=list(layout.seq_lens),
        seq_len_after=list(layout.seq_lens),
        kept_indices=[None] * B,
        importance=[None] * B,
        visual_spans=geometry.spans,
        prompt_lengths=list(prompt.lengths),
    )
    stop_tensor = torch.tensor(stop_ids, dtype=torch.int64, device=device) if stop_ids else None

    from tqdm.auto import tqdm

    bar = tqdm(total=steps, disable=not progress, desc="dvtp.generate", unit="step")
    global_step = 0
    clock = _StepClock(device)
    positions = torch.arange(G, device=device).unsqueeze(0)
    stop_pos = torch.full((B,), G, dtype=torch.int64, device=device)  # first stop token (G: none yet)
    finished = False
    with patched(model) as hook, bar:
        for block in range(num_blocks):
            block_start, block_end = block * block_length, (block + 1) * block_length
            block_mask = resp[:, block_start:block_end] == mask_id
            transfers = num_transfer_tokens(block_mask, steps_per_block)
            for step in range(steps_per_block):
                t0 = time.perf_counter()
                if step == 0 and block == 0:
                    clock.mark()
                mask_index = resp == mask_id
                limit = block_end
                if stop_tensor is not None:
                    # LLaDA-V's stopping (docs/semantics.md): once an item holds a stop token
                    # it only fills the masks before it, and it is finished when none is left
                    # or the generation has moved past the stop token's block.
                    found = stop_pos < G
                    pending = (mask_index & (positions < stop_pos.unsqueeze(1))).any(dim=1) & (stop_pos > block_start)
                    active = ~found | pending
                    if not bool(active.any()):  # one host sync per step, only with stop tokens
                        finished = True
                        break
                    limit = torch.where(active, torch.where(found, stop_pos, block_end), 0)
                scoring = will_prune and block == 0 and step == pruning.prune_step - 1
                if scoring and policy.needs_scores:
                    # Scoring precedes pruning, so the response rows start at P_b.
                    scores = torch.zeros((B, G, vmax), dtype=torch.float32, device=device)
                    with hook.scoring(
                        scores, prompt.lengths, geometry.key_start, geometry.key_len,
                        layers=pruning.score_layers, backend=pruning.backend,
                    ) as state:
                        logits = _forward(model, x_embeds, layout, position_ids)
                    _sync(device)
                    out.scoring_time = time.perf_counter() - t0
                    out.scored_layers = list(state.scored_layers)
                    out.lse_from_attention = bool(state.lse_from_kernel) and all(state.lse_from_kernel)
                else:
                    scores = None
                    logits = _forward(model, x_embeds, layout, position_ids)
                out.num_forwards += 1
                out.tokens_per_step.append(int(x_embeds.shape[1]))

                transfer, resp = _denoise_step(
                    logits, resp, mask_index, transfers[:, step], limit, mask_id,
                    temperature, remasking, suppressed, generator,
                )
                _write_response(x_ids, x_embeds, layout.resp_idx, resp, embedding)
                if stop_tensor is not None:
                    hits = torch.isin(resp, stop_tensor)
                    first = torch.where(hits.any(dim=1), hits.to(torch.int64).argmax(dim=1), G)
                    stop_pos = torch.minimum(stop_pos, first)

                if scoring:
                    t1 = time.perf_counter()
                    # The scoring rows are the published ones (docs/semantics.md): masked
                    # before this step and not transferred by it. A transferred prediction that
                    # is the mask id itself is not a row here, though later steps, which detect
                    # masks by value, treat it as masked again.
                    row_mask = mask_index & ~transfer
                    # With text between an item's images the policy sees its visual tokens
                    # only (visual-local columns); the text columns come back protected.
                    columns = geometry.visual_columns(device) if geometry.has_protected else None
                    visual_scores = scores if columns is None or scores is None else geometry.visual_view(scores, columns)
                    ctx = PolicyContext(pruning, row_mask, geometry.n_visual, visual_scores, device)
                    sel_scores, sel_rows = policy.importance(ctx)
                    ranked_by = (sel_scores * sel_rows.unsqueeze(-1)).sum(dim=1).cpu()
                    if columns is None:
                        keep = dict(keep_ratio=pruning.keep_ratio)
                    else:
                        sel_scores = geometry.range_scores(sel_scores, columns)
                        keep = dict(keep=geometry.keep_counts(pruning.keep_ratio))
                    gather_index, new_len, keep_index, keep_count = dvtp_kernels.select_visual_tokens(
                        sel_scores, sel_rows, layout.seq_lens, geometry.key_start, geometry.key_len,
                        backend=pruning.backend, **keep,
                    )
                    tensors = [x_embeds, x_ids] + ([x_pos] if keep_positions else [])
                    compacted = dvtp_kernels.gather_compact(
                        tensors, gather_index, new_len, dims=1, pad_value=0, backend=pruning.backend
                    )
                    x_embeds, x_ids = compacted[0], compacted[1]
                    # renumbered: arange(N') gives every item arange over its own tokens
                    position_ids = compacted[2] if keep_positions else None
                    layout = sequence_layout(new_len.tolist(), G, device)
                    out.kept_indices = geometry.kept_visual(keep_index.cpu(), keep_count.tolist())
                    out.importance = [
                        None if kept is None else ranked_by[b, : geometry.n_visual[b]]
                        for b, kept in enumerate(out.kept_indices)
                    ]
                    out.seq_len_after = list(layout.seq_lens)
                    out.pruned_at_step = global_step
                    out.backends = kernel_backends(device, pruning.backend)
                    _sync(device)
                    out.prune_time = time.perf_counter() - t1

                clock.mark()
                global_step += 1
                bar.update(1)
            if finished:
                break
    out.stopped_early = finished
    out.step_times = clock.durations()
    out.sequences = resp
    out.stop_positions = torch.where(stop_pos < G, stop_pos, -1).tolist()
    return out


def _write_response(x_ids, x_embeds, resp_idx, resp, embedding) -> None:
    """Write the response ids ``[B, G]`` (and their embeddings) into their slots ``resp_idx``."""
    B, G = resp.shape
    x_ids.scatter_(1, resp_idx, resp)
    x_embeds.scatter_(1, resp_idx.unsqueeze(-1).expand(B, G, x_embeds.shape[2]), embedding(resp))


def _forward(model, embeds, layout, position_ids):
    """Response-row logits ``[B, G, V]`` at the layout's response slots: ``logits_to_keep``
    is G (the response is every item's tail) or the ``[B, G]`` slots (items padded)."""
    return model(
        inputs_embeds=embeds,
        attention_mask=layout.attention_mask,
        position_ids=position_ids,
        logits_to_keep=layout.logits_to_keep,
        use_cache=False,
    ).logits


def _denoise_step(logits, resp, mask_index, k, limit, mask_id, temperature, remasking, suppressed, generator):
    """One LLaDA step on the response: -> (transfer [B, G] bool, new response ids).

    ``limit``: int or ``[B]`` int64, no position at or beyond it is transferred (the
    current block's end; an item's stop position once it has one; 0 once it is finished).
    At most ``k[b]`` positions are transferred, never one without a finite confidence."""
    B, G, _ = logits.shape
    logits = logits.to(torch.float64)
    if suppressed:
        idx = torch.tensor(suppressed, device=logits.device)
        logits[:, :, idx] = logits[:, :, idx].masked_fill(mask_index.unsqueeze(-1), float("-inf"))
    if temperature > 0:
        noise = _gen_rand(logits.shape, generator, logits.device)
        noisy = logits.exp() / (-torch.log(noise)) ** temperature
    else:
        noisy = logits
    x0 = noisy.argmax(dim=-1)
    if remasking == "low_confidence":
        p = F.softmax(logits, dim=-1)
        x0_p = torch.gather(p, -1, x0.unsqueeze(-1)).squeeze(-1)
    else:
        x0_p = _gen_rand((B, G), generator, logits.device)
    positions = torch.arange(G, device=logits.device).unsqueeze(0)
    limit = torch.as_tensor(limit, device=logits.device).reshape(-1, 1)
    x0 = torch.where(mask_index, x0, resp)
    confidence = torch.where(mask_index & (positions < limit), x0_p, torch.full_like(x0_p, float("-inf")))
    # top-k per item, equal confidence -> lower position (stable descending sort)
    ranked, order = torch.sort(confidence, dim=1, descending=True, stable=True)
    take = (positions < k.unsqueeze(1)) & (ranked > float("-inf"))
    transfer = torch.zeros_like(mask_index).scatter(1, order, take)
    return transfer, torch.where(transfer, x0, resp)
