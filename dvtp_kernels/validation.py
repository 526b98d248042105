"""Argument checks for the public ops: everything is rejected here, before any kernel runs.

Each ``check_*`` returns the normalised arguments the backends receive (see
`dvtp_kernels.reference` for their meaning): per-item quantities become contiguous int64
``[B]`` tensors on the data's device. Range checks need the values on the host; for
CUDA tensors that costs one device-to-host copy per call (pass Python ints or CPU
tensors to avoid it).
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Sequence

import torch

from . import reference

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _shape(t: torch.Tensor) -> str:
    return "[" + ", ".join(str(s) for s in t.shape) + "]"


def require_tensor(value, name: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def require_same_device(t: torch.Tensor, name: str, device: torch.device, ref_name: str) -> None:
    if t.device != device:
        raise ValueError(
            f"{name} is on {t.device} but {ref_name} is on {device}; all tensors must be on one device"
        )


def index_vector(value, name: str, batch: int, device: torch.device) -> tuple[torch.Tensor, list[int]]:
    """An int, a sequence of ints, or an integer ``[B]`` tensor -> (int64 [B] on device, host list)."""
    if isinstance(value, torch.Tensor):
        if value.dtype.is_floating_point or value.dtype.is_complex or value.dtype == torch.bool:
            raise TypeError(f"{name} must be an integer tensor (int64 [B]), got dtype {value.dtype}")
        if value.dim() == 0:
            value = value.reshape(1).expand(batch)
        if value.dim() != 1 or value.shape[0] != batch:
            raise ValueError(f"{name} must have shape [B] = [{batch}], got {_shape(value)}")
        host = value.tolist()
        tensor = value.to(device=device, dtype=torch.int64).contiguous()
        return tensor, host
    host = host_ints(value, name, batch)
    return torch.tensor(host, dtype=torch.int64, device=device), host


def is_scalar_index(value) -> bool:
    """True for a per-item quantity given as one value for every item (an int or a 0-dim tensor)."""
    if isinstance(value, torch.Tensor):
        return value.dim() == 0
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def host_ints(value, name: str, batch: int) -> list[int]:
    """An int or a sequence of ints (not a tensor) -> B Python ints, or the argument's error."""
    # Fast paths for plain ints and lists of them (every call of the ops comes through here;
    # the numbers.Integral checks below are ABC look-ups).
    if type(value) is int:
        return [value] * batch
    if type(value) in (list, tuple) and len(value) == batch and all(type(v) is int for v in value):
        return list(value)
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return [int(value)] * batch
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        if len(value) != batch or not all(
            isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in value
        ):
            raise ValueError(f"{name} must be {batch} integers (one per batch item), got {value!r}")
        return [int(v) for v in value]
    raise TypeError(
        f"{name} must be an int, a sequence of ints or an int64 [B] tensor, got {type(value).__name__}"
    )


def _check_bool_vector(t, name: str, shape: tuple[int, ...], device: torch.device, ref: str) -> torch.Tensor:
    require_tensor(t, name)
    if t.dtype != torch.bool:
        raise TypeError(f"{name} must be a bool tensor of shape {list(shape)}, got dtype {t.dtype}")
    if tuple(t.shape) != shape:
        raise ValueError(f"{name} must have shape {list(shape)}, got {_shape(t)}")
    require_same_device(t, name, device, ref)
    return t.contiguous()


def check_scale(scale) -> None:
    if scale is None:
        return
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not math.isfinite(scale):
        raise TypeError(f"scale must be a finite float, got {scale!r}")


def check_keep_ratio(keep_ratio) -> None:
    if keep_ratio is None:
        return
    if isinstance(keep_ratio, bool) or not isinstance(keep_ratio, numbers.Real) or not (
        0.0 < keep_ratio <= 1.0
    ):
        raise ValueError(f"keep_ratio must be a number in (0, 1], got {keep_ratio!r}")


def check_accumulate_meta(q, k, scores, lse, key_valid) -> None:
    """The checks of `check_accumulate` that need no tensor values (run first by it, and by
    the fake kernel under torch.compile)."""
    require_tensor(q, "q")
    require_tensor(k, "k")
    require_tensor(scores, "scores")
    if q.dtype not in FLOAT_DTYPES:
        raise TypeError(f"q must be float32, float16 or bfloat16, got {q.dtype}")
    if k.dtype != q.dtype:
        raise TypeError(f"k must have the dtype of q ({q.dtype}), got {k.dtype}")
    if q.dim() != 4:
        raise ValueError(f"q must be [B, Hq, N, D], got shape {_shape(q)}")
    if k.dim() != 4:
        raise ValueError(f"k must be [B, Hkv, N, D], got shape {_shape(k)}")
    B, Hq, N, D = q.shape
    Hkv = k.shape[1]
    if k.shape[0] != B or k.shape[2] != N or k.shape[3] != D:
        raise ValueError(
            f"k must be [B, Hkv, N, D] = [{B}, Hkv, {N}, {D}] to match q {_shape(q)}, got {_shape(k)}"
        )
    if Hkv == 0 or Hq % Hkv != 0:
        raise ValueError(f"q's head count Hq={Hq} must be a multiple of k's head count Hkv={Hkv} (GQA)")
    device = q.device
    require_same_device(k, "k", device, "q")
    require_same_device(scores, "scores", device, "q")
    if scores.dtype != torch.float32:
        raise TypeError(f"scores must be a float32 [B, R, Vmax] buffer, got dtype {scores.dtype}")
    if scores.dim() != 3 or scores.shape[0] != B:
        raise ValueError(f"scores must be [B, R, Vmax] with B={B}, got shape {_shape(scores)}")
    if not scores.is_contiguous():
        raise ValueError("scores must be contiguous (it is updated in place)")
    if lse is not None:
        require_tensor(lse, "lse")
        if lse.dtype != torch.float32:
            raise TypeError(f"lse must be float32 [B, Hq, N], got dtype {lse.dtype}")
        if tuple(lse.shape) != (B, Hq, N):
            raise ValueError(f"lse must have shape [B, Hq, N] = [{B}, {Hq}, {N}], got {_shape(lse)}")
        require_same_device(lse, "lse", device, "q")
    if key_valid is not None:
        _check_bool_vector(key_valid, "key_valid", (B, N), device, "q")


@dataclass(frozen=True)
class ScoreSpans:
    """The per-item spans of `accumulate_visual_scores`, validated once for a whole scoring
    pass (every layer of a forward has the same spans): pass it as ``query_start`` (with
    ``key_start`` and ``key_len`` None) and the per-call range checks, with their
    host round trip, are skipped. Build it with `score_spans`.

    Attributes:
        query_start, key_start, key_len: int64 ``[B]`` tensors on ``device``.
        batch, rows, seq_len, vmax: the B, R, N and Vmax they were checked against.
    """

    query_start: torch.Tensor
    key_start: torch.Tensor
    key_len: torch.Tensor
    batch: int
    rows: int
    seq_len: int
    vmax: int

    def matches(self, q: torch.Tensor, scores: torch.Tensor) -> bool:
        return (
            (q.shape[0], q.shape[2], scores.shape[1], scores.shape[2]) == (self.batch, self.seq_len, self.rows, self.vmax)
            and self.query_start.device == q.device
        )


def _check_spans(qs_host, ks_host, kl_host, B, R, N, Vmax) -> None:
    for b in range(B):
        if qs_host[b] < 0 or qs_host[b] + R > N:
            raise ValueError(
                f"query rows [query_start, query_start + R) = [{qs_host[b]}, {qs_host[b] + R}) of item {b} "
                f"fall outside the sequence of N={N} (R={R} from scores.shape[1])"
            )
        if ks_host[b] < 0 or kl_host[b] < 0 or ks_host[b] + kl_host[b] > N:
            raise ValueError(
                f"key span [key_start, key_start + key_len) = [{ks_host[b]}, {ks_host[b] + kl_host[b]}) "
                f"of item {b} falls outside the sequence of N={N}"
            )
        if kl_host[b] > Vmax:
            raise ValueError(f"key_len[{b}]={kl_host[b]} exceeds scores.shape[2] (Vmax={Vmax})")


def score_spans(query_start, key_start, key_len, *, batch: int, rows: int, seq_len: int, vmax: int,
                device: torch.device) -> ScoreSpans:
    """Check the spans of a scoring pass once (same rules and messages as
    `accumulate_visual_scores`) against ``batch`` B, ``rows`` R, ``seq_len`` N and ``vmax``."""
    qs, qs_host = index_vector(query_start, "query_start", batch, device)
    ks, ks_host = index_vector(key_start, "key_start", batch, device)
    kl, kl_host = index_vector(key_len, "key_len", batch, device)
    _check_spans(qs_host, ks_host, kl_host, batch, rows, seq_len, vmax)
    return ScoreSpans(qs, ks, kl, batch, rows, seq_len, vmax)


def check_accumulate(q, k, scores, query_start, key_start, key_len, scale, lse, key_valid) -> dict:
    check_accumulate_meta(q, k, scores, lse, key_valid)
    B, Hq, N, D = q.shape
    device = q.device
    R, Vmax = scores.shape[1], scores.shape[2]
    if isinstance(query_start, ScoreSpans):
        spans = query_start
        if key_start is not None or key_len is not None:
            raise ValueError("with query_start given as ScoreSpans, key_start and key_len must be None")
        if not spans.matches(q, scores):
            raise ValueError(
                f"query_start: ScoreSpans checked for B={spans.batch}, N={spans.seq_len}, R={spans.rows}, "
                f"Vmax={spans.vmax} on {spans.query_start.device}, got q {_shape(q)} on {device} and scores {_shape(scores)}"
            )
        qs, ks, kl = spans.query_start, spans.key_start, spans.key_len
    else:
        qs, qs_host = index_vector(query_start, "query_start", B, device)
        ks, ks_host = index_vector(key_start, "key_start", B, device)
        kl, kl_host = index_vector(key_len, "key_len", B, device)
        _check_spans(qs_host, ks_host, kl_host, B, R, N, Vmax)
    if scale is None:
        scale = D ** -0.5
    check_scale(scale)
    if key_valid is not None:
        key_valid = key_valid.contiguous()
    return dict(
        q=q.detach(), k=k.detach(), scores=scores, query_start=qs, key_start=ks, key_len=kl,
        scale=float(scale), lse=None if lse is None else lse.detach(), key_valid=key_valid,
    )


def check_select_meta(scores, row_mask) -> None:
    """The checks of `check_select` that need no tensor values (also run by the fake kernel
    under torch.compile)."""
    require_tensor(scores, "scores")
    if scores.dtype != torch.float32:
        raise TypeError(f"scores must be float32 [B, R, Vmax], got dtype {scores.dtype}")
    if scores.dim() != 3:
        raise ValueError(f"scores must be [B, R, Vmax], got shape {_shape(scores)}")
    B, R, _ = scores.shape
    _check_bool_vector(row_mask, "row_mask", (B, R), scores.device, "scores")


def check_select(scores, row_mask, seq_len, key_start, key_len, keep_ratio, keep) -> tuple[dict, list[int]]:
    """Returns (normalised args without keep_count, requested keep per item or None)."""
    args, requested, _, _ = check_select_spans(scores, row_mask, seq_len, key_start, key_len, keep_ratio, keep)
    return args, requested.tolist()


def check_select_spans(scores, row_mask, seq_len, key_start, key_len, keep_ratio, keep):
    """`check_select`, with the requested keep as an int64 ``[B]`` tensor on scores' device
    and the host lists of seq_len and key_len: (args, requested, seq_len_host, key_len_host).
    Spans given as ints and the requested keep travel to the device in one tensor."""
    check_select_meta(scores, row_mask)
    B, R, Vmax = scores.shape
    device = scores.device
    row_mask = row_mask.contiguous()
    spans = [
        index_vector(value, name, B, device) if isinstance(value, torch.Tensor) else (None, host_ints(value, name, B))
        for value, name in ((seq_len, "seq_len"), (key_start, "key_start"), (key_len, "key_len"))
    ]
    sl_host, ks_host, kl_host = (host for _, host in spans)
    for b in range(B):
        if ks_host[b] < 0 or kl_host[b] < 0 or ks_host[b] + kl_host[b] > sl_host[b]:
            raise ValueError(
                f"key span [key_start, key_start + key_len) = [{ks_host[b]}, {ks_host[b] + kl_host[b]}) "
                f"of item {b} falls outside its sequence of seq_len={sl_host[b]}"
            )
        if kl_host[b] > Vmax:
            raise ValueError(f"key_len[{b}]={kl_host[b]} exceeds scores.shape[2] (Vmax={Vmax})")
    if (keep_ratio is None) == (keep is None):
        raise ValueError("give exactly one of keep_ratio and keep")
    if keep_ratio is not None:
        check_keep_ratio(keep_ratio)
        requested = reference.requested_keep_count(kl_host, float(keep_ratio))
    else:
        scalar = is_scalar_index(keep)
        _, requested = index_vector(keep, "keep", B, torch.device("cpu"))
        for b in range(B):
            if scalar and kl_host[b] == 0:
                # One keep for the whole batch: a text-only item (no visual tokens) keeps 0.
                requested[b] = 0
                continue
            low = 1 if kl_host[b] > 0 else 0
            if not low <= requested[b] <= kl_host[b]:
                raise ValueError(
                    f"keep[{b}]={requested[b]} must lie in [{low}, key_len[{b}]={kl_host[b]}]"
                )
    # One host-to-device copy (one tensor creation) for everything given as Python ints.
    rows = [host for tensor, host in spans if tensor is None] + [requested]
    made = iter(torch.tensor(rows, dtype=torch.int64, device=device).unbind(0))  # [k, B] rows
    sl, ks, kl = (tensor if tensor is not None else next(made) for tensor, _ in spans)
    requested = next(made)
    args = dict(scores=scores.contiguous(), row_mask=row_mask, seq_len=sl, key_start=ks, key_len=kl)
    return args, requested, sl_host, kl_host


# Float dtypes with IEEE infinities and NaN: a non-finite pad value is stored exactly.
_IEEE_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64,
                      torch.complex32, torch.complex64, torch.complex128, torch.float8_e5m2)


def pad_value_problem(pad_value, dtype: torch.dtype) -> str | None:
    """Why ``pad_value`` cannot be stored in ``dtype`` (None when it can).

    bool: 0, 1, False or True. Integer dtypes: an integer (a float only when integral) within
    ``torch.iinfo(dtype)``. Float dtypes: a finite value with ``|pad_value| <=
    torch.finfo(dtype).max`` (rounded to the nearest representable value), or +-inf / nan
    for the dtypes that have them (float16, bfloat16, float32, float64, float8_e5m2,
    complex); the other float8 dtypes take finite values only. Complex dtypes: the rule of
    their real type (the pad is real).
    """
    if dtype == torch.bool:
        return None if pad_value in (0, 1) else "bool takes 0, 1, False or True"
    if dtype.is_floating_point or dtype.is_complex:
        info = torch.finfo(dtype)
        limit = f"finite values need |pad_value| <= {info.max:g}"
        if isinstance(pad_value, numbers.Integral):  # bool or int: exact, never inf or nan
            return None if abs(int(pad_value)) <= info.max else limit
        value = float(pad_value)
        if math.isnan(value) or math.isinf(value):
            if dtype in _IEEE_FLOAT_DTYPES:
                return None
            return f"{limit}; {dtype} has no inf or nan"
        return None if abs(value) <= info.max else limit
    try:
        info = torch.iinfo(dtype)
    except TypeError:  # quantized or other exotic dtypes: left to the backend
        return None
    expected = f"integers in [{info.min}, {info.max}]"
    if isinstance(pad_value, numbers.Integral):
        value = int(pad_value)
    else:
        as_float = float(pad_value)  # (numpy floats too)
        if not as_float.is_integer():  # also inf and nan
            return expected
        value = int(as_float)
    return None if info.min <= value <= info.max else expected


def check_pad_value(pad_value, tensors) -> None:
    if isinstance(pad_value, torch.Tensor) or not isinstance(pad_value, numbers.Real):
        raise TypeError(f"pad_value must be a bool, int or float, got {type(pad_value).__name__}")
    for i, t in enumerate(tensors):
        problem = pad_value_problem(pad_value, t.dtype)
        if problem is not None:
            raise ValueError(
                f"pad_value={pad_value!r} is not representable in tensors[{i}]'s dtype {t.dtype} "
                f"({problem})"
            )


def scalar_pad_value(pad_value):
    """pad_value as a Python bool, int or float that converts to a c10::Scalar: ints outside
    [-2**63, 2**64) -- representable only in float dtypes, as checked before -- become the
    nearest float."""
    if isinstance(pad_value, bool):
        return pad_value
    if isinstance(pad_value, numbers.Integral):
        value = int(pad_value)
        return value if -(2**63) <= value < 2**64 else float(value)
    return float(pad_value)


def check_gather_meta(tensors, gather_index, dims, pad_value) -> tuple[list[int], int | None]:
    """The checks of `check_gather` that need no tensor values (shapes, dtypes, dims,
    pad_value): also run by the fake kernel under torch.compile. Returns (normalised dims,
    the common sequence length or None without tensors)."""
    if isinstance(tensors, torch.Tensor) or not isinstance(tensors, Sequence):
        raise TypeError("tensors must be a list or tuple of tensors (wrap a single tensor in a list)")
    require_tensor(gather_index, "gather_index")
    if gather_index.dtype != torch.int64 or gather_index.dim() != 2:
        raise TypeError(
            f"gather_index must be an int64 [B, M] tensor, got dtype {gather_index.dtype} shape {_shape(gather_index)}"
        )
    B = gather_index.shape[0]
    device = gather_index.device
    if isinstance(dims, numbers.Integral):
        dims = [int(dims)] * len(tensors)
    elif len(dims) != len(tensors):
        raise ValueError(f"dims must be an int or one int per tensor ({len(tensors)}), got {list(dims)}")
    if isinstance(pad_value, torch.Tensor) or not isinstance(pad_value, numbers.Real):
        raise TypeError(f"pad_value must be a bool, int or float, got {type(pad_value).__name__}")
    seq = None
    norm_dims = []
    for i, (t, d) in enumerate(zip(tensors, dims)):
        name = f"tensors[{i}]"
        require_tensor(t, name)
        require_same_device(t, name, device, "gather_index")
        if t.dim() < 2:
            raise ValueError(f"{name} must have a batch dim and a sequence dim, got shape {_shape(t)}")
        if not -t.dim() <= d < t.dim() or d % t.dim() == 0:
            raise ValueError(f"dims[{i}]={d} is not a sequence dim of {name} with shape {_shape(t)} (dim 0 is the batch)")
        d = d % t.dim()
        if t.shape[0] != B:
            raise ValueError(f"{name} has batch {t.shape[0]} but gather_index has B={B}")
        if seq is None:
            seq = t.shape[d]
        elif t.shape[d] != seq:
            raise ValueError(f"{name} has sequence length {t.shape[d]} along dim {d}, but tensors[0] has {seq}")
        norm_dims.append(d)
    check_pad_value(pad_value, tensors)
    return norm_dims, seq


def check_gather(tensors, gather_index, new_len, dims, pad_value) -> dict:
    norm_dims, seq = check_gather_meta(tensors, gather_index, dims, pad_value)
    B, M = gather_index.shape
    device = gather_index.device
    nl, nl_host = index_vector(new_len, "new_len", B, device)
    if tensors:
        # One device-to-host read checks every index: in range, valid exactly below new_len.
        positions = torch.arange(M, device=device).unsqueeze(0)
        inside = positions < nl.unsqueeze(1)
        bad_range = ((gather_index >= seq) | (gather_index < -1)).any()
        bad_layout = (inside & (gather_index < 0)).any() | (~inside & (gather_index != -1)).any()
        bad_range, bad_layout = torch.stack([bad_range, bad_layout]).tolist()
        if any(n < 0 or n > M for n in nl_host):
            raise ValueError(f"new_len must lie in [0, M={M}] (gather_index.shape[1]), got {nl_host}")
        if bad_range:
            raise ValueError(f"gather_index has entries outside [-1, N={seq}) (N: the tensors' sequence length)")
        if bad_layout:
            raise ValueError("gather_index must hold >= 0 entries exactly at positions < new_len and -1 after")
    return dict(tensors=list(tensors), gather_index=gather_index.contiguous(), dims=norm_dims,
                pad_value=scalar_pad_value(pad_value))


def nan_importance_error(scores, row_mask, key_len_host: list[int], bad_items: list[int]) -> ValueError:
    """The error for the items a backend flagged (nan_item): called only on failure, so its
    per-item counts may read scores again and sync."""
    V = scores.shape[2]
    lines = []
    for b in bad_items:
        kl = key_len_host[b]
        sel_rows = int(row_mask[b].sum())
        nan_rows = int((torch.isnan(scores[b, :, :kl]).any(dim=1) & row_mask[b]).sum())
        if nan_rows:
            what = f"{nan_rows} of its {sel_rows} selected rows (row_mask) hold NaN"
        else:
            what = f"its {sel_rows} selected rows (row_mask) hold +inf and -inf in one column"
        lines.append(f"item {b}: {what} within its key_len={kl} visual columns (Vmax={V})")
    return ValueError(
        "scores gives a NaN importance, so the selection would be arbitrary: "
        + "; ".join(lines)
        + ". NaN comes from NaN/inf in q, k or lse of accumulate_visual_scores (see its docstring)."
    )
