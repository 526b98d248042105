"""Prompt batches of different lengths, and the padded sequence layout the sampler runs on.

`resolve_prompt` turns every prompt form `dvtp.generate` accepts into one `PromptBatch`:
the prompts right-padded into ``[B, P_max]`` / ``[B, P_max, H]`` tensors plus each item's
length ``P_b``. Accepted forms (via ``inputs``, ``input_ids=`` or ``inputs_embeds=``):

* a tensor of token ids ``[B, P]`` (or ``[P]``) or embeddings ``[B, P, H]`` (or ``[P, H]``):
  every item has length P;
* the same plus ``attention_mask`` ``[B, P]`` (bool or 0/1 ints, True = real token): the
  real tokens of row b, in order, are item b's prompt, so left and right padding both work;
* a list (or tuple) of per-item tensors, all ids ``[P_b]`` (or ``[1, P_b]``) or all
  embeddings ``[P_b, H]`` (or ``[1, P_b, H]``), of any lengths ``P_b >= 1``.

`sequence_layout` describes the ``[B, N]`` sequence the sampler runs on: item b occupies
slots ``[prompt_b | response (G) | padding]``, i.e. its first ``seq_lens[b]`` slots. The
same layout describes the sequence after pruning (with the compacted lengths), so one
description serves the whole generation.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["PromptBatch", "resolve_prompt", "SequenceLayout", "sequence_layout"]


@dataclass
class PromptBatch:
    """Prompts of a batch, right-padded.

    Attributes:
        embeds: ``[B, P_max, H]`` in the model's embedding dtype and device; item b's prompt
            in slots ``[0, lengths[b])``, zeros after.
        ids: ``[B, P_max]`` int64: the prompt's token ids, -1 where the prompt was given as
            embeddings and at padding.
        lengths: ``P_b`` per item (host ints, each >= 1).
    """

    embeds: torch.Tensor
    ids: torch.Tensor
    lengths: list[int]


def _kind_of(t: torch.Tensor) -> str | None:
    if t.is_floating_point():
        return "embeds"
    if t.dtype == torch.bool or t.is_complex():
        return None
    return "ids"


def _label(kind: str, suffix: str, given: str) -> str:
    """Argument name for messages: ``input_ids[1]``, or ``inputs_embeds (given as `inputs`)``."""
    base = ("input_ids" if kind == "ids" else "inputs_embeds") + suffix
    return base if given != "inputs" else f"{base} (given as `inputs`)"


def _check_kind(t, kind: str, name: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a tensor, got {type(t).__name__}")
    if _kind_of(t) != kind:
        want = "an integer tensor of token ids" if kind == "ids" else "a floating-point tensor of embeddings"
        raise TypeError(f"{name} must be {want}, got dtype {t.dtype}")


def _one_item(t: torch.Tensor, kind: str, name: str, hidden: int) -> torch.Tensor:
    """An entry of a prompt list -> ``[P_b]`` ids or ``[P_b, H]`` embeddings."""
    dims = 1 if kind == "ids" else 2
    if t.dim() == dims + 1 and t.shape[0] == 1:
        t = t[0]
    shape = "[P_b] (or [1, P_b])" if kind == "ids" else f"[P_b, hidden={hidden}] (or [1, P_b, hidden])"
    if t.dim() != dims or t.shape[0] == 0 or (kind == "embeds" and t.shape[1] != hidden):
        raise ValueError(f"{name} must be {shape} with P_b >= 1, got shape {list(t.shape)}")
    return t


def _check_mask(mask, batch: int, length: int, device: torch.device) -> torch.Tensor:
    """``attention_mask`` -> bool ``[B, P]`` on ``device``; rejects anything but 0/1 rows with a real token."""
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"attention_mask must be a bool or 0/1 integer tensor [B, P], got {type(mask).__name__}")
    if mask.is_floating_point() or mask.is_complex():
        raise TypeError(f"attention_mask must be a bool or 0/1 integer tensor [B, P], got dtype {mask.dtype}")
    if mask.dim() == 1:
        mask = mask.unsqueeze(0)
    if tuple(mask.shape) != (batch, length):
        raise ValueError(
            f"attention_mask must have the prompt's shape [B, P] = [{batch}, {length}], got {list(mask.shape)}"
        )
    mask = mask.to(device)
    if mask.dtype != torch.bool:
        if bool(((mask != 0) & (mask != 1)).any()):
            raise ValueError("attention_mask must hold only 0/1 (or False/True) values")
        mask = mask != 0
    empty = (~mask.any(dim=1)).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"attention_mask row(s) {empty} have no real token (all False / 0): every item needs a prompt")
    return mask


def resolve_prompt(
    model: torch.nn.Module,
    inputs=None,
    *,
    input_ids=None,
    inputs_embeds=None,
    attention_mask: torch.Tensor | None = None,
) -> PromptBatch:
    """Any accepted prompt form (module docstring) -> `PromptBatch` on the model's device.

    Raises TypeError / ValueError naming the argument for: no or several prompt
    arguments, an empty list or batch size 0, a list mixing ids and embeddings, wrong
    dtypes or shapes (hidden size other than the model's), ids outside the vocabulary,
    an ``attention_mask`` that is not a bool / 0/1 ``[B, P]`` tensor with a real token in
    every row, or an ``attention_mask`` given with a list. Runs no model forward.
    """
    given = [(n, v) for n, v in (("inputs", inputs), ("input_ids", input_ids), ("inputs_embeds", inputs_embeds)) if v is not None]
    if len(given) != 1:
        raise ValueError(
            "give the prompt exactly once: as `inputs` (ids or embeddings), `input_ids=` or `inputs_embeds=`"
        )
    name, value = given[0]
    embedding = model.get_input_embeddings()
    weight = embedding.weight
    vocab, hidden = weight.shape
    device = weight.device

    if isinstance(value, (list, tuple)):
        if attention_mask is not None:
            raise ValueError(
                f"attention_mask goes with a padded tensor prompt; {name} is a list, which already gives each item's length"
            )
        if not value:
            raise ValueError(f"{name} is an empty list: give at least one prompt")
        if name == "inputs":
            first = value[0]
            if not isinstance(first, torch.Tensor) or _kind_of(first) is None:
                raise TypeError(f"inputs[0] must be a tensor of token ids or embeddings, got {type(first).__name__}"
                                + (f" of dtype {first.dtype}" if isinstance(first, torch.Tensor) else ""))
            kind = _kind_of(first)
            for i, t in enumerate(value):
                if isinstance(t, torch.Tensor) and _kind_of(t) not in (None, kind):
                    raise TypeError(
                        f"inputs mixes token ids and embeddings (inputs[0] is {'embeddings' if kind == 'embeds' else 'ids'}, "
                        f"inputs[{i}] is not): give all items as ids or all as embeddings"
                    )
        else:
            kind = "ids" if name == "input_ids" else "embeds"
        items = []
        for i, t in enumerate(value):
            label = f"{name}[{i}]"
            _check_kind(t, kind, label)
            items.append(_one_item(t, kind, label, hidden))
        lengths = [int(t.shape[0]) for t in items]
        B, P = len(items), max(lengths)
        if kind == "ids":
            padded = torch.zeros((B, P), dtype=torch.int64, device=device)
        else:
            padded = torch.zeros((B, P, hidden), dtype=weight.dtype, device=device)
        for b, t in enumerate(items):
            padded[b, : lengths[b]] = t.to(device=device, dtype=padded.dtype)
        label = _label(kind, "", name)
    elif isinstance(value, torch.Tensor):
        kind = _kind_of(value) if name == "inputs" else ("ids" if name == "input_ids" else "embeds")
        if kind is None:
            raise TypeError(f"inputs must be a tensor of token ids or embeddings, got dtype {value.dtype}")
        label = _label(kind, "", name)
        _check_kind(value, kind, label)
        dims = 2 if kind == "ids" else 3
        if value.dim() == dims - 1:
            value = value.unsqueeze(0)
        shape = "[B, P]" if kind == "ids" else f"[B, P, hidden={hidden}]"
        if value.dim() != dims or value.shape[1] == 0 or (kind == "embeds" and value.shape[2] != hidden):
            raise ValueError(f"{label} must be {shape} with P >= 1, got shape {list(value.shape)}")
        if value.shape[0] == 0:
            raise ValueError(f"{label} has batch size 0: give at least one prompt")
        B, P = value.shape[:2]
        padded = value.to(device=device, dtype=torch.int64 if kind == "ids" else weight.dtype)
        lengths = [P] * B
        if attention_mask is not None:
            mask = _check_mask(attention_mask, B, P, device)
            lengths = mask.sum(dim=1).tolist()
            if min(lengths) != P:
                # A stable sort of "is padding" puts each row's real tokens first, in order.
                order = torch.sort((~mask).to(torch.int8), dim=1, stable=True).indices[:, : max(lengths)]
                if kind == "embeds":
                    order = order.unsqueeze(-1).expand(-1, -1, hidden)
                padded = torch.gather(padded, 1, order)
                P = max(lengths)
    else:
        raise TypeError(
            f"{name} must be a tensor (ids [B, P] or embeddings [B, P, hidden]) or a list of per-item tensors, "
            f"got {type(value).__name__}"
        )

    valid = torch.arange(P, device=device).unsqueeze(0) < torch.tensor(lengths, device=device).unsqueeze(1)
    if kind == "ids":
        ids = padded.masked_fill(~valid, 0)  # padding (any value) never reaches the vocabulary check
        if int(ids.min()) < 0 or int(ids.max()) >= vocab:
            raise ValueError(f"{label} must lie in [0, vocab_size={vocab})")
        embeds = embedding(ids)
        ids = ids.masked_fill(~valid, -1)
    else:
        embeds = padded
        ids = torch.full((B, P), -1, dtype=torch.int64, device=device)
    if min(lengths) != P:
        embeds = embeds.masked_fill(~valid.unsqueeze(-1), 0)
    return PromptBatch(embeds=embeds, ids=ids, lengths=[int(n) for n in lengths])


@dataclass
class SequenceLayout:
    """Where each item lives in the ``[B, N]`` sequence: ``[prompt_b | response | padding]``.

    Attributes:
        seq_lens: tokens of item b (prompt + response, host ints); it occupies slots
            ``[0, seq_lens[b])`` and N = ``max(seq_lens)``.
        resp_idx: ``[B, G]`` int64, the slot of each response position
            (``seq_lens[b] - G + i``).
        attention_mask: ``[B, N]`` bool key-valid vector (dvtp's attention turns it into a
            ``[B, 1, 1, N]`` key mask, never N x N), or None when no item is padded.
        logits_to_keep: what the model's ``logits_to_keep`` gets: G when every item ends at
            slot N (the response is the tail), else ``resp_idx``.
    """

    seq_lens: list[int]
    resp_idx: torch.Tensor
    attention_mask: torch.Tensor | None
    logits_to_keep: int | torch.Tensor

    @property
    def length(self) -> int:
        return max(self.seq_lens)


def sequence_layout(seq_lens: list[int], gen_length: int, device: torch.device) -> SequenceLayout:
    """The layout of items of ``seq_lens`` tokens (prompt + ``gen_length`` response) each."""
    n = max(seq_lens)
    lens = torch.tensor(seq_lens, dtype=torch.int64, device=device)
    resp_idx = (lens - gen_length).unsqueeze(1) + torch.arange(gen_length, device=device)
    if min(seq_lens) == n:
        return SequenceLayout(list(seq_lens), resp_idx, None, gen_length)
    mask = torch.arange(n, device=device).unsqueeze(0) < lens.unsqueeze(1)
    return SequenceLayout(list(seq_lens), resp_idx, mask, resp_idx)
