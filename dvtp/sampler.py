"""The LLaDA diffusion sampler with RedVTP visual-token pruning.

Semantics (DESIGN.md section 2): the response of ``gen_length`` mask tokens is generated
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

Layout: the sampler keeps full-sequence, sequence-aligned state ``[prompt | response]``
(embeddings, token ids, original position ids) plus the response ids in response
coordinates ``0..gen_length-1`` (block logic, mask bookkeeping). Pruning compacts the
sequence-aligned tensors in one `gather_compact` call with the index from
`select_visual_tokens`, so item b becomes ``[prompt' | response]`` in its first
``new_len[b]`` slots followed by padding when batch items keep different numbers of
tokens. The response then starts at ``new_len[b] - gen_length`` (its logits are read at
those positions through ``logits_to_keep``), padding is hidden by a ``[B, N]`` key-valid
vector (an SDPA ``[B, 1, 1, N]`` mask, never N x N), and ``arange`` positions renumber
every item exactly as if it had been pruned alone. Dream's one-position logit shift
stays correct because nothing is inserted between an item's prompt and its response.
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
from .config import PruningConfig
from .models import LLADA_SUPPRESSED_IDS
from .policies import PolicyContext, get_policy

__all__ = ["generate", "GenerationOutput", "num_transfer_tokens", "kernel_backends"]

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
        seq_len_before / seq_len_after: per item, tokens before / after pruning (equal when
            nothing was pruned).
        kept_indices: per item, ascending visual-local indices of the kept visual tokens
            (int64, on CPU), or None when the item was not pruned (no pruning, no span).
        pruned_at_step: index (0-based, over all steps) of the step after which the
            sequence was pruned, or None.
        scoring_time: wall time of the scoring step's forward (None without scoring).
        prune_time: wall time of selection + compaction (None without pruning).
        scored_layers: layers whose attention fed the scores at the scoring step.
        lse_from_attention: whether every scored layer took its row log-sum-exp from the
            attention kernel (else the score op computed it for the response rows).
        backends: kernel backend per dvtp op used for the pruning (empty without pruning).
        stop_positions: per item, first response index holding a stop token, or -1.
        stopped_early: generation stopped before the last block (all items hit a stop token).
    """

    sequences: torch.Tensor
    num_forwards: int = 0
    step_times: list[float] = field(default_factory=list)
    tokens_per_step: list[int] = field(default_factory=list)
    seq_len_before: list[int] = field(default_factory=list)
    seq_len_after: list[int] = field(default_factory=list)
    kept_indices: list[torch.Tensor | None] = field(default_factory=list)
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


def _resolve_prompt(model, inputs, input_ids, inputs_embeds):
    """-> (prompt embeddings [B, P, H], prompt ids [B, P] or None)."""
    given = [x is not None for x in (inputs, input_ids, inputs_embeds)]
    if sum(given) != 1:
        raise ValueError(
            "give the prompt exactly once: as `inputs` (ids or embeddings), `input_ids=` or `inputs_embeds=`"
        )
    if inputs is not None:
        if not isinstance(inputs, torch.Tensor):
            raise TypeError(f"inputs must be a tensor of token ids or embeddings, got {type(inputs).__name__}")
        if inputs.is_floating_point():
            inputs_embeds = inputs
        else:
            input_ids = inputs
    embedding = model.get_input_embeddings()
    weight = embedding.weight
    if input_ids is not None:
        if not isinstance(input_ids, torch.Tensor) or input_ids.is_floating_point() or input_ids.dtype == torch.bool:
            raise TypeError("input_ids must be an integer tensor [B, P]")
        if input_ids.dim() == 1:
            input_ids = input_ids.unsqueeze(0)
        if input_ids.dim() != 2 or input_ids.shape[1] == 0:
            raise ValueError(f"input_ids must be [B, P] with P >= 1, got shape {list(input_ids.shape)}")
        input_ids = input_ids.to(device=weight.device, dtype=torch.int64)
        vocab = weight.shape[0]
        if input_ids.numel() and (int(input_ids.min()) < 0 or int(input_ids.max()) >= vocab):
            raise ValueError(f"input_ids must lie in [0, vocab_size={vocab})")
        return embedding(input_ids), input_ids
    if not isinstance(inputs_embeds, torch.Tensor) or not inputs_embeds.is_floating_point():
        raise TypeError("inputs_embeds must be a floating-point tensor [B, P, hidden]")
    if inputs_embeds.dim() == 2:
        inputs_embeds = inputs_embeds.unsqueeze(0)
    hidden = weight.shape[1]
    if inputs_embeds.dim() != 3 or inputs_embeds.shape[1] == 0 or inputs_embeds.shape[2] != hidden:
        raise ValueError(
            f"inputs_embeds must be [B, P, hidden={hidden}] with P >= 1, got shape {list(inputs_embeds.shape)}"
        )
    return inputs_embeds.to(device=weight.device, dtype=weight.dtype), None


def _span_pair(value, name: str):
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        value = value.tolist()
    if not isinstance(value, (tuple, list)) or len(value) != 2 or not all(_is_int(v) for v in value):
        raise ValueError(f"{name} must be a (start, length) pair of ints or None, got {value!r}")
    return int(value[0]), int(value[1])


def _resolve_spans(visual_span, batch: int, prompt_len: int) -> list[tuple[int, int] | None]:
    """One (start, length) or None per item, checked to lie inside the prompt."""
    if visual_span is None:
        return [None] * batch
    if isinstance(visual_span, torch.Tensor):
        visual_span = visual_span.tolist()
    if (
        isinstance(visual_span, (tuple, list))
        and len(visual_span) == 2
        and all(_is_int(v) for v in visual_span)
    ):
        spans = [_span_pair(visual_span, "visual_span")] * batch
    elif isinstance(visual_span, (tuple, list)):
        if len(visual_span) != batch:
            raise ValueError(
                f"visual_span must be one (start, length) pair for all items or a list of {batch} "
                f"pairs/None (one per item), got {len(visual_span)} entries"
            )
        spans = [_span_pair(v, f"visual_span[{b}]") for b, v in enumerate(visual_span)]
    else:
        raise ValueError(f"visual_span must be a (start, length) pair or a list of them, got {visual_span!r}")
    for b, span in enumerate(spans):
        if span is None:
            continue
        start, length = span
        if start < 0 or length < 0 or start + length > prompt_len:
            raise ValueError(
                f"visual_span of item {b} = (start={start}, length={length}) falls outside the prompt "
                f"[0, {prompt_len}): the visual tokens must lie inside the prompt sequence"
            )
    return spans


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
    inputs: torch.Tensor | None = None,
    *,
    input_ids: torch.Tensor | None = None,
    inputs_embeds: torch.Tensor | None = None,
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

    Args:
        model: a bidirectional transformers LM (`dvtp.models.llada_lm` / `dream_lm`, or any
            model going through transformers' AttentionInterface; it is run under
            `dvtp.patched`, which makes attention bidirectional). Its ``logits[:, i]``
            must predict token i (DreamLM applies Dream's shift itself).
        inputs: the prompt, token ids ``[B, P]`` or embeddings ``[B, P, hidden]`` (e.g.
            text embeddings with projected image features spliced in); or use
            ``input_ids=`` / ``inputs_embeds=``. All items share the prompt length P.
        visual_span: ``(start, length)`` of the visual tokens for every item, or a list of
            one pair (or None) per item; None = text only (never pruned).
        gen_length: response length; a multiple of ``block_length``.
        steps: denoising steps in all; divisible by the number of blocks.
        block_length: semi-autoregressive block size (default ``gen_length``: one block).
        temperature: 0 = greedy; > 0 adds Gumbel noise (float64) to the logits.
        remasking: "low_confidence" (transfer the most probable predictions) or "random".
        mask_id: the mask token id (default ``model.config.mask_token_id``).
        pruning: a `PruningConfig`, or None for no pruning.
        stop_tokens: id(s); after each block, generation stops when every item's response
            so far contains one (later blocks stay masked).
        suppress_tokens: ids whose logits are -inf at masked positions: "llada" (default:
            126081, 126080, 126346, 126347, those below the vocabulary size), None, or a
            list of ids (negative ids count from the end of the vocabulary).
        generator: RNG for Gumbel noise and random remasking (default: the global RNG).
        progress: show a tqdm bar over the steps.

    Returns:
        `GenerationOutput`.
    """
    prompt_embeds, input_ids_resolved = _resolve_prompt(model, inputs, input_ids, inputs_embeds)
    B, P, _ = prompt_embeds.shape
    device = prompt_embeds.device
    embedding = model.get_input_embeddings()
    vocab = embedding.weight.shape[0]

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
    steps_per_block = steps // num_blocks
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real) or not temperature >= 0:
        raise ValueError(f"temperature must be a number >= 0, got {temperature!r}")
    temperature = float(temperature)
    if remasking not in _REMASKING:
        raise ValueError(f"remasking must be one of {_REMASKING}, got {remasking!r}")
    if mask_id is None:
        mask_id = getattr(model.config, "mask_token_id", None)
        if mask_id is None:
            raise ValueError("mask_id is required (the model config has no mask_token_id)")
    if not _is_int(mask_id) or not 0 <= mask_id < vocab:
        raise ValueError(f"mask_id must be an id in [0, vocab_size={vocab}), got {mask_id!r}")
    spans = _resolve_spans(visual_span, B, P)
    suppressed = _resolve_suppressed(suppress_tokens, vocab)
    stop_ids = _resolve_stop(stop_tokens)
    if pruning is not None and not isinstance(pruning, PruningConfig):
        raise TypeError(f"pruning must be a dvtp.PruningConfig or None, got {type(pruning).__name__}")
    if pruning is not None:
        if pruning.prune_step > steps_per_block:
            raise ValueError(
                f"pruning.prune_step={pruning.prune_step} exceeds the steps of block 0 "
                f"(steps // num_blocks = {steps_per_block})"
            )
        num_layers = len(attention_modules(model))
        if pruning.score_layers is not None and max(pruning.score_layers) >= num_layers:
            raise ValueError(
                f"pruning.score_layers={list(pruning.score_layers)} names a layer >= the model's "
                f"{num_layers} attention layers"
            )

    key_start = [0 if s is None else s[0] for s in spans]
    key_len = [0 if s is None else s[1] for s in spans]
    vmax = max(key_len)
    will_prune = pruning is not None and vmax > 0
    policy = get_policy(pruning.policy) if will_prune else None

    G = gen_length
    N = P + G
    # Full-sequence state, sequence-aligned (these are what pruning compacts): embeddings
    # (response rows refreshed from the ids every step), token ids (-1 where the prompt
    # was given as embeddings), and the original position ids (for renumber_positions=False).
    x_embeds = torch.cat([prompt_embeds, embedding(torch.full((B, G), mask_id, device=device))], dim=1)
    prompt_ids = input_ids_resolved if input_ids_resolved is not None else torch.full((B, P), -1, device=device)
    x_ids = torch.cat([prompt_ids.to(torch.int64), torch.full((B, G), mask_id, dtype=torch.int64, device=device)], dim=1)
    keep_positions = will_prune and not pruning.renumber_positions
    x_pos = torch.arange(N, device=device).expand(B, N) if keep_positions else None
    attention_mask = None  # [B, N] key-valid, only while some item is padded
    position_ids = None  # None = arange over the sequence (the reference passes none)
    resp_idx = (P + torch.arange(G, device=device)).expand(B, G)  # response rows in the sequence
    logits_keep: int | torch.Tensor = G  # the response is the tail of every item until padding appears

    out = GenerationOutput(sequences=x_ids[:, P:], seq_len_before=[N] * B, seq_len_after=[N] * B)
    out.kept_indices = [None] * B
    stop_tensor = torch.tensor(stop_ids, dtype=torch.int64, device=device) if stop_ids else None

    from tqdm.auto import tqdm

    bar = tqdm(total=steps, disable=not progress, desc="dvtp.generate", unit="step")
    resp = x_ids[:, P:].clone()
    global_step = 0
    clock = _StepClock(device)
    with patched(model) as hook, bar:
        for block in range(num_blocks):
            block_end = (block + 1) * block_length
            block_mask = resp[:, block * block_length : block_end] == mask_id
            transfers = num_transfer_tokens(block_mask, steps_per_block)
            for step in range(steps_per_block):
                t0 = time.perf_counter()
                if step == 0 and block == 0:
                    clock.mark()
                mask_index = resp == mask_id
                scoring = will_prune and block == 0 and step == pruning.prune_step - 1
                if scoring and policy.needs_scores:
                    scores = torch.zeros((B, G, vmax), dtype=torch.float32, device=device)
                    with hook.scoring(
                        scores, P, key_start, key_len, layers=pruning.score_layers, backend=pruning.backend
                    ) as state:
                        logits = _forward(model, x_embeds, attention_mask, position_ids, logits_keep)
                    _sync(device)
                    out.scoring_time = time.perf_counter() - t0
                    out.scored_layers = list(state.scored_layers)
                    out.lse_from_attention = bool(state.lse_from_kernel) and all(state.lse_from_kernel)
                else:
                    scores = None
                    logits = _forward(model, x_embeds, attention_mask, position_ids, logits_keep)
                out.num_forwards += 1
                out.tokens_per_step.append(int(x_embeds.shape[1]))

                _, resp = _denoise_step(
                    logits, resp, mask_index, transfers[:, step], block_end, mask_id,
                    temperature, remasking, suppressed, generator,
                )
                x_ids.scatter_(1, resp_idx, resp)
                x_embeds.scatter_(1, resp_idx.unsqueeze(-1).expand(B, G, x_embeds.shape[2]), embedding(resp))

                if scoring:
                    t1 = time.perf_counter()
                    # Still masked after the transfer, by value (DESIGN.md section 2): a
                    # transferred prediction that is the mask id itself stays a query row.
                    row_mask = resp == mask_id
                    ctx = PolicyContext(pruning, row_mask, key_len, scores, device)
                    sel_scores, sel_rows = policy.importance(ctx)
                    gather_index, new_len, keep_index, keep_count = dvtp_kernels.select_visual_tokens(
                        sel_scores, sel_rows, [N] * B, key_start, key_len,
                        keep_ratio=pruning.keep_ratio, backend=pruning.backend,
                    )
                    tensors = [x_embeds, x_ids] + ([x_pos] if keep_positions else [])
                    compacted = dvtp_kernels.gather_compact(
                        tensors, gather_index, new_len, dims=1, pad_value=0, backend=pruning.backend
                    )
                    x_embeds, x_ids = compacted[0], compacted[1]
                    # Bookkeeping of the compacted sequence: item b is [prompt | response]
                    # in its first new_len[b] slots, then padding (a masked key).
                    n_new = gather_index.shape[1]
                    resp_start = new_len - G
                    resp_idx = resp_start.unsqueeze(1) + torch.arange(G, device=device)
                    padded = bool((new_len < n_new).any())
                    attention_mask = (
                        torch.arange(n_new, device=device).unsqueeze(0) < new_len.unsqueeze(1) if padded else None
                    )
                    logits_keep = resp_idx if padded else G
                    # renumbered: arange(n_new) gives every item arange over its own tokens
                    position_ids = compacted[2] if keep_positions else None
                    new_len_host, keep_host = new_len.tolist(), keep_count.tolist()
                    keep_index_cpu = keep_index.cpu()
                    for b in range(B):
                        if key_len[b] > 0:
                            out.kept_indices[b] = keep_index_cpu[b, : keep_host[b]].clone()
                    out.seq_len_after = new_len_host
                    out.pruned_at_step = global_step
                    out.backends = kernel_backends(device, pruning.backend)
                    _sync(device)
                    out.prune_time = time.perf_counter() - t1

                clock.mark()
                global_step += 1
                bar.update(1)
            if stop_tensor is not None:
                hit = torch.isin(resp[:, :block_end], stop_tensor).any(dim=1)
                if bool(hit.all()) and block < num_blocks - 1:
                    out.stopped_early = True
                    break
    out.step_times = clock.durations()
    out.sequences = resp
    if stop_tensor is not None:
        hits = torch.isin(resp, stop_tensor)
        first = hits.to(torch.int64).argmax(dim=1)  # first True (argmax returns the first maximum)
        out.stop_positions = torch.where(hits.any(dim=1), first, -1).tolist()
    else:
        out.stop_positions = [-1] * B
    return out


def _forward(model, embeds, attention_mask, position_ids, logits_keep):
    """Response-row logits ``[B, G, V]``: ``logits_keep`` is G (the response is every
    item's tail) or the ``[B, G]`` response positions (items padded after pruning)."""
    return model(
        inputs_embeds=embeds,
        attention_mask=attention_mask,
        position_ids=position_ids,
        logits_to_keep=logits_keep,
        use_cache=False,
    ).logits


def _denoise_step(logits, resp, mask_index, k, block_end, mask_id, temperature, remasking, suppressed, generator):
    """One LLaDA step on the response: -> (transfer [B, G] bool, new response ids)."""
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
    x0_p[:, block_end:] = float("-inf")
    x0 = torch.where(mask_index, x0, resp)
    confidence = torch.where(mask_index, x0_p, torch.full_like(x0_p, float("-inf")))
    # top-k per item, equal confidence -> lower position (stable descending sort)
    order = torch.sort(confidence, dim=1, descending=True, stable=True).indices
    take = torch.arange(G, device=logits.device).unsqueeze(0) < k.unsqueeze(1)
    transfer = torch.zeros_like(mask_index).scatter(1, order, take)
    return transfer, torch.where(transfer, x0, resp)
