"""An independent float64 eager reference for the dvtp sampler tests.

Nothing here uses dvtp, dvtp_kernels or transformers' forward code: the forward pass is
re-derived from the checkpoint weights (RMSNorm, RoPE, GQA attention materialised as
``[B, H, N, N]`` softmax maps, SwiGLU MLP, LM head, Dream's one-position logit shift),
and the sampler is LLaDA's loop written out in full-sequence coordinates for ONE item,
with RedVTP pruning done the published way: average the materialised attention maps
over layers, heads and still-masked rows, take the top-k (ties -> lower index) and slice
the sequence.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

F64 = torch.float64


@dataclass
class RefWeights:
    embed: torch.Tensor
    layers: list[dict]
    norm: torch.Tensor
    lm_head: torch.Tensor
    heads: int
    kv_heads: int
    head_dim: int
    theta: float
    eps: float
    shift: bool


def weights_of(model) -> RefWeights:
    """Float64 copies of the weights of a Llama- or Qwen2-style ForCausalLM."""
    cfg = model.config
    sd = {k: v.detach().to(F64) for k, v in model.state_dict().items()}
    layers = []
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        layer = {name: sd[p + key] for name, key in (
            ("wq", "self_attn.q_proj.weight"), ("wk", "self_attn.k_proj.weight"),
            ("wv", "self_attn.v_proj.weight"), ("wo", "self_attn.o_proj.weight"),
            ("ln1", "input_layernorm.weight"), ("ln2", "post_attention_layernorm.weight"),
            ("wg", "mlp.gate_proj.weight"), ("wu", "mlp.up_proj.weight"), ("wd", "mlp.down_proj.weight"),
        )}
        for name, key in (("bq", "self_attn.q_proj.bias"), ("bk", "self_attn.k_proj.bias"), ("bv", "self_attn.v_proj.bias")):
            layer[name] = sd.get(p + key)
        layers.append(layer)
    heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    return RefWeights(
        embed=sd["model.embed_tokens.weight"],
        layers=layers,
        norm=sd["model.norm.weight"],
        lm_head=sd["lm_head.weight"],
        heads=heads,
        kv_heads=cfg.num_key_value_heads,
        head_dim=head_dim,
        theta=float(cfg.rope_parameters["rope_theta"]),
        eps=float(cfg.rms_norm_eps),
        shift=getattr(model, "logits_shift", 0) == 1,
    )


def _rms(x, w, eps):
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def _linear(x, w, b=None):
    y = x @ w.T
    return y if b is None else y + b


def _rope(x, positions, theta):
    """x [B, H, N, D]; rotate-half RoPE at float64 angles."""
    D = x.shape[-1]
    inv = 1.0 / (theta ** (torch.arange(0, D, 2, dtype=F64) / D))
    ang = positions.to(F64).unsqueeze(-1) * inv  # [B, N, D/2]
    cos = torch.cat([ang.cos(), ang.cos()], -1).unsqueeze(1)
    sin = torch.cat([ang.sin(), ang.sin()], -1).unsqueeze(1)
    half = D // 2
    rot = torch.cat([-x[..., half:], x[..., :half]], -1)
    return x * cos + rot * sin


def forward64(w: RefWeights, embeds, positions=None, key_valid=None, want_probs=False):
    """Bidirectional float64 forward. embeds [B, N, h]; -> (logits [B, N, V], probs per layer)."""
    x = embeds.to(F64)
    B, N, _ = x.shape
    if positions is None:
        positions = torch.arange(N).expand(B, N)
    H, Hkv, D = w.heads, w.kv_heads, w.head_dim
    probs = []
    for L in w.layers:
        a = _rms(x, L["ln1"], w.eps)
        q = _linear(a, L["wq"], L["bq"]).view(B, N, H, D).transpose(1, 2)
        k = _linear(a, L["wk"], L["bk"]).view(B, N, Hkv, D).transpose(1, 2)
        v = _linear(a, L["wv"], L["bv"]).view(B, N, Hkv, D).transpose(1, 2)
        q, k = _rope(q, positions, w.theta), _rope(k, positions, w.theta)
        k = k.repeat_interleave(H // Hkv, dim=1)
        v = v.repeat_interleave(H // Hkv, dim=1)
        s = (q @ k.transpose(-1, -2)) / math.sqrt(D)  # [B, H, N, N]: the published approach
        if key_valid is not None:
            s = s.masked_fill(~key_valid[:, None, None, :], float("-inf"))
        p = torch.softmax(s, dim=-1)
        if want_probs:
            probs.append(p)
        o = (p @ v).transpose(1, 2).reshape(B, N, H * D)
        x = x + _linear(o, L["wo"])
        a = _rms(x, L["ln2"], w.eps)
        x = x + _linear(torch.nn.functional.silu(_linear(a, L["wg"])) * _linear(a, L["wu"]), L["wd"])
    logits = _linear(_rms(x, w.norm, w.eps), w.lm_head)
    if w.shift:
        logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
    return logits, probs


@dataclass
class RefResult:
    tokens: list[int]
    kept: list[int] | None
    importance_margin: float | None  # gap between the last kept and the first dropped importance
    confidence_margin: float  # smallest gap at a transfer cut (k-th vs (k+1)-th confidence)
    forwards: int = 0  # denoising steps run
    stop_position: int | None = None  # first stop token of the response, if any


def reference_generate(
    model,
    prompt_embeds: torch.Tensor,
    span: tuple[int, int] | list[tuple[int, int]] | None,
    *,
    gen_length: int,
    steps: int,
    block_length: int,
    mask_id: int,
    keep_ratio: float | None = None,
    prune_step: int = 1,
    renumber_positions: bool = True,
    score_layers=None,
    suppressed=(),
    stop_ids=(),
) -> RefResult:
    """LLaDA's sampler (temperature 0, low-confidence remasking) for ONE item, in float64.

    ``span``: one ``(start, length)`` pair or a list of them (several images): the visual
    tokens are their concatenation, ranked jointly; everything else is kept.
    ``stop_ids``: LLaDA-V's stopping: once the response holds a stop token, only masks
    before the first one are filled, the item's steps end when none is left, and blocks
    starting at or after it are skipped. (LLaDA-V's torch.topk may then also pick
    positions of -inf confidence; here, as in dvtp, nothing without a finite confidence is
    transferred.)
    """
    w = weights_of(model)
    emb = prompt_embeds.to(F64)  # [P, h]
    P0 = emb.shape[0]
    G = gen_length
    resp = [mask_id] * G
    positions = None
    kept = None
    imp_margin = None
    conf_margin = math.inf
    num_blocks = G // block_length
    spb = steps // num_blocks
    forwards = 0
    stop = None  # first stop position in the response, once found
    for blk in range(num_blocks):
        lo, hi = blk * block_length, (blk + 1) * block_length
        if stop is not None and stop <= lo:
            break
        masked = sum(1 for t in resp[lo:hi] if t == mask_id)
        schedule = [masked // spb + (1 if s < masked % spb else 0) for s in range(spb)]
        for step in range(spb):
            P = emb.shape[0]
            is_mask = [t == mask_id for t in resp]
            if stop is not None and not any(is_mask[:stop]):
                break
            limit = hi if stop is None else stop
            forwards += 1
            x = torch.cat([emb, w.embed[torch.tensor(resp)]], 0).unsqueeze(0)
            scoring = keep_ratio is not None and span is not None and blk == 0 and step == prune_step - 1
            logits, probs = forward64(w, x, positions, want_probs=scoring)
            logits = logits[0, P:]  # response rows [G, V]
            for i in range(G):
                if is_mask[i]:
                    for t in suppressed:
                        logits[i, t] = float("-inf")
            p = torch.softmax(logits, -1)
            x0 = logits.argmax(-1).tolist()
            # only the current block's masked positions are candidates (docs/semantics.md)
            conf = [p[i, x0[i]].item() if (is_mask[i] and lo <= i < limit) else -math.inf for i in range(G)]
            order = sorted(range(G), key=lambda i: (-conf[i], i))
            k = schedule[step]
            chosen = [i for i in order[:k] if conf[i] > -math.inf]
            if k < G and conf[order[k]] > -math.inf:
                conf_margin = min(conf_margin, conf[order[k - 1]] - conf[order[k]] if k else math.inf)
            for i in chosen:
                resp[i] = x0[i]
            first = next((i for i, t in enumerate(resp) if t in stop_ids), None)
            if first is not None and (stop is None or first < stop):
                stop = first
            if scoring:
                pairs = [span] if isinstance(span[0], int) else list(span)
                cols = [s + j for s, n in pairs for j in range(n)]  # visual positions, span order
                length = len(cols)
                # the published rule: masked before this step and not transferred by it
                rows = [P + i for i in range(G) if is_mask[i] and i not in chosen]
                if rows and length > 0:
                    att = torch.stack([probs[l][0] for l in (score_layers or range(len(probs)))])  # [L, H, N, N]
                    imp = att[:, :, rows][..., cols].mean(dim=(0, 1, 2))  # [length]
                    keep_n = max(1, math.floor(length * keep_ratio))
                    rank = sorted(range(length), key=lambda j: (-imp[j].item(), j))
                    kept = sorted(rank[:keep_n])
                    if keep_n < length:
                        imp_margin = (imp[rank[keep_n - 1]] - imp[rank[keep_n]]).item()
                    dropped = set(cols) - {cols[j] for j in kept}
                    idx = [i for i in range(P) if i not in dropped]
                    emb = emb[idx]
                    if not renumber_positions:
                        positions = torch.tensor(idx + [P0 + i for i in range(G)]).unsqueeze(0)
                else:
                    kept = list(range(length))
    return RefResult(
        tokens=resp, kept=kept, importance_margin=imp_margin, confidence_margin=conf_margin,
        forwards=forwards, stop_position=stop,
    )
