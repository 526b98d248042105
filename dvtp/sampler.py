"""The LLaDA diffusion sampler, with RedVTP visual-token pruning and Fast-dLLM caching.

`generate` is one loop: for each block, for each step: forward -> denoise -> pruning hook
-> compaction. The pieces live in `dvtp.generation`: the checked, frozen request
(`request`), the sequence and its layout (`state`), the denoising step (`denoise`), the
K/V cache (`kv_cache`), the pruning step and its record (`pruning`), the output
(`output`). Exact semantics: docs/semantics.md.

Semantics in brief: the response of ``gen_length`` mask tokens is generated in
``gen_length // block_length`` blocks, left to right, with ``steps // num_blocks``
denoising steps per block; each step predicts the current block's masked positions and
transfers the most confident ones (`dvtp.generation.denoise`). Pruning (`PruningConfig`):
at block 0, step ``prune_step``, the forward also scores every response row against every
visual token (no attention maps); after that step's transfer the still-masked rows pick the
kept tokens and one `gather_compact` call compacts the sequence, after which every step
runs on the shorter sequence. With ``cache="prefix"``/``"dual"`` only refresh steps run
the whole sequence (filling the cache); the others run the current block (prefix: and
what follows it) against the cached K/V, which pruning compacts too.

Host synchronisation inside the loop: none per step, except one per step with a
``threshold`` or ``factor`` (is the block done?) and one at the pruning step (the pruned
lengths fix the next shapes). Stop tokens end the loop through a flag read without blocking
(`dvtp.generation.stopping.HostFlag`). Non-finite logits are recorded on the device every
step and read only at those syncs and once after the loop (`dvtp.generation.health`).
"""
from __future__ import annotations

import contextlib
import time
from typing import Iterable, Sequence

import torch

from .attention import attention_modules, patched
from .batching import resolve_prompt
from .config import PruningConfig
from .generation.denoise import Denoiser, num_transfer_tokens
from .generation.health import FiniteWatch, NonFiniteLogitsError
from .generation.kv_cache import DiffusionCache
from .generation.output import GenerationOutput
from .generation.pruning import prune, scoring_forward
from .generation.request import (
    GenerationRequest, check_generation_args, check_model, check_positions, resolve_request,
)
from .generation.state import SequenceState
from .generation.stopping import Stopping
from .policies import get_policy
from .spans import SpanGeometry, resolve_visual_spans

__all__ = [
    "generate", "GenerationOutput", "NonFiniteLogitsError", "check_generation_args", "check_model", "num_transfer_tokens",
]


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


class _ActiveWindow:
    """What a cached step runs: the active tokens of the current block and layout.

    Attributes:
        slots: ``[B, A]`` int64 sequence slots of the active tokens (prefix mode: response
            positions ``block_start - shift .. G - 1``; dual: ``.. block_end - 1``).
        cached: ``[B, N]`` bool, the cached rows the step reads (not padding, not the
            active tokens' own stale rows).
        key_valid: ``[B, 1, 1, N + A]`` bool: the cached rows the step may attend to (not
            padding, not the active tokens' own stale rows), then its fresh rows.
        logit_rows: ``[L]`` int64 rows of the active tokens whose logits are the block's.
    """

    def __init__(self, state: SequenceState, request: GenerationRequest, block_start: int, block_end: int):
        shift = request.shift
        end = request.gen_length if request.cache == "prefix" else block_end
        self.slots = state.response_slots(block_start - shift, end)
        B, A = self.slots.shape
        device = self.slots.device
        slot = torch.arange(state.length, device=device).unsqueeze(0)
        seq_end = state.layout.resp_idx[:, -1:] + 1
        active = (slot >= self.slots[:, :1]) & (slot <= self.slots[:, -1:])
        self.cached = (slot < seq_end) & ~active
        cached = self.cached
        self.key_valid = torch.cat([cached, cached.new_ones((B, A))], dim=1)[:, None, None, :]
        self.logit_rows = torch.arange(shift, shift + request.block_length, device=device)


def _full_forward(model, state: SequenceState, cache: DiffusionCache | None, rows: torch.Tensor) -> torch.Tensor:
    """Logits ``[B, L, V]`` of the response slots ``rows`` (`SequenceState.block_rows`) from a forward over the
    whole sequence (which refills ``cache`` when there is one)."""
    with cache.fill() if cache is not None else contextlib.nullcontext():
        return model(
            inputs_embeds=state.embeds, attention_mask=state.layout.attention_mask,
            position_ids=state.position_ids, cache=cache, logits_to_keep=rows, use_cache=False,
        ).logits


def _cached_forward(model, state: SequenceState, cache: DiffusionCache, window: _ActiveWindow) -> torch.Tensor:
    """Logits ``[B, L, V]`` of the current block from a forward over the active tokens only,
    attending to the cached K/V (a 4D key mask goes to the attention as it is)."""
    embeds, positions = state.gather_rows(window.slots)
    cache.read_rows(window.cached)
    return model(
        inputs_embeds=embeds, attention_mask=window.key_valid, position_ids=positions,
        cache=cache, logits_to_keep=window.logit_rows, use_cache=False,
    ).logits


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
    cache: str | None = None,
    refresh: str | int = "block",
    threshold: float | None = None,
    factor: float | None = None,
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
            must predict token i (DreamLM applies Dream's shift itself and says so with
            ``logits_shift = 1``).
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
        cache: None (every step runs the whole sequence), "prefix" or "dual" (Fast-dLLM's
            approximate K/V cache): refresh steps run the whole sequence and store every
            layer's K/V; the other steps run only the current block and what follows it
            ("prefix") or the current block alone ("dual"), attending to the cached K/V.
            The scoring step is always a full forward; after pruning the cache is compacted
            with the sequence (``renumber_positions=False``) or refilled by the next step
            (renumbered positions, the default), see docs/semantics.md.
        refresh: with a cache, when to refill it: "block" (each block's first step) or an
            int n (each block's first step and every n-th step of a block).
        threshold: None, or Fast-dLLM's confidence threshold (its ``get_transfer_index``):
            each step also transfers every masked position of the block whose confidence is
            at least ``threshold``, and a block ends as soon as it holds no mask
            (``forwards_per_block``). The schedule's count stays the minimum per step (one
            per step when ``steps == gen_length``).
        factor: None, or Fast-dLLM's factor rule (its ``get_transfer_index_dynamic``; what
            LLaDA-V's Fast-dLLM hook applies to its ``threshold`` argument): each step
            transfers the n most confident masked positions of the block, n the length of
            the run of ranked confidences with the n-th at least ``1 - factor / (n + 1)``
            (at least one; see docs/semantics.md for the published loop's edge case), and
            at least the schedule's count; a block ends as soon as it holds no mask. Not
            together with ``threshold``.
        stop_tokens: id(s) in ``[0, vocab_size)``, with LLaDA-V's stopping: once an item's response holds one,
            only the masks before its first stop token are filled, and the item is done
            when none is left (or generation has moved past that token's block);
            generation ends when every item is done (``stopped_early``; on CUDA the
            loop learns it without a sync, possibly a step late, which changes nothing). Positions after an item's stop token may stay masked.
        suppress_tokens: ids whose logits are -inf at masked positions: "llada" (default:
            126081, 126080, 126346, 126347, those below the vocabulary size), None, or a
            list of ids (negative ids count from the end of the vocabulary).
        generator: RNG for Gumbel noise and random remasking (default: the global RNG);
            on the model's device.
        progress: show a tqdm bar over the steps.

    Returns:
        `GenerationOutput`.

    Raises:
        ValueError / TypeError: a bad argument (before any forward), including a prompt whose
            length (in a batch: the longest) plus ``gen_length`` exceeds the model's
            ``max_position_embeddings``.
        NonFiniteLogitsError: the model produced NaN/inf logits (raised at the pruning step,
            before selection; at a threshold/factor step's check; or after the last step).
    """
    check_model(model)
    prompt = resolve_prompt(
        model, inputs, input_ids=input_ids, inputs_embeds=inputs_embeds, attention_mask=attention_mask
    )
    device = prompt.embeds.device
    req = resolve_request(
        model, device, gen_length=gen_length, steps=steps, block_length=block_length, temperature=temperature,
        remasking=remasking, mask_id=mask_id, pruning=pruning, stop_tokens=stop_tokens,
        suppress_tokens=suppress_tokens, generator=generator, cache=cache, refresh=refresh, threshold=threshold,
        factor=factor, progress=progress,
    )
    check_positions(model, prompt.lengths, req.gen_length)
    geometry = SpanGeometry.from_spans(resolve_visual_spans(visual_span, prompt.lengths))
    will_prune = req.pruning is not None and max(geometry.key_len) > 0
    policy = get_policy(req.pruning.policy) if will_prune else None
    prune_at = (0, req.pruning.prune_step - 1) if will_prune else None  # (block, step in block)

    G, L = req.gen_length, req.block_length
    state = SequenceState(
        prompt, G, req.mask_id, model.get_input_embeddings(),
        keep_positions=will_prune and not req.pruning.renumber_positions,
    )
    denoiser = Denoiser(req, device)
    watch = FiniteWatch(device)
    stopping = Stopping(req.stop_ids, len(prompt.lengths), G, req.mask_id, device) if req.stop_ids else None
    kv = DiffusionCache(len(attention_modules(model))) if req.cache else None
    out = GenerationOutput(
        sequences=state.resp, seq_len_before=list(state.layout.seq_lens),
        visual_spans=geometry.spans, prompt_lengths=list(prompt.lengths),
    )

    from tqdm.auto import tqdm

    clock = _StepClock(device)
    global_step, finished = 0, False
    with patched(model) as hook, tqdm(total=req.steps, disable=not req.progress, desc="dvtp.generate", unit="step") as bar:
        clock.mark()
        for block in range(req.num_blocks):
            bs, be = block * L, (block + 1) * L
            window = None  # a cached step's active tokens: per block, and rebuilt after pruning
            transfers = denoiser.schedule(state.resp[:, bs:be])  # fixed before the block's first step
            out.forwards_per_block.append(0)
            for step in range(req.steps_per_block):
                limit = None if stopping is None else stopping.limit(state.resp, bs, be)
                if stopping is not None and stopping.done:
                    finished = True
                    break
                if req.parallel and step > 0:
                    # did parallel decoding empty the block? (the one sync per step it costs,
                    # which also brings the non-finite-logits record at no extra cost)
                    more = denoiser.candidates(state.resp[:, bs:be], limit).any().to(torch.int64)
                    more, first_bad = torch.stack([more, watch.first]).tolist()
                    watch.raise_if_bad(first_bad)
                    if not more:
                        break
                with torch.profiler.record_function("dvtp.step"):  # what tests/test_sampler_cache.py profiles
                    # forward: the whole sequence (refilling the cache, if any), or the active tokens
                    scoring = (block, step) == prune_at
                    full = kv is None or scoring or req.is_refresh(step) or not kv.is_filled
                    rows = state.block_rows(bs, be)
                    scored = None
                    if scoring and policy.needs_scores:
                        logits, scored = scoring_forward(
                            hook, lambda: _full_forward(model, state, kv, rows), state, geometry, req.pruning
                        )
                    elif full:
                        logits = _full_forward(model, state, kv, rows)
                    else:
                        window = window or _ActiveWindow(state, req, bs, be)
                        logits = _cached_forward(model, state, kv, window)
                    out.num_forwards += 1
                    out.full_forwards += int(full)
                    out.forwards_per_block[-1] += 1
                    out.tokens_per_step.append(state.length if full else window.slots.shape[1])
                    out.cache_len_per_step.append(0 if full else state.length)

                    # denoise the block
                    masked_before = state.resp == req.mask_id if scoring else None
                    transfer, state.resp[:, bs:be] = denoiser.step(
                        logits, state.resp[:, bs:be], transfers[:, step], limit,
                        observe=lambda top: watch.observe(top, block, step),
                    )
                    state.write_response(bs, be)
                    if stopping is not None:
                        stopping.update(state.resp)

                    # pruning hook: the published scoring rows (docs/semantics.md) are the response
                    # rows masked before this step and not transferred by it
                    if scoring:
                        watch.check()  # NaN scores would fail the selection with a kernel's message
                        masked_before[:, bs:be] &= ~transfer
                        out.prune_events.append(
                            prune(state, kv, scored, masked_before, geometry, req.pruning, policy, global_step)
                        )
                        window = None  # the layout changed

                    clock.mark()
                    global_step += 1
                    bar.update(1)
            if finished:
                break
    watch.check()
    out.stopped_early = finished
    out.step_times = clock.durations()
    out.sequences = state.resp
    out.stop_positions = stopping.positions_or_none() if stopping else [-1] * len(prompt.lengths)
    return out
