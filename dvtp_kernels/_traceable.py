"""What the public ops trace to under ``torch.compile`` (and ``torch.export``).

Eager calls validate, pick a backend and launch in Python, reading a few values on the
host (ranges, output sizes, the NaN check). None of that can run on the symbolic tensors
Dynamo traces with, and tracing into it would also reach the lazy extension loader
(`dvtp_kernels._extension.load`, which registers fake kernels: Dynamo refuses that). So
while Dynamo traces, each public function records ONE opaque custom op instead:

    dvtp::accumulate_visual_scores_api   (mutates scores)
    dvtp::select_visual_tokens_api       (outputs of data-dependent width: unbacked sizes)
    dvtp::gather_compact_api

Their real implementation is the eager public function itself, so when the compiled graph
runs, the call is validated (same checks and messages as eager, still before any kernel),
dispatched (``backend`` / ``DVTP_BACKEND`` / default order, decided per call) and
launched exactly as in eager mode; results are bit-identical to eager. Their fake
implementations run the value-free checks (dtypes, shapes, dims, pad_value) and give the
output shapes. What must be decided while tracing -- the Python types of the arguments,
as the op schemas fix them -- is checked here with the eager messages (under
``fullgraph=True`` Dynamo reports such an error as "Observed exception", quoting it).

The ops are registered when `dvtp_kernels` is imported (never lazily: a registration
inside traced code is what broke fullgraph). Registering loads no extension and does
not touch CUDA.
"""
from __future__ import annotations

import numbers
from typing import Optional, Sequence, Union

import torch

from . import validation
from .dispatch import BACKENDS, BackendError

Scalar = Union[int, float, bool]


# --------------------------------------------------------------------------------------
# Trace-time packing of Python arguments into the ops' schema types
# --------------------------------------------------------------------------------------


def _item_tensor(value, name: str, batch: int) -> torch.Tensor:
    """A per-item quantity as a tensor: tensors as they are, an int as a 0-dim int64 tensor
    (still "one value for every item", as validation reads 0-dim tensors), B ints as a
    [B] int64 tensor. Anything else raises the eager error."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return torch.tensor(int(value), dtype=torch.int64)
    return torch.tensor(validation.host_ints(value, name, batch), dtype=torch.int64)


def _backend(backend) -> Optional[str]:
    if backend is not None and not isinstance(backend, str):
        raise BackendError(f"backend={backend!r} is not a backend; expected one of {', '.join(BACKENDS)}")
    return backend


def _tensor_or_none(value, name: str) -> Optional[torch.Tensor]:
    return None if value is None else validation.require_tensor(value, name)


def _scalar(value) -> Scalar:
    if isinstance(value, torch.Tensor) or not isinstance(value, numbers.Real):
        raise TypeError(f"pad_value must be a bool, int or float, got {type(value).__name__}")
    return validation.scalar_pad_value(value)


def _batch(t) -> int:
    return t.shape[0] if isinstance(t, torch.Tensor) and t.dim() > 0 else 0


# --------------------------------------------------------------------------------------
# accumulate_visual_scores
# --------------------------------------------------------------------------------------


@torch.library.custom_op("dvtp::accumulate_visual_scores_api", mutates_args=("scores",))
def _accumulate_api(
    q: torch.Tensor,
    k: torch.Tensor,
    scores: torch.Tensor,
    query_start: torch.Tensor,
    key_start: torch.Tensor,
    key_len: torch.Tensor,
    scale: Optional[float],
    lse: Optional[torch.Tensor],
    key_valid: Optional[torch.Tensor],
    backend: Optional[str],
) -> None:
    from . import _accumulate_eager

    _accumulate_eager(q, k, scores, query_start, key_start, key_len, scale, lse, key_valid, backend)


@_accumulate_api.register_fake
def _accumulate_api_fake(q, k, scores, query_start, key_start, key_len, scale, lse, key_valid, backend):
    validation.check_accumulate_meta(q, k, scores, lse, key_valid)
    return None


def accumulate_visual_scores(q, k, scores, query_start, key_start, key_len, scale, lse, key_valid, backend):
    for value, name in ((q, "q"), (k, "k"), (scores, "scores")):
        validation.require_tensor(value, name)
    validation.check_scale(scale)
    B = _batch(q)
    if isinstance(query_start, validation.ScoreSpans):  # the op re-validates its tensors when it runs
        if key_start is not None or key_len is not None:
            raise ValueError("with query_start given as ScoreSpans, key_start and key_len must be None")
        query_start, key_start, key_len = query_start.query_start, query_start.key_start, query_start.key_len
    torch.ops.dvtp.accumulate_visual_scores_api(
        q, k, scores,
        _item_tensor(query_start, "query_start", B),
        _item_tensor(key_start, "key_start", B),
        _item_tensor(key_len, "key_len", B),
        None if scale is None else float(scale),
        _tensor_or_none(lse, "lse"),
        _tensor_or_none(key_valid, "key_valid"),
        _backend(backend),
    )
    return scores


# --------------------------------------------------------------------------------------
# select_visual_tokens
# --------------------------------------------------------------------------------------


@torch.library.custom_op("dvtp::select_visual_tokens_api", mutates_args=())
def _select_api(
    scores: torch.Tensor,
    row_mask: torch.Tensor,
    seq_len: torch.Tensor,
    key_start: torch.Tensor,
    key_len: torch.Tensor,
    keep_ratio: Optional[float],
    keep: Optional[torch.Tensor],
    backend: Optional[str],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from . import _select_eager

    return _select_eager(scores, row_mask, seq_len, key_start, key_len, keep_ratio, keep, backend)


@_select_api.register_fake
def _select_api_fake(scores, row_mask, seq_len, key_start, key_len, keep_ratio, keep, backend):
    validation.check_select_meta(scores, row_mask)
    ctx = torch.library.get_ctx()
    B = scores.shape[0]
    max_new_len = ctx.new_dynamic_size()  # max(new_len): known when the graph runs
    max_keep = ctx.new_dynamic_size()  # max(keep_count)
    return (
        scores.new_empty((B, max_new_len), dtype=torch.int64),
        scores.new_empty((B,), dtype=torch.int64),
        scores.new_empty((B, max_keep), dtype=torch.int64),
        scores.new_empty((B,), dtype=torch.int64),
    )


def select_visual_tokens(scores, row_mask, seq_len, key_start, key_len, keep_ratio, keep, backend):
    validation.require_tensor(scores, "scores")
    validation.require_tensor(row_mask, "row_mask")
    if (keep_ratio is None) == (keep is None):
        raise ValueError("give exactly one of keep_ratio and keep")
    validation.check_keep_ratio(keep_ratio)
    B = _batch(scores)
    return tuple(
        torch.ops.dvtp.select_visual_tokens_api(
            scores, row_mask,
            _item_tensor(seq_len, "seq_len", B),
            _item_tensor(key_start, "key_start", B),
            _item_tensor(key_len, "key_len", B),
            None if keep_ratio is None else float(keep_ratio),
            None if keep is None else _item_tensor(keep, "keep", B),
            _backend(backend),
        )
    )


# --------------------------------------------------------------------------------------
# gather_compact
# --------------------------------------------------------------------------------------


@torch.library.custom_op("dvtp::gather_compact_api", mutates_args=())
def _gather_api(
    tensors: list[torch.Tensor],
    gather_index: torch.Tensor,
    new_len: torch.Tensor,
    dims: list[int],
    pad_value: Scalar,
    backend: Optional[str],
) -> list[torch.Tensor]:
    from . import _gather_eager

    # Outputs are new tensors (never views of the inputs), as the op contract requires.
    return _gather_eager(tensors, gather_index, new_len, dims, pad_value, backend)


@_gather_api.register_fake
def _gather_api_fake(tensors, gather_index, new_len, dims, pad_value, backend):
    from .fake import gather_fake

    norm_dims, _ = validation.check_gather_meta(tensors, gather_index, dims, pad_value)
    return gather_fake(tensors, gather_index, norm_dims, pad_value)


def gather_compact(tensors, gather_index, new_len, dims, pad_value, backend):
    if isinstance(tensors, torch.Tensor) or not isinstance(tensors, Sequence):
        raise TypeError("tensors must be a list or tuple of tensors (wrap a single tensor in a list)")
    tensors = list(tensors)
    for i, t in enumerate(tensors):
        validation.require_tensor(t, f"tensors[{i}]")
    validation.require_tensor(gather_index, "gather_index")
    if isinstance(dims, numbers.Integral) and not isinstance(dims, bool):
        dims = [int(dims)] * len(tensors)
    elif isinstance(dims, Sequence) and all(isinstance(d, numbers.Integral) for d in dims):
        dims = [int(d) for d in dims]
    else:
        raise TypeError(f"dims must be an int or a sequence of ints, got {dims!r}")
    return list(
        torch.ops.dvtp.gather_compact_api(
            tensors, gather_index, _item_tensor(new_len, "new_len", _batch(gather_index)),
            dims, _scalar(pad_value), _backend(backend),
        )
    )
