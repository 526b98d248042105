"""Image(s) + question -> answer with LLaDA-V, in one batch, with optional pruning.

`answer` is the user-level entry point (``model.answer(...)`` calls it):

1. images are loaded and checked (`dvtp.vlm.images.load_image`), processed into views
   (`LLaDAVProcessor.process_images`: anyres for an image alone in its prompt, one
   padded square view per image when a prompt has several) and questions become prompt
   ids with one placeholder per image (`LLaDAVProcessor.prompt_ids`);
2. one vision forward encodes every image of the batch (`encode_images`) and each
   image's visual-token run replaces its placeholder; where it lands is that image's
   visual span, so the sampler's spans come from the splice itself;
3. `dvtp.generate` denoises the whole batch at once (items of different lengths share
   one padded batch) and, with ``pruning``, prunes each item's visual tokens (all of its
   images together) after the scoring step;
4. each answer is decoded up to its first stop token.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from ..config import PruningConfig
from ..sampler import GenerationOutput, generate
from .processor import IMAGE_PLACEHOLDER
from .packing import ImageLayout

__all__ = ["answer", "prepare", "AnswerOutput", "MultimodalBatch", "ImageTokens", "method_doc"]


@dataclass
class ImageTokens:
    """One image's visual tokens in its prompt.

    Attributes:
        layout: where each of its tokens comes from (`dvtp.vlm.packing.ImageLayout`:
            ``kinds()``, ``boxes()`` in original-image pixels).
        span: ``(start, length)`` of its tokens in the item's prompt.
        kept: ascending indices (into this image's ``length`` tokens) of the tokens kept
            after pruning, int64 on CPU; None when the item was not pruned.
        importance: ``[length]`` float32 on CPU, the importance each of its tokens was
            ranked by (`GenerationOutput.importance`); None when the item was not pruned.
    """

    layout: ImageLayout
    span: tuple[int, int]
    kept: torch.Tensor | None = None
    importance: torch.Tensor | None = None

    @property
    def num_tokens(self) -> int:
        return self.span[1]

    @property
    def kept_boxes(self) -> torch.Tensor | None:
        """``[len(kept), 4]`` image regions (x0, y0, x1, y1, pixels) of the kept tokens
        (NaN rows for kept newline tokens); None when not pruned."""
        return None if self.kept is None else self.layout.boxes()[self.kept]


@dataclass
class AnswerOutput:
    """What `answer` returns.

    Attributes:
        texts: one answer per question.
        sequences: ``[B, gen_length]`` int64 generated ids (mask id where unfinished).
        images: per item, its images' `ImageTokens` (empty for a text-only item).
        prompt_lengths: per item, its prompt length in tokens (visual tokens included).
        generation: the sampler's `GenerationOutput` (``tokens_per_step``,
            ``step_times``, ``kept_indices``, ``seq_len_before/after``, ``backends``...).
        timings: seconds spent in ``"preprocess"`` (images and prompts), ``"vision"``
            (tower + projector + splice), ``"generate"`` and ``"total"``.
    """

    texts: list[str]
    sequences: torch.Tensor
    images: list[list[ImageTokens]]
    prompt_lengths: list[int]
    generation: GenerationOutput
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def tokens_per_step(self) -> list[int]:
        return self.generation.tokens_per_step

    @property
    def visual_tokens(self) -> list[int]:
        """Visual tokens per item before pruning."""
        return [sum(t.num_tokens for t in item) for item in self.images]

    @property
    def kept_counts(self) -> list[int | None]:
        """Visual tokens per item after pruning (None when the item was not pruned)."""
        return [None if k is None else int(k.numel()) for k in self.generation.kept_indices]


def _describe(value) -> str:
    """What a caller passed, briefly (for error messages): "a list of 3", "one Image"."""
    if isinstance(value, (list, tuple)):
        return f"a {type(value).__name__} of {len(value)}"
    return f"one {type(value).__name__}"


def _as_items(images, questions) -> tuple[list[list[Any]], list[str]]:
    """Normalise (images, questions) into per-item image lists and question strings.

    Checks (before any image is read) that the questions are non-empty strings and that a
    batch of B questions comes with B image entries."""
    if isinstance(questions, str):
        if not questions.strip():
            raise ValueError(f"questions is empty or whitespace only ({questions!r}); ask a question")
        if images is None:
            per_item = [[]]
        elif isinstance(images, (list, tuple)):
            per_item = [list(images)]
        else:
            per_item = [[images]]
        return per_item, [questions]
    if not isinstance(questions, (list, tuple)) or not questions:
        raise ValueError(
            f"questions must be a string or a non-empty list of strings, got {questions!r}"
        )
    for b, q in enumerate(questions):
        if not isinstance(q, str):
            raise TypeError(f"questions[{b}] must be a string, got {type(q).__name__}")
        if not q.strip():
            raise ValueError(
                f"questions[{b}] is empty or whitespace only ({q!r}); every question of the batch must ask something"
            )
    if images is None:
        return [[] for _ in questions], list(questions)
    if not isinstance(images, (list, tuple)) or len(images) != len(questions):
        raise ValueError(
            f"with {len(questions)} questions, images must be a list of {len(questions)} entries "
            f"(per question: None, one image, or a list of images), got {_describe(images)}"
        )
    per_item = []
    for entry in images:
        per_item.append(
            [] if entry is None else list(entry) if isinstance(entry, (list, tuple)) else [entry]
        )
    return per_item, list(questions)


@dataclass
class MultimodalBatch:
    """A batch of prompts ready for `dvtp.generate` (what `prepare` returns).

    Attributes:
        prompts: per item ``[P_b, hidden]`` prompt embeddings: text embeddings with each
            image's visual-token run spliced in at its placeholder.
        visual_spans: per item the list of its images' ``(start, length)`` in ``prompts[b]``
            (None for a text-only item): exactly where the runs were spliced.
        images: per item, its images' `ImageTokens`.
        prompt_ids: per item the prompt ids, with one ``IMAGE_PLACEHOLDER`` per image.
        timings: seconds in ``"preprocess"`` (images, prompts) and ``"vision"`` (tower,
            projector, splice).
    """

    prompts: list[torch.Tensor]
    visual_spans: list[list[tuple[int, int]] | None]
    images: list[list[ImageTokens]]
    prompt_ids: list[list[int]]
    timings: dict[str, float] = field(default_factory=dict)


def _processor(model):
    processor = getattr(model, "processor", None)
    if processor is None:
        raise ValueError(
            "model.processor is not set: load the model with dvtp.load(path) (or build one with "
            "dvtp.vlm.tiny_llada_v()), or attach a dvtp.vlm.LLaDAVProcessor(tokenizer) to it"
        )
    return processor


@torch.no_grad()
def prepare(model, images, questions: str | Sequence[str], *, check=None) -> MultimodalBatch:
    """Process images and questions into prompt embeddings and visual spans.

    ``images`` and ``questions`` as in `answer`. ``check`` (optional) is called after all
    inputs have been validated and before the vision forward (`answer` checks the
    generation arguments there, so a bad argument never costs a forward).
    """
    t_start = time.perf_counter()
    processor = _processor(model)
    per_item_images, questions = _as_items(images, questions)
    encode = getattr(model, "encode_images", None)
    if encode is None and any(per_item_images):
        raise ValueError(f"{type(model).__name__} is a text-only model: images must be None")

    processed, prompt_ids = [], []
    for b, (item_images, question) in enumerate(zip(per_item_images, questions)):
        try:
            processed.append(processor.process_images(item_images))
            prompt_ids.append(processor.prompt_ids(question, len(item_images)))
        except (ValueError, TypeError) as err:  # name the item in the message
            raise type(err)(f"item {b}: {err}") from None
    if check is not None:
        check()
    t_pre = time.perf_counter()

    # one vision forward for the whole batch; each run replaces its placeholder
    flat = [img for item in processed for img in item]
    runs = iter(
        encode([p.pixel_values for p in flat], [p.size for p in flat], [p.anyres for p in flat])
        if flat
        else []
    )
    embed = model.get_input_embeddings()
    device = embed.weight.device
    prompts, spans, tokens = [], [], []
    for ids, item in zip(prompt_ids, processed):
        parts, item_tokens, pos = [], [], 0
        images_left = iter(item)
        text = torch.tensor(ids, dtype=torch.long)
        cuts = [-1] + (text == IMAGE_PLACEHOLDER).nonzero().flatten().tolist() + [len(ids)]
        for a, b in zip(cuts, cuts[1:]):
            if b - a > 1:  # the text between two placeholders
                parts.append(embed(text[a + 1 : b].to(device)))
                pos += b - a - 1
            if b < len(ids):
                run, image = next(runs).to(device), next(images_left)
                layout = model.model.layout(image.size, anyres=image.anyres)
                item_tokens.append(ImageTokens(layout=layout, span=(pos, run.shape[0])))
                parts.append(run)
                pos += run.shape[0]
        prompts.append(torch.cat(parts, dim=0))
        spans.append([t.span for t in item_tokens] or None)
        tokens.append(item_tokens)
    t_vision = time.perf_counter()
    return MultimodalBatch(
        prompts=prompts,
        visual_spans=spans,
        images=tokens,
        prompt_ids=prompt_ids,
        timings={"preprocess": t_pre - t_start, "vision": t_vision - t_pre},
    )


@torch.no_grad()
def answer(
    model,
    images,
    questions: str | Sequence[str],
    *,
    pruning: PruningConfig | None = None,
    gen_length: int = 128,
    steps: int = 128,
    block_length: int | None = None,
    temperature: float = 0.0,
    remasking: str = "low_confidence",
    stop: bool = True,
    cache: str | None = None,
    refresh: str | int = "block",
    threshold: float | None = None,
    factor: float | None = None,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> AnswerOutput:
    """Answer questions about images with LLaDA-V, all in one batch, optionally pruning
    visual tokens (RedVTP).

    Every argument and image is checked before the vision tower runs; an error names the
    argument (and the item of a batch) and what is accepted.

    Args:
        model: a `LLaDAVForConditionalGeneration` with ``model.processor`` set (from
            `dvtp.load` or `dvtp.vlm.tiny_llada_v`); a text-only LLaDA (`dvtp.load` of
            an LLaDA-8B folder) answers text-only questions (``images=None``).
        images: for ONE question (a string): None, an image, or a list of images (all in
            that one prompt). For a list of B questions: a list of B entries, one per
            question, each None, an image or a list of images. An image is
            (see `dvtp.vlm.images.load_image`):
            a ``PIL.Image.Image`` (any 8-bit mode: converted to RGB, alpha dropped);
            a local file path (``str`` / ``os.PathLike``; a URL or hub name is refused:
            dvtp never fetches anything, download the file first);
            the bytes of an encoded image file (``bytes`` / ``bytearray`` /
            ``memoryview``) or a binary file object (``io.BytesIO``, ``open(p, "rb")``);
            a uint8 array or tensor ``[H, W]``, ``[H, W, 1]``, ``[H, W, 3]`` or
            ``[H, W, 4]`` (channels last).
        questions: a string, or a non-empty list of B strings (a batch); an empty or
            whitespace-only question is refused. Without ``<image>`` in the text, one
            placeholder per image is put before the question (``"<image>\\n" + question``);
            with them, their count must equal the item's number of images.
        pruning: a `dvtp.PruningConfig`, or None (no pruning). An item's visual tokens are
            pruned jointly over all its images; text-only items are never pruned.
        gen_length: response length in tokens; a multiple of ``block_length``.
        steps: denoising steps in all (at most ``gen_length``), divisible by the number
            of blocks.
        block_length: semi-autoregressive block size; None = ``gen_length`` (one block).
            LLaDA-V's defaults are 128 / 128 / 128 (gen_length / steps / block_length);
            its evaluations use e.g. 2/2/2 (multiple choice), 16/16/16 (ChartQA),
            32/16/32 (DocVQA, InfoVQA), 96/48/96 (MathVista) as gen_length / steps /
            block_length.
        temperature: 0.0 = greedy; > 0 samples (Gumbel noise on the logits).
        remasking: "low_confidence" (commit the most confident predictions first) or
            "random".
        stop: True (default, as LLaDA-V): generation of an item ends early once it holds
            ``<|eot_id|>`` (or ``<|endoftext|>``) and every mask before it is filled (see
            docs/semantics.md); False: all ``steps`` run (the same work for every
            setting, e.g. for timing). The text is cut at the first stop token either way.
        cache: None (every step runs the whole sequence), "prefix" or "dual": Fast-dLLM's
            approximate K/V cache, as in `dvtp.generate` (it stacks with ``pruning``).
        refresh: with a cache, when it is refilled: "block" (each block's first step) or
            an int n (also every n-th step of a block).
        threshold: None, or Fast-dLLM's parallel decoding: each step also commits every
            masked position of the block whose confidence is at least ``threshold``.
        factor: None, or Fast-dLLM's factor rule for parallel decoding (what LLaDA-V's
            Fast-dLLM code applies to its ``threshold`` argument), as in `dvtp.generate`;
            not together with ``threshold``.
        generator: a ``torch.Generator`` for ``temperature > 0`` / ``remasking="random"``
            (None: torch's global RNG).
        progress: a progress bar over the denoising steps on stderr.

    Returns:
        `AnswerOutput`, B = the number of questions:

        - ``texts``: B strings, each answer decoded up to its first ``<|eot_id|>`` /
          ``<|endoftext|>``, special tokens skipped, whitespace stripped.
        - ``sequences``: ``[B, gen_length]`` int64 on the model's device, the generated ids
          (the mask id where an early stop left a position unfilled).
        - ``images[b][i]``: `ImageTokens` of image i of item b (``[]`` for a text-only
          item): ``span`` ``(start, length)`` of its visual tokens in the item's prompt;
          ``layout`` (`dvtp.vlm.ImageLayout`: ``kinds()`` ``[length]`` int8 base / grid /
          newline, ``boxes()`` ``[length, 4]`` float64 ``(x0, y0, x1, y1)`` pixels of the
          original image); ``kept`` ``[k]`` int64 on CPU, ascending indices of its kept
          tokens, ``importance`` ``[length]`` float32 on CPU, what they were ranked by,
          and ``kept_boxes`` ``[k, 4]`` (all three None when the item was not pruned).
        - ``prompt_lengths``: B ints, each prompt's length in tokens, visual tokens
          included.
        - ``visual_tokens`` / ``kept_counts``: B ints, visual tokens per item before / after
          pruning (``kept_counts[b]`` None when item b was not pruned).
        - ``tokens_per_step``: tokens each forward ran on (padded batch), one per step.
        - ``generation``: the sampler's `dvtp.GenerationOutput` (``num_forwards``,
          ``step_times``, ``kept_indices`` per item over all its images, ``importance``,
          ``seq_len_before`` / ``seq_len_after``, ``backends``, ``scoring_time``, ...).
        - ``timings``: seconds in ``"preprocess"`` (images and prompts), ``"vision"``
          (tower + projector + splice), ``"generate"`` and ``"total"``.

    Raises:
        ValueError / TypeError: a bad argument, question or image (naming it and, in a
            batch, its item), before any forward.
    """
    from ..sampler import check_generation_args, check_model

    t_start = time.perf_counter()
    check_model(model)
    batch = prepare(
        model,
        images,
        questions,
        check=lambda: check_generation_args(
            gen_length=gen_length,
            steps=steps,
            block_length=block_length,
            temperature=temperature,
            remasking=remasking,
            pruning=pruning,
            generator=generator,
            cache=cache,
            refresh=refresh,
            threshold=threshold,
            factor=factor,
        ),
    )
    processor = model.processor
    t_gen0 = time.perf_counter()
    out = generate(
        model,
        inputs_embeds=batch.prompts,
        visual_span=batch.visual_spans,
        gen_length=gen_length,
        steps=steps,
        block_length=block_length,
        temperature=temperature,
        remasking=remasking,
        mask_id=processor.mask_id,
        pruning=pruning,
        cache=cache,
        refresh=refresh,
        threshold=threshold,
        factor=factor,
        stop_tokens=processor.stop_ids if stop else None,
        suppress_tokens=processor.suppressed_ids,
        generator=generator,
        progress=progress,
    )
    t_gen1 = time.perf_counter()

    # the sampler reports kept tokens over an item's images in order: split them per image
    for item_tokens, kept, importance in zip(batch.images, out.kept_indices, out.importance):
        if kept is None:
            continue
        start = 0
        for image in item_tokens:
            n = image.num_tokens
            image.kept = kept[(kept >= start) & (kept < start + n)] - start
            image.importance = importance[start : start + n]
            start += n
    texts = [processor.decode(seq) for seq in out.sequences]
    return AnswerOutput(
        texts=texts,
        sequences=out.sequences,
        images=batch.images,
        prompt_lengths=[int(p.shape[0]) for p in batch.prompts],
        generation=out,
        timings={
            **batch.timings,
            "generate": t_gen1 - t_gen0,
            "total": time.perf_counter() - t_start,
        },
    )


def method_doc(doc: str) -> str:
    """``doc`` (the docstring of a function taking the model first, like `answer`) without
    its ``model:`` argument entry: the docstring of the same function as a model method
    (``model.answer``), so that both are written once."""
    lines = doc.splitlines()
    starts = [i for i, line in enumerate(lines) if line.lstrip().startswith("model: ")]
    if len(starts) != 1:
        raise ValueError("the docstring must document its model argument exactly once ('model: ...')")
    start = starts[0]
    indent = len(lines[start]) - len(lines[start].lstrip())
    end = start + 1
    while end < len(lines) and len(lines[end]) - len(lines[end].lstrip()) > indent:
        end += 1  # the entry's continuation lines
    return "\n".join(lines[:start] + lines[end:])
