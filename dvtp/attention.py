"""The dvtp attention hook: bidirectional SDPA that can also feed the score-accumulation op.

``patched(model)`` switches the language model of a transformers model (Llama, Qwen2 and
other models built on transformers' `AttentionInterface`; for a VLM only its language
model, never its vision tower) to the attention implementation ``"dvtp_sdpa"`` and
restores the previous one when it is removed. Registration is lazy (first `patched`
call), never at import; it only adds new keys to transformers' registries.

``dvtp_sdpa`` is *bidirectional*:

* the attention function always calls SDPA with ``is_causal=False`` and never looks at
  the module's ``is_causal`` flag;
* transformers' mask factories (``create_causal_mask``, ``create_bidirectional_mask``,
  sliding-window variants) look up ``"dvtp_sdpa"`` in `AttentionMaskInterface`, where dvtp
  registers `padding_mask`: it ignores the causal pattern and returns None (no mask at
  all) without an attention mask, else a broadcastable ``[B, 1, 1, N]`` bool key mask.
  No N x N mask is ever built.

While a scoring pass is active (``with hook.scoring(...)``), each scored layer also calls
`dvtp_kernels.accumulate_visual_scores` with its post-RoPE q/k. The row log-sum-exp comes
from the attention kernel when it returns one (CPU: ``aten._scaled_dot_product_flash_
attention_for_cpu``; CUDA: the flash / memory-efficient ops), else the op computes it for
the R query rows only. Attention weights are never materialised. Outside scoring passes
the function is a plain SDPA call.
"""
from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import torch
import torch.nn.functional as F

import dvtp_kernels

__all__ = [
    "ATTENTION_NAME",
    "register",
    "dvtp_sdpa_attention",
    "padding_mask",
    "AttentionHook",
    "ScoringPass",
    "patched",
    "attention_modules",
    "language_model",
]

ATTENTION_NAME = "dvtp_sdpa"
_KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_register_lock = threading.Lock()
_registered = False


def register() -> str:
    """Register ``"dvtp_sdpa"`` in transformers' attention and mask registries (idempotent)."""
    global _registered
    with _register_lock:
        if not _registered:
            from transformers import AttentionInterface
            from transformers.masking_utils import AttentionMaskInterface

            AttentionInterface.register(ATTENTION_NAME, dvtp_sdpa_attention)
            AttentionMaskInterface.register(ATTENTION_NAME, padding_mask)
            _registered = True
    return ATTENTION_NAME


# ----------------------------------------------------------------------------------------
# Mask function (transformers' AttentionMaskInterface)
# ----------------------------------------------------------------------------------------


def padding_mask(
    batch_size: int,
    q_length: int,
    kv_length: int,
    q_offset: int = 0,
    kv_offset: int = 0,
    mask_function=None,
    attention_mask: torch.Tensor | None = None,
    **kwargs,
) -> torch.Tensor | None:
    """Mask factory for ``dvtp_sdpa``: full bidirectional attention, padding only.

    ``mask_function`` (the causal / sliding pattern transformers asks for) is ignored on
    purpose. Returns None without an ``attention_mask``, else a ``[B, 1, 1, kv_length]``
    bool mask (True = attend) that SDPA broadcasts over heads and query rows. A given mask
    is used as is, never inspected on the host (that would be a device sync per forward):
    `dvtp.generate` passes one only when some item is padded; pass None for "no padding".
    """
    if attention_mask is None:
        return None
    mask = attention_mask
    if mask.dim() != 2:  # already prepared masks never reach mask factories, but be safe
        return mask
    mask = mask.to(torch.bool)
    if kv_offset or mask.shape[-1] != kv_length:
        mask = mask[:, kv_offset : kv_offset + kv_length]
    return mask[:, None, None, :]


# ----------------------------------------------------------------------------------------
# Scoring state
# ----------------------------------------------------------------------------------------


@dataclass
class ScoringPass:
    """One scoring forward: where the response rows and visual keys are, and the buffer.

    ``scores`` ``[B, R, Vmax]`` float32 receives, for every scored layer,
    ``sum_h P_h[query_start + i, key_start + j]``. ``layers`` None = every layer.
    """

    scores: torch.Tensor
    query_start: Sequence[int] | int
    key_start: Sequence[int] | int
    key_len: Sequence[int] | int
    layers: frozenset[int] | None = None
    backend: str | None = None
    scored_layers: list[int] = field(default_factory=list)
    lse_from_kernel: list[bool] = field(default_factory=list)
    _spans: "dvtp_kernels.ScoreSpans | None" = field(default=None, repr=False)

    def includes(self, layer_idx) -> bool:
        return self.layers is None or layer_idx in self.layers

    def spans(self, q: torch.Tensor) -> "dvtp_kernels.ScoreSpans":
        """The pass's spans, validated once (at its first scored layer) and reused by the
        others: every layer of a forward has the same B, N, R and Vmax."""
        if self._spans is None or not self._spans.matches(q, self.scores):
            self._spans = dvtp_kernels.score_spans(
                self.query_start, self.key_start, self.key_len, batch=q.shape[0], rows=self.scores.shape[1],
                seq_len=q.shape[2], vmax=self.scores.shape[2], device=q.device,
            )
        return self._spans


# ----------------------------------------------------------------------------------------
# Attention function (transformers' AttentionInterface)
# ----------------------------------------------------------------------------------------


def _key_valid(mask: torch.Tensor | None, batch: int, n: int) -> torch.Tensor | None:
    """``[B, N]`` bool key-valid vector from a ``[B, 1, 1, N]`` bool mask (None: all valid)."""
    if mask is None:
        return None
    if mask.dtype == torch.bool and mask.dim() == 4 and mask.shape[1] == 1 and mask.shape[2] == 1:
        return mask[:, 0, 0, :].expand(batch, n).contiguous()
    raise ValueError(
        "dvtp_sdpa scoring pass: only a key-padding mask ([B, 1, 1, N] bool, from a 2D "
        f"attention_mask) is supported, got a mask of shape {list(mask.shape)} and dtype {mask.dtype}"
    )


def _additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """bool ``[B, 1, 1, N]`` -> additive float mask (0 / -inf) of ``dtype`` (still [B, 1, 1, N])."""
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, float("-inf"))


def _sdpa(query, key, value, mask, dropout, scaling):
    gqa = query.shape[1] != key.shape[1]
    return F.scaled_dot_product_attention(
        query, key, value, attn_mask=mask, dropout_p=dropout, is_causal=False, scale=scaling,
        enable_gqa=gqa,
    )


def _sdpa_with_lse(query, key, value, mask, dropout, scaling):
    """(out ``[B, H, N, D]``, lse ``[B, H, N]`` float32 or None): one attention call that
    also returns the row log-sum-exp where the backend kernel gives it."""
    device = query.device
    if device.type == "cpu" and query.dtype in _KERNEL_DTYPES:
        # The kernel F.scaled_dot_product_attention itself runs on CPU (bit-identical
        # output), called directly because it also returns the log-sum-exp.
        try:
            attn_mask = None if mask is None else _additive(mask, query.dtype)
            out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
                query, key, value, dropout, False, attn_mask=attn_mask, scale=scaling
            )
            return out, (lse if lse.dtype == torch.float32 else None)
        except RuntimeError:
            pass
    elif device.type == "cuda" and query.dtype in _KERNEL_DTYPES:
        group = query.shape[1] // key.shape[1]
        k_full = key if group == 1 else key.repeat_interleave(group, dim=1)
        v_full = value if group == 1 else value.repeat_interleave(group, dim=1)
        n = query.shape[2]
        try:
            if mask is None and query.dtype != torch.float32:
                res = torch.ops.aten._scaled_dot_product_flash_attention(
                    query, k_full, v_full, dropout, False, False, scale=scaling
                )
                return res[0], res[1][..., :n]
            bias = None
            if mask is not None:
                b, h = query.shape[0], query.shape[1]
                bias = _additive(mask, query.dtype).expand(b, h, n, n)  # a view, no N x N storage
            res = torch.ops.aten._scaled_dot_product_efficient_attention(
                query, k_full, v_full, bias, True, dropout, False, scale=scaling
            )
            return res[0], res[1][..., :n]
        except RuntimeError:
            pass
    return _sdpa(query, key, value, mask, dropout, scaling), None


def dvtp_sdpa_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    sliding_window: int | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers attention function: bidirectional SDPA (+ score accumulation while scoring).

    query ``[B, Hq, N, D]``, key/value ``[B, Hkv, N, D]`` (post-RoPE); attention_mask None or
    a ``[B, 1, 1, N]`` key-padding mask (see `padding_mask`). ``is_causal`` is ignored: the
    models this serves are bidirectional. Returns ``([B, N, Hq, D], None)``.
    """
    if sliding_window is not None:
        raise ValueError(
            "dvtp_sdpa runs full bidirectional attention; sliding-window layers "
            f"(sliding_window={sliding_window}) are not supported"
        )
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    hook = getattr(module, "_dvtp_hook", None)
    state = hook.active_scoring if hook is not None else None
    layer_idx = getattr(module, "layer_idx", None)
    if state is None or not state.includes(layer_idx):
        out = _sdpa(query, key, value, attention_mask, dropout, scaling)
        return out.transpose(1, 2).contiguous(), None

    B, _, N, _ = query.shape
    key_valid = _key_valid(attention_mask, B, N)
    out, lse = _sdpa_with_lse(query, key, value, attention_mask, dropout, scaling)
    q, k = query, key
    if q.dtype not in _KERNEL_DTYPES:  # e.g. a float64 model: the kernels take 32/16-bit floats
        q, k, lse = q.float(), k.float(), None
    dvtp_kernels.accumulate_visual_scores(
        q, k, state.scores, state.spans(q), scale=scaling, lse=lse, key_valid=key_valid, backend=state.backend,
    )
    state.scored_layers.append(layer_idx)
    state.lse_from_kernel.append(lse is not None)
    return out.transpose(1, 2).contiguous(), None


# ----------------------------------------------------------------------------------------
# Installing on a model
# ----------------------------------------------------------------------------------------


def language_model(model: torch.nn.Module) -> torch.nn.Module:
    """The decoder whose attention dvtp switches: ``model.get_decoder()`` when the model
    has one (a ForCausalLM's base model; a VLM's language model, so its vision tower keeps
    its own attention), else the model itself."""
    get_decoder = getattr(model, "get_decoder", None)
    decoder = get_decoder() if callable(get_decoder) else None
    return decoder if isinstance(decoder, torch.nn.Module) else model


def attention_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The self-attention modules of the model's language model (those with q/k
    projections and a ``layer_idx``), in layer order."""
    found = [
        m for m in language_model(model).modules()
        if hasattr(m, "layer_idx") and hasattr(m, "q_proj") and hasattr(m, "k_proj")
    ]
    return sorted(found, key=lambda m: m.layer_idx)


class AttentionHook:
    """The dvtp attention installed on one model; see `patched`.

    Attributes:
        model: the patched model.
        num_layers: number of attention layers found.
        active_scoring: the running `ScoringPass`, or None.
    """

    def __init__(self, model: torch.nn.Module):
        if not hasattr(model, "set_attn_implementation") or not hasattr(model, "config"):
            raise TypeError(
                "dvtp.patched needs a transformers PreTrainedModel whose attention goes through "
                f"AttentionInterface, got {type(model).__name__}"
            )
        self.model = model
        self.active_scoring: ScoringPass | None = None
        self._depth = 0
        self._previous: str | None = None
        self._decoder: torch.nn.Module | None = None  # the language model whose attention is switched
        self._modules: list[torch.nn.Module] = []

    @property
    def installed(self) -> bool:
        return self._depth > 0

    @property
    def num_layers(self) -> int:
        return len(self._modules)

    def _install(self) -> None:
        register()
        modules = attention_modules(self.model)
        if not modules:
            raise TypeError(f"no attention modules (with q_proj/k_proj/layer_idx) found in {type(self.model).__name__}")
        self._decoder = language_model(self.model)
        self._previous = self._decoder.config._attn_implementation
        self._decoder.set_attn_implementation(ATTENTION_NAME)
        for m in modules:
            m._dvtp_hook = self
        self._modules = modules
        self.model._dvtp_hook = self

    def _uninstall(self) -> None:
        for m in self._modules:
            if getattr(m, "_dvtp_hook", None) is self:
                del m._dvtp_hook
        self._modules = []
        if getattr(self.model, "_dvtp_hook", None) is self:
            del self.model._dvtp_hook
        self.active_scoring = None
        previous, self._previous = self._previous, None
        if previous is not None and previous != ATTENTION_NAME:
            self._decoder.set_attn_implementation(previous)

    def acquire(self) -> "AttentionHook":
        if self._depth == 0:
            self._install()
        self._depth += 1
        return self

    def release(self) -> None:
        """Undo one `patched` call; the model is restored when the last one is released."""
        if self._depth == 0:
            return
        self._depth -= 1
        if self._depth == 0:
            self._uninstall()

    def remove(self) -> None:
        """Restore the model now, whatever the nesting depth."""
        if self._depth:
            self._depth = 0
            self._uninstall()

    def __enter__(self) -> "AttentionHook":
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    @contextlib.contextmanager
    def scoring(
        self,
        scores: torch.Tensor,
        query_start,
        key_start,
        key_len,
        *,
        layers: Iterable[int] | None = None,
        backend: str | None = None,
    ):
        """Make the forwards inside the block scoring forwards (see `ScoringPass`)."""
        if not self.installed:
            raise RuntimeError("the dvtp attention hook is not installed (use `with dvtp.patched(model):`)")
        if self.active_scoring is not None:
            raise RuntimeError("a scoring pass is already active on this model")
        state = ScoringPass(
            scores=scores, query_start=query_start, key_start=key_start, key_len=key_len,
            layers=None if layers is None else frozenset(int(x) for x in layers), backend=backend,
        )
        self.active_scoring = state
        try:
            yield state
        finally:
            self.active_scoring = None


def patched(model: torch.nn.Module) -> AttentionHook:
    """Install the dvtp attention on ``model``; use as ``with dvtp.patched(model) as hook:``.

    The model runs bidirectional SDPA through ``"dvtp_sdpa"`` until the block exits (or
    ``hook.remove()``), then gets its previous attention implementation back, also when
    the block raises. Nested calls on one model share one hook; the outermost exit restores.
    """
    hook = getattr(model, "_dvtp_hook", None)
    if not isinstance(hook, AttentionHook):
        hook = AttentionHook(model)
    return hook.acquire()
