"""Triton backend of the three dvtp ops.

Importable only where ``import triton`` works (the dispatcher wraps the import). On a
CPU machine the kernels run under Triton's interpreter: ``TRITON_INTERPRET=1`` must be
set before this module is imported (kernels are interpreted or compiled when they are
defined). Semantics: ``dvtp_kernels/reference.py``; argument contract: the normalised
arguments produced by the public wrappers (see ``cannot_take`` for this backend's limits).

Ops registered here (``torch.library.custom_op``; ``triton_op`` is not used because its
fake/functional path runs the kernels on fake tensors, which fails when the kernels are
interpreted on CPU):

* ``dvtp::accumulate_visual_scores_triton`` -- two kernels. When no ``lse`` is given,
  ``_lse_kernel`` computes the natural-log row log-sum-exp of the R query rows only
  (grid ``(B*Hq, cdiv(R, BLOCK_R))``, online max/sum over key blocks, float32 ``[B,Hq,R]``).
  ``_scores_kernel`` (grid ``(B, cdiv(R, BLOCK_R), cdiv(Vmax, BLOCK_V))``) recomputes the
  logits of its ``[BLOCK_R, BLOCK_V]`` tile for every query head with ``tl.dot`` (float32
  accumulation), sums ``exp(s - lse)`` over the heads in registers and adds the sum to the
  tile of ``scores`` that it alone owns: no atomics, bit-identical reruns. Non-finite
  values follow reference.NONFINITE_RULES: the lse kernel flags a row with a NaN or +inf
  valid logit explicitly (NaN handling of max differs between the interpreter and compiled
  code) and stores a NaN lse for it; the score kernel turns a NaN/+inf lse into a NaN row
  and a -inf lse into zeros. Programs whose
  key block starts at or past ``key_len[b]`` exit at once. D is walked in chunks (64 for
  fp16/bf16, 32 for fp32; masked when D is not a multiple), so any head dim works. Tiles
  are addressed with 32-bit offsets from 64-bit per-item/per-head base pointers. Extra
  memory: the ``[B,Hq,R]`` lse buffer only.
* ``dvtp::select_visual_tokens_triton`` -- one program per batch item holding the whole
  visual span (``next_power_of_2(Vmax)`` lanes, at most 8192): float64 importance (rows
  summed in index order), mapped to order-preserving int64 keys; the keep_count-th largest
  key ``t`` is found by a 64-step bitwise search (one count reduction per bit; no sort);
  every key ``> t`` is kept plus the lowest-index keys ``== t`` that are still needed
  (``tl.cumsum``), which is exactly "higher wins, ties -> lower index". A second
  ``tl.cumsum`` compacts the kept indices in order. Every element of both outputs is
  written by the kernel, and a third output ``nan_item[b]`` flags an item whose importance
  has a NaN (tested as ``x != x`` on the float64 sums, which the interpreter and compiled
  code agree on).
* ``dvtp::gather_compact_triton`` -- one kernel launch per tensor. Each tensor is viewed
  as ``[B, O, N, I]`` (dims before / after the sequence dim merged; a tensor whose dims do
  not merge under its strides is first copied with ``.contiguous()``) and reinterpreted as
  the signed integer type of its element size, so the kernel is a bit-exact copy for every
  dtype (bool, bfloat16, complex64, ...). The pad value is converted to the dtype on the
  host (as ``masked_fill`` does; the public wrapper checked it is representable) and
  passed as its bit pattern. The kernel writes every
  output element (padding included).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch
import triton
import triton.language as tl

from . import fake

__all__ = [
    "accumulate_visual_scores",
    "select_visual_tokens",
    "gather_compact",
    "cannot_take",
    "INTERPRETED",
    "MAX_SELECT_VMAX",
]

# Largest visual span one select program holds (lanes = next_power_of_2(Vmax)).
MAX_SELECT_VMAX = 8192
# CUDA grid limit of axes 1 and 2.
_GRID_YZ_MAX = 65535
_INT_VIEW = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _next_pow2(n: int) -> int:
    return 1 if n <= 1 else 1 << (int(n) - 1).bit_length()


# --------------------------------------------------------------------------------------
# accumulate_visual_scores
# --------------------------------------------------------------------------------------


@triton.jit
def _qk_tile(
    q_base, k_base, rows, cols, row_ok, col_ok, D, sqn, sqd, skn, skd,
    UPCAST: tl.constexpr, PREC: tl.constexpr, EVEN_D: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_D: tl.constexpr,
):
    # Unscaled logits q[rows] . k[cols] of one [BLOCK_R, BLOCK_C] tile, float32, walking D
    # in BLOCK_D chunks (masked only when D is not a multiple of BLOCK_D).
    d = tl.arange(0, BLOCK_D)
    s = tl.zeros([BLOCK_R, BLOCK_C], tl.float32)
    for d0 in range(0, D, BLOCK_D):
        if EVEN_D:
            q_mask = row_ok[:, None]
            k_mask = col_ok[None, :]
        else:
            d_ok = d < D - d0
            q_mask = row_ok[:, None] & d_ok[None, :]
            k_mask = col_ok[None, :] & d_ok[:, None]
        qt = tl.load(q_base + rows[:, None] * sqn + (d0 + d)[None, :] * sqd, mask=q_mask, other=0.0)
        kt = tl.load(k_base + cols[None, :] * skn + (d0 + d)[:, None] * skd,
                     mask=k_mask, other=0.0)  # [BLOCK_D, BLOCK_C]
        if UPCAST:
            qt = qt.to(tl.float32)
            kt = kt.to(tl.float32)
        s = tl.dot(qt, kt, s, input_precision=PREC)
    return s


@triton.jit
def _lse_kernel(
    q_ptr, k_ptr, kv_ptr, lse_ptr, qs_ptr, kl_ptr,
    Hq, N, R, D, group, scale,
    sqb, sqh, sqn, sqd,
    skb, skh, skn, skd,
    HAS_KV: tl.constexpr, UPCAST: tl.constexpr, PREC: tl.constexpr, EVEN_D: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    # lse[b, h, i] = logsumexp_n(scale * q[b, h, query_start[b] + i] . k[b, h // group, n])
    # over valid keys n, for the R query rows; -inf for a row without any valid key.
    # Addressing: 64-bit scalar base pointers (advanced per key block), 32-bit tile offsets.
    pid_bh = tl.program_id(0).to(tl.int64)
    b = pid_bh // Hq
    h = pid_bh % Hq
    kvh = h // group
    kl = tl.load(kl_ptr + b)
    if kl <= 0:
        return  # nothing of this item is accumulated; its lse is never read
    r0 = tl.program_id(1) * BLOCK_R
    rows = tl.arange(0, BLOCK_R)
    row_ok = rows < R - r0
    q_b = q_ptr + b * sqb + h * sqh + (tl.load(qs_ptr + b) + r0) * sqn
    k_n = k_ptr + b * skb + kvh * skh
    kv_n = kv_ptr + b * N
    cols = tl.arange(0, BLOCK_N)
    m_i = tl.full([BLOCK_R], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_R], tl.float32)
    bad = tl.zeros([BLOCK_R], tl.int32)  # a valid logit of the row is NaN or +inf
    for n0 in range(0, N, BLOCK_N):
        col_ok = cols < N - n0
        if HAS_KV:
            col_ok = col_ok & (tl.load(kv_n + cols, mask=col_ok, other=0) != 0)
        s = _qk_tile(q_b, k_n, rows, cols, row_ok, col_ok, D, sqn, sqd, skn, skd,
                     UPCAST, PREC, EVEN_D, BLOCK_R, BLOCK_N, BLOCK_D)
        s = tl.where(col_ok[None, :], s * scale, float("-inf"))
        # NaN/+inf are flagged, then kept out of the online max/sum (NaN handling of
        # max differs between the interpreter and compiled code; the flag does not).
        nonfinite = (s != s) | (s == float("inf"))
        bad = tl.maximum(bad, tl.max(nonfinite.to(tl.int32), axis=1))
        s = tl.where(nonfinite, float("-inf"), s)
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp(s - m_safe[:, None])
        alpha = tl.exp(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        m_i = m_new
        k_n += BLOCK_N * skn
        kv_n += BLOCK_N
    # lse: NaN for a poisoned row, -inf for a row without any valid key (NONFINITE_RULES).
    has_key = l_i > 0.0
    lse = tl.where(has_key, m_i + tl.log(tl.where(has_key, l_i, 1.0)), float("-inf"))
    lse = tl.where(bad != 0, float("nan"), lse)
    tl.store(lse_ptr + pid_bh * R + r0 + rows, lse, mask=row_ok)


@triton.jit
def _scores_kernel(
    q_ptr, k_ptr, kv_ptr, lse_ptr, sc_ptr, qs_ptr, ks_ptr, kl_ptr,
    Hkv, N, R, D, group, scale,
    sqb, sqh, sqn, sqd,
    skb, skh, skn, skd,
    slb, slh, sln,
    ssb, ssr, ssv,
    HAS_KV: tl.constexpr, LSE_ABS: tl.constexpr, UPCAST: tl.constexpr, PREC: tl.constexpr,
    EVEN_D: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr,
):
    # scores[b, i, j] += sum_h exp(scale * q[b, h, q0 + i] . k[b, h // group, k0 + j] - lse)
    # for the [BLOCK_R, BLOCK_V] tile (r0, v0) of item b, j < key_len[b] only.
    b = tl.program_id(0).to(tl.int64)
    kl = tl.load(kl_ptr + b)
    v0 = tl.program_id(2) * BLOCK_V
    if v0 >= kl:
        return
    r0 = tl.program_id(1) * BLOCK_R
    rows = tl.arange(0, BLOCK_R)
    row_ok = rows < R - r0
    cols = tl.arange(0, BLOCK_V)
    in_span = cols < kl - v0
    k0 = tl.load(ks_ptr + b) + v0  # first key position of the tile (int64)
    q0 = tl.load(qs_ptr + b) + r0  # first query position of the tile (int64)
    col_ok = in_span
    if HAS_KV:
        col_ok = col_ok & (tl.load(kv_ptr + b * N + k0 + cols, mask=in_span, other=0) != 0)
    # 64-bit scalar base pointers (advanced per head), 32-bit tile offsets.
    q_h = q_ptr + b * sqb + q0 * sqn
    k_h = k_ptr + b * skb + k0 * skn
    if LSE_ABS:
        l_h = lse_ptr + b * slb + q0 * sln  # caller's lse [B, Hq, N]: by sequence position
    else:
        l_h = lse_ptr + b * slb + r0 * sln  # our lse [B, Hq, R]: by row
    acc = tl.zeros([BLOCK_R, BLOCK_V], tl.float32)
    for kvh in range(0, Hkv):
        for g in range(0, group):  # query heads kvh * group + g share kv head kvh
            s = _qk_tile(q_h, k_h, rows, cols, row_ok, col_ok, D, sqn, sqd, skn, skd,
                         UPCAST, PREC, EVEN_D, BLOCK_R, BLOCK_V, BLOCK_D)
            lse = tl.load(l_h + rows * sln, mask=row_ok, other=0.0).to(tl.float32)
            # Non-finite lse (NONFINITE_RULES): -inf (no valid key) adds 0; NaN or +inf
            # makes every entry of the row NaN (padding keys included); a finite one gives
            # exp(logit - lse) at valid keys (NaN logit -> NaN) and 0 at padding keys.
            lse_fin = tl.abs(lse) < float("inf")
            lse_nan = (lse != lse) | (lse == float("inf"))
            x = tl.where(lse_fin[:, None] & col_ok[None, :], s * scale - lse[:, None], float("-inf"))
            x = tl.where(lse_nan[:, None], float("nan"), x)
            acc += tl.exp(x)
            q_h += sqh
            l_h += slh
        k_h += skh
    # Read-modify-write of the tile only this program owns: deterministic.
    tile = sc_ptr + b * ssb + r0 * ssr + v0 * ssv + rows[:, None] * ssr + cols[None, :] * ssv
    m = row_ok[:, None] & in_span[None, :]
    old = tl.load(tile, mask=m, other=0.0)
    tl.store(tile, old + acc, mask=m)


def _acc_config(R: int, D: int, dtype: torch.dtype):
    """(BLOCK_R, BLOCK_N = BLOCK_V, BLOCK_D, num_warps), per input dtype.

    Chosen so the sm_90 builds do not spill (checked with cuobjdump -res-usage): fp32
    runs tl.dot in "ieee" precision (FMA, operands in registers), hence the smaller D chunk.
    The interpreter uses the same tiles, so CPU tests walk the same masks and loops.
    """
    block_r = min(32, max(16, _next_pow2(R)))
    if dtype == torch.float32:
        return block_r, 64, min(32, max(16, _next_pow2(D))), 8
    return block_r, 64, min(64, max(16, _next_pow2(D))), 4


def _accumulate_impl(q, k, scores, query_start, key_start, key_len, scale, lse, key_valid):
    B, Hq, N, D = q.shape
    Hkv = k.shape[1]
    R, V = scores.shape[1], scores.shape[2]
    if B == 0 or Hq == 0 or R == 0 or V == 0 or N == 0:
        return
    group = Hq // Hkv
    block_r, block_v, block_d, num_warps = _acc_config(R, D, q.dtype)
    upcast = INTERPRETED or q.dtype == torch.float32
    # fp32 operands: true fp32 products (no TF32); fp16/bf16 operands on a GPU go to the
    # tensor cores as they are (exact products, fp32 accumulation; PREC is then unused).
    # The interpreter gets float32 operands always (its bf16 arithmetic is wrong).
    prec = "ieee" if upcast else "tf32"
    even_d = D % block_d == 0
    has_kv = key_valid is not None
    kv = key_valid.view(torch.uint8) if has_kv else key_len  # dummy pointer when absent
    scale = float(scale)
    if lse is None:
        lse_t = torch.empty((B, Hq, R), dtype=torch.float32, device=q.device)
        _lse_kernel[(B * Hq, triton.cdiv(R, block_r))](
            q, k, kv, lse_t, query_start, key_len,
            Hq, N, R, D, group, scale,
            *q.stride(), *k.stride(),
            HAS_KV=has_kv, UPCAST=upcast, PREC=prec, EVEN_D=even_d,
            BLOCK_R=block_r, BLOCK_N=block_v, BLOCK_D=block_d,
            num_warps=num_warps,
        )
        lse_abs = False
    else:
        lse_t = lse
        lse_abs = True
    _scores_kernel[(B, triton.cdiv(R, block_r), triton.cdiv(V, block_v))](
        q, k, kv, lse_t, scores, query_start, key_start, key_len,
        Hkv, N, R, D, group, scale,
        *q.stride(), *k.stride(), *lse_t.stride(), *scores.stride(),
        HAS_KV=has_kv, LSE_ABS=lse_abs, UPCAST=upcast, PREC=prec, EVEN_D=even_d,
        BLOCK_R=block_r, BLOCK_V=block_v, BLOCK_D=block_d,
        num_warps=num_warps,
    )


# --------------------------------------------------------------------------------------
# select_visual_tokens
# --------------------------------------------------------------------------------------


@triton.jit
def _select_kernel(
    sc_ptr, rm_ptr, sl_ptr, ks_ptr, kl_ptr, kc_ptr, gi_ptr, ki_ptr, nan_ptr,
    R, V, max_new, max_keep,
    ssb, ssr, ssv, srb, srr,
    BLOCK_V: tl.constexpr, BLOCK_P: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    seq = tl.load(sl_ptr + b)
    ks = tl.load(ks_ptr + b)
    kl = tl.load(kl_ptr + b)
    kc = tl.load(kc_ptr + b)
    j = tl.arange(0, BLOCK_V)
    jv = j < kl
    # importance[j] = float64 sum over selected rows (in row order) of scores[b, i, j]
    imp = tl.zeros([BLOCK_V], tl.float64)
    row = sc_ptr + b * ssb
    sel_ptr = rm_ptr + b * srb
    for i in range(0, R):
        sel = tl.load(sel_ptr) != 0
        x = tl.load(row + j * ssv, mask=jv & sel, other=0.0)
        imp += x.to(tl.float64)
        row += ssr
        sel_ptr += srr
    # An item whose importance has a NaN (NaN in a selected row, or +inf + -inf) has no
    # defined selection: flag it for the wrapper, which raises (its rows below are unspecified).
    tl.store(nan_ptr + b, (tl.sum((jv & (imp != imp)).to(tl.int32), axis=0) > 0).to(tl.int8))
    # Order-preserving int64 key of each float64 importance (-0.0 folded into +0.0 first:
    # they compare equal as floats).
    imp = tl.where(imp == 0.0, 0.0, imp)
    bits = imp.to(tl.int64, bitcast=True)
    key = tl.where(bits < 0, bits ^ 0x7FFFFFFFFFFFFFFF, bits)
    # T = the kc-th largest key, built bit by bit from the top: the largest T with
    # #{key >= T} >= kc (bit 63 decided first, in the signed domain).
    cnt = tl.sum((jv & (key >= 0)).to(tl.int32), axis=0)
    T = tl.where(cnt >= kc, 0, -9223372036854775807 - 1).to(tl.int64)
    bit = tl.full([], 0x4000000000000000, tl.int64)
    for _ in range(0, 63):
        cand = T | bit
        cnt = tl.sum((jv & (key >= cand)).to(tl.int32), axis=0)
        T = tl.where(cnt >= kc, cand, T)
        bit = bit >> 1
    # Keep every key > T and the lowest-index keys == T still needed: ties -> lower index.
    gt = jv & (key > T)
    eq = jv & (key == T)
    need = kc - tl.sum(gt.to(tl.int32), axis=0)
    kept = gt | (eq & (tl.cumsum(eq.to(tl.int32), axis=0) <= need))
    kept = kept & (kc > 0)
    pos = tl.cumsum(kept.to(tl.int32), axis=0) - 1  # rank among kept, index order
    j64 = j.to(tl.int64)
    tl.store(ki_ptr + b * max_keep + pos, j64, mask=kept)
    tl.store(gi_ptr + b * max_new + ks + pos, ks + j64, mask=kept)
    # The rest of gather_index: prefix, suffix, -1 padding (the kept slots are written above).
    new_len = seq - kl + kc
    for p0 in range(0, max_new, BLOCK_P):
        p = (p0 + tl.arange(0, BLOCK_P)).to(tl.int64)
        val = tl.where(p < ks, p, tl.where(p < new_len, p - kc + kl, -1))
        in_kept = (p >= ks) & (p < ks + kc)
        tl.store(gi_ptr + b * max_new + p, val, mask=(p < max_new) & (~in_kept))
    for p0 in range(0, max_keep, BLOCK_P):
        p = (p0 + tl.arange(0, BLOCK_P)).to(tl.int64)
        tl.store(ki_ptr + b * max_keep + p, tl.full([BLOCK_P], -1, tl.int64),
                 mask=(p < max_keep) & (p >= kc))


def _select_impl(scores, row_mask, seq_len, key_start, key_len, keep_count, max_new_len, max_keep):
    B, R, V = scores.shape
    device = scores.device
    gather_index = torch.empty((B, max_new_len), dtype=torch.int64, device=device)
    keep_index = torch.empty((B, max_keep), dtype=torch.int64, device=device)
    nan_item = torch.empty((B,), dtype=torch.bool, device=device)
    if B == 0:
        return gather_index, keep_index, nan_item
    block_v = max(16, _next_pow2(V))
    _select_kernel[(B,)](
        scores, row_mask.view(torch.uint8), seq_len, key_start, key_len, keep_count,
        gather_index, keep_index, nan_item.view(torch.int8),
        R, V, max_new_len, max_keep,
        *scores.stride(), *row_mask.stride(),
        BLOCK_V=block_v, BLOCK_P=1024,
        num_warps=8 if block_v >= 2048 else 4,
    )
    return gather_index, keep_index, nan_item


# --------------------------------------------------------------------------------------
# gather_compact
# --------------------------------------------------------------------------------------


@triton.jit
def _gather_kernel(
    src_ptr, idx_ptr, out_ptr,
    O, M, I,
    s_b, s_o, s_n, s_i,
    pad,
    BLOCK_M: tl.constexpr, BLOCK_I: tl.constexpr,
):
    # out[b, o, p, i] = src[b, o, idx[b, p], i], pad where idx[b, p] < 0; out contiguous.
    pid_bo = tl.program_id(0).to(tl.int64)
    b = pid_bo // O
    o = pid_bo % O
    p = (tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    i = (tl.program_id(2) * BLOCK_I + tl.arange(0, BLOCK_I)).to(tl.int64)
    p_ok = p < M
    i_ok = i < I
    g = tl.load(idx_ptr + b * M + p, mask=p_ok, other=-1)
    valid = g >= 0
    src = src_ptr + b * s_b + o * s_o + g[:, None] * s_n + i[None, :] * s_i
    val = tl.load(src, mask=valid[:, None] & i_ok[None, :])
    res = tl.where(valid[:, None], val, pad).to(out_ptr.dtype.element_ty)
    dst = out_ptr + (pid_bo * M + p[:, None]) * I + i[None, :]
    tl.store(dst, res, mask=p_ok[:, None] & i_ok[None, :])


def _merge_dims(sizes: Sequence[int], strides: Sequence[int]):
    """(size, stride) of dims merged into one, or None if the strides do not allow it."""
    dims = [(s, st) for s, st in zip(sizes, strides) if s != 1]
    if not dims:
        return 1, 0
    for (s0, st0), (s1, st1) in zip(dims, dims[1:]):
        if st0 != st1 * s1:
            return None
    return math.prod(s for s, _ in dims), dims[-1][1]


def _bonI(t: torch.Tensor, d: int):
    if t.numel() == 0:  # N == 0: every index is -1, nothing is read
        return math.prod(t.shape[1:d]), math.prod(t.shape[d + 1 :]), (0, 0, 0, 0)
    outer = _merge_dims(t.shape[1:d], t.stride()[1:d])
    inner = _merge_dims(t.shape[d + 1 :], t.stride()[d + 1 :])
    if outer is None or inner is None:
        return None
    return outer[0], inner[0], (t.stride(0), outer[1], t.stride(d), inner[1])


def _gather_blocks(M: int, I: int):
    block_i = min(1024, _next_pow2(I))
    block_m = min(max(1, 4096 // block_i), _next_pow2(M))
    return block_m, block_i


def _gather_one(t: torch.Tensor, gather_index: torch.Tensor, d: int, pad_value) -> torch.Tensor:
    B, M = gather_index.shape
    shape = list(t.shape)
    shape[d] = M
    out = torch.empty(shape, dtype=t.dtype, device=t.device)
    if out.numel() == 0:
        return out
    view = _bonI(t, d)
    if view is None:  # dims around the sequence dim do not merge: copy once
        t = t.contiguous()
        view = _bonI(t, d)
    O, I, strides = view
    it = _INT_VIEW[t.element_size()]
    pad_bits = torch.tensor(pad_value, dtype=t.dtype).view(it).item()
    block_m, block_i = _gather_blocks(M, I)
    grid = (B * O, triton.cdiv(M, block_m), triton.cdiv(I, block_i))
    _gather_kernel[grid](
        t.view(it), gather_index, out.view(it),
        O, M, I, *strides, pad_bits,
        BLOCK_M=block_m, BLOCK_I=block_i, num_warps=4,
    )
    return out


def _gather_impl(tensors, gather_index, dims, pad_value):
    # One kernel launch per tensor.
    return [_gather_one(t, gather_index, d, pad_value) for t, d in zip(tensors, dims)]


# --------------------------------------------------------------------------------------
# torch.library ops
# --------------------------------------------------------------------------------------

INTERPRETED = type(_scores_kernel).__name__ == "InterpretedFunction"


@torch.library.custom_op("dvtp::accumulate_visual_scores_triton", mutates_args=("scores",))
def _accumulate_op(
    q: torch.Tensor,
    k: torch.Tensor,
    scores: torch.Tensor,
    query_start: torch.Tensor,
    key_start: torch.Tensor,
    key_len: torch.Tensor,
    scale: float,
    lse: Optional[torch.Tensor],
    key_valid: Optional[torch.Tensor],
) -> None:
    _accumulate_impl(q, k, scores, query_start, key_start, key_len, scale, lse, key_valid)


_accumulate_op.register_fake(fake.accumulate_fake)


@torch.library.custom_op("dvtp::select_visual_tokens_triton", mutates_args=())
def _select_op(
    scores: torch.Tensor,
    row_mask: torch.Tensor,
    seq_len: torch.Tensor,
    key_start: torch.Tensor,
    key_len: torch.Tensor,
    keep_count: torch.Tensor,
    max_new_len: int,
    max_keep: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _select_impl(scores, row_mask, seq_len, key_start, key_len, keep_count,
                        max_new_len, max_keep)


_select_op.register_fake(fake.select_fake)


@torch.library.custom_op("dvtp::gather_compact_triton", mutates_args=())
def _gather_op(
    tensors: list[torch.Tensor],
    gather_index: torch.Tensor,
    dims: list[int],
    pad_value: Union[int, float, bool],
) -> list[torch.Tensor]:
    return _gather_impl(tensors, gather_index, dims, pad_value)


_gather_op.register_fake(fake.gather_fake)


# --------------------------------------------------------------------------------------
# Public functions called by the dispatcher (normalised arguments)
# --------------------------------------------------------------------------------------


def accumulate_visual_scores(q, k, scores, query_start, key_start, key_len, scale,
                             lse=None, key_valid=None):
    """In-place ``scores += ...`` (see module docstring); returns ``scores``."""
    torch.ops.dvtp.accumulate_visual_scores_triton(
        q, k, scores, query_start, key_start, key_len, float(scale), lse, key_valid)
    return scores


def select_visual_tokens(scores, row_mask, seq_len, key_start, key_len, keep_count,
                         max_new_len, max_keep):
    """-> (gather_index [B, max_new_len], keep_index [B, max_keep]) int64 -1 padded, and
    nan_item [B] bool (item's importance has a NaN; its two rows are then unspecified)."""
    return torch.ops.dvtp.select_visual_tokens_triton(
        scores, row_mask, seq_len, key_start, key_len, keep_count,
        int(max_new_len), int(max_keep))


def gather_compact(tensors, gather_index, dims, pad_value=0):
    """List of compacted tensors (new, contiguous), one per input tensor."""
    # The pad value travels as a Scalar of its own Python type (validation.scalar_pad_value):
    # an int64 pad such as 2**62 + 1 must not pass through a float.
    return torch.ops.dvtp.gather_compact_triton(
        list(tensors), gather_index, [int(d) for d in dims], pad_value)


def _device_reasons(*tensors) -> list[str]:
    reasons = []
    for t in tensors:
        if t is None:
            continue
        dev = t.device.type
        if dev == "cpu" and not INTERPRETED:
            reasons.append("triton: CPU tensors need TRITON_INTERPRET=1 set before import")
            break
        if dev not in ("cpu", "cuda"):
            reasons.append(f"triton: device type {dev!r} is not supported")
            break
    return reasons


def cannot_take(op_name: str, **args) -> list[str]:
    """Reasons this backend cannot run ``op_name`` on these normalised arguments ([] = ok)."""
    name = op_name.split("::")[-1]
    if name.endswith("_triton"):
        name = name[: -len("_triton")]
    reasons: list[str] = []
    if name == "accumulate_visual_scores":
        q, scores = args.get("q"), args.get("scores")
        reasons += _device_reasons(q, args.get("k"), scores)
        if q is not None and q.dtype not in (torch.float32, torch.float16, torch.bfloat16):
            reasons.append(f"triton: q/k dtype {q.dtype} is not float32/float16/bfloat16")
        if scores is not None and scores.dim() == 3:
            R, V = scores.shape[1], scores.shape[2]
            block_r, block_v, _, _ = _acc_config(R, q.shape[-1] if q is not None else 64,
                                                 q.dtype if q is not None else torch.float32)
            if triton.cdiv(R, block_r) > _GRID_YZ_MAX or triton.cdiv(V, block_v) > _GRID_YZ_MAX:
                reasons.append("triton: scores [B, R, Vmax] too large for the launch grid")
    elif name == "select_visual_tokens":
        scores = args.get("scores")
        reasons += _device_reasons(scores)
        if scores is not None and scores.dim() == 3 and scores.shape[2] > MAX_SELECT_VMAX:
            reasons.append(
                f"triton: Vmax={scores.shape[2]} > {MAX_SELECT_VMAX} "
                "(one program holds the whole visual span)")
    elif name == "gather_compact":
        tensors = list(args.get("tensors") or [])
        gi = args.get("gather_index")
        reasons += _device_reasons(gi, *tensors)
        M = gi.shape[1] if gi is not None and gi.dim() == 2 else 0
        for n, t in enumerate(tensors):
            if t.element_size() not in _INT_VIEW:
                reasons.append(f"triton: tensor {n} dtype {t.dtype} has element size "
                               f"{t.element_size()} (1, 2, 4 or 8 supported)")
                continue
            d = int(args.get("dims", [1] * len(tensors))[n])
            inner = math.prod(t.shape[d + 1 :])
            block_m, block_i = _gather_blocks(M, inner)
            if triton.cdiv(M, block_m) > _GRID_YZ_MAX or triton.cdiv(inner, block_i) > _GRID_YZ_MAX:
                reasons.append(f"triton: tensor {n} too large for the gather launch grid")
    else:
        reasons.append(f"triton: unknown op {op_name!r}")
    return reasons
