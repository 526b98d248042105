"""accumulate_visual_scores on every backend against a float64 materialised-softmax oracle."""
import itertools
import zlib

import pytest
import torch

import dvtp_kernels
from backends import backend_params, is_interpreted, require

OP = "accumulate_visual_scores"

# Inputs are generated in float32 and rounded to the test dtype; the oracle upcasts those
# rounded values to float64, so the tolerance only covers the kernel's own arithmetic
# (float32 accumulation; fp16/bf16 products on tensor cores on GPU). Sums of up to 8 heads
# of probabilities in [0, 1].
TOLERANCES = {
    torch.float32: dict(atol=1e-5, rtol=1e-4),
    torch.float16: dict(atol=1e-3, rtol=1e-2),
    torch.bfloat16: dict(atol=2e-3, rtol=2e-2),
}
DTYPES = list(TOLERANCES)

FULL_SHAPES = list(itertools.product([1, 3], [1, 64, 257, 1000], [64, 128], [(4, 4), (8, 2)]))
# The Triton interpreter runs kernels in numpy, one program at a time: small shapes only.
INTERPRETED_SHAPES = list(itertools.product([1, 3], [1, 7, 64, 129], [64], [(4, 4), (8, 2)]))


def make_case(B, N, D, Hq, Hkv, dtype, device, *, padded, seed):
    """Random q/k (q as a transposed view, like an attention layer's), spans that vary per
    item: item 0 has key_len 1 (when N allows), the last item's span touches the end."""
    g = torch.Generator().manual_seed(seed)
    q = (1.5 * torch.randn(B, N, Hq, D, generator=g)).to(dtype).transpose(1, 2)
    k = torch.randn(B, Hkv, N, D, generator=g).to(dtype)
    R = min(N, 24)
    query_start, key_start, key_len = [], [], []
    for b in range(B):
        query_start.append(int(torch.randint(0, N - R + 1, (1,), generator=g)))
        if b == 0:
            length = 1
        else:
            length = int(torch.randint(1, N + 1, (1,), generator=g))
        start = N - length if b == B - 1 else int(torch.randint(0, N - length + 1, (1,), generator=g))
        key_start.append(start)
        key_len.append(length)
    key_valid = None
    if padded:
        key_valid = torch.rand(B, N, generator=g) > 0.2
        for b in range(B):
            tail = int(torch.randint(0, max(1, N // 4), (1,), generator=g))
            key_valid[b, N - tail :] = False
            key_valid[b, int(torch.randint(0, N, (1,), generator=g))] = True
        key_valid = key_valid.to(device)
    Vmax = max(key_len) + 3
    # Fresh random start values where the op adds; NaN where it must not write.
    scores = torch.rand(B, R, Vmax, generator=g)
    for b in range(B):
        scores[b, :, key_len[b] :] = float("nan")
    return dict(
        q=q.to(device), k=k.to(device), scores=scores.to(device), query_start=query_start,
        key_start=key_start, key_len=key_len, key_valid=key_valid,
    )


def oracle_rows(case, scale, b):
    """Float64 logits [Hq, R, N] of item b's query rows over every key, invalid keys at -inf."""
    q, k, key_valid = case["q"], case["k"], case["key_valid"]
    R = case["scores"].shape[1]
    q0 = case["query_start"][b]
    group = q.shape[1] // k.shape[1]
    logits = scale * (q[b, :, q0 : q0 + R].double() @ k[b].double().repeat_interleave(group, dim=0).transpose(-1, -2))
    if key_valid is not None:
        logits = logits.masked_fill(~key_valid[b], float("-inf"))
    return logits


def oracle(case, scale):
    """Materialised float64 softmax of the query rows, sliced to the visual keys, summed over heads."""
    expected = case["scores"].double().clone()
    for b, (k0, kl) in enumerate(zip(case["key_start"], case["key_len"])):
        P = torch.softmax(oracle_rows(case, scale, b), dim=-1).nan_to_num(0.0)
        expected[b, :, :kl] += P[..., k0 : k0 + kl].sum(0)
    return expected


def float64_lse(case, scale):
    """The [B, Hq, N] lse a flash kernel would return, exact at the query rows and NaN at the
    rows the op must not read."""
    B, Hq, N, _ = case["q"].shape
    R = case["scores"].shape[1]
    lse = torch.full((B, Hq, N), float("nan"), device=case["q"].device)
    for b, q0 in enumerate(case["query_start"]):
        lse[b, :, q0 : q0 + R] = torch.logsumexp(oracle_rows(case, scale, b), dim=-1).float()
    return lse


def check(backend, device, shape, dtype, with_lse, padded):
    B, N, D, (Hq, Hkv) = shape
    seed = zlib.crc32(repr((B, N, D, Hq, Hkv, dtype, with_lse, padded)).encode())
    case = make_case(B, N, D, Hq, Hkv, dtype, device, padded=padded, seed=seed)
    scale = D ** -0.5
    expected = oracle(case, scale)
    lse = float64_lse(case, scale) if with_lse else None
    scores = case["scores"].clone()
    out = dvtp_kernels.accumulate_visual_scores(
        case["q"], case["k"], scores, case["query_start"], case["key_start"], case["key_len"],
        lse=lse, key_valid=case["key_valid"], backend=backend,
    )
    assert out is scores
    # NaN beyond key_len stays NaN (equal_nan): any stray write fails here.
    torch.testing.assert_close(scores.double(), expected, equal_nan=True, **TOLERANCES[dtype])


@pytest.mark.parametrize("backend,device", [p for p in backend_params() if p.id != "triton-cpu"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", FULL_SHAPES, ids=lambda s: "B{}-N{}-D{}-H{}x{}".format(*s[:3], *s[3]))
@pytest.mark.parametrize("with_lse", [False, True], ids=["lse_computed", "lse_given"])
def test_matches_oracle(backend, device, shape, dtype, with_lse):
    require(backend, device, OP)
    # Padding on every other case keeps the matrix at one size while covering both.
    padded = (shape[0] + shape[1] + int(with_lse)) % 2 == 0
    check(backend, device, shape, dtype, with_lse, padded)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", INTERPRETED_SHAPES, ids=lambda s: "B{}-N{}-D{}-H{}x{}".format(*s[:3], *s[3]))
@pytest.mark.parametrize("with_lse", [False, True], ids=["lse_computed", "lse_given"])
def test_triton_interpreted_matches_oracle(shape, dtype, with_lse):
    require("triton", "cpu", OP)
    padded = (shape[0] + shape[1] + int(with_lse)) % 2 == 1
    check("triton", "cpu", shape, dtype, with_lse, padded)


@pytest.mark.parametrize("backend,device", backend_params())
def test_accumulates_across_layers_and_is_deterministic(backend, device):
    """Two calls add up (the per-layer use), and equal inputs give bit-identical output."""
    dev = require(backend, device, OP)
    small = is_interpreted(backend, device)
    B, N, D, Hq, Hkv = (2, 33, 64, 4, 2) if small else (2, 300, 64, 8, 2)
    case = make_case(B, N, D, Hq, Hkv, torch.float32, dev, padded=True, seed=7)
    k2 = torch.randn_like(case["k"])
    args = (case["query_start"], case["key_start"], case["key_len"])
    runs = []
    for _ in range(2):
        scores = case["scores"].clone()
        dvtp_kernels.accumulate_visual_scores(case["q"], case["k"], scores, *args, key_valid=case["key_valid"], backend=backend)
        dvtp_kernels.accumulate_visual_scores(case["q"], k2, scores, *args, key_valid=case["key_valid"], backend=backend)
        runs.append(scores)
    assert torch.equal(runs[0].nan_to_num(-1.0), runs[1].nan_to_num(-1.0))
    expected = oracle(case, D ** -0.5)
    expected += oracle(dict(case, k=k2), D ** -0.5) - case["scores"].double()
    torch.testing.assert_close(runs[0].double(), expected, equal_nan=True, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("backend,device", backend_params())
def test_low_precision_error_not_worse_than_pytorch(backend, device):
    """In bf16 the kernel's error against float64 is no larger than PyTorch's own bf16 computation's."""
    dev = require(backend, device, OP)
    N = 64 if is_interpreted(backend, device) else 700
    case = make_case(1, N, 64, 4, 4, torch.bfloat16, dev, padded=False, seed=11)
    case["scores"] = torch.where(case["scores"].isnan(), case["scores"], 0.0)
    scale = 64 ** -0.5
    exact = oracle(case, scale)
    ours = case["scores"].clone()
    dvtp_kernels.accumulate_visual_scores(case["q"], case["k"], ours, case["query_start"], case["key_start"],
                                          case["key_len"], backend=backend)
    q0, k0, kl, R = case["query_start"][0], case["key_start"][0], case["key_len"][0], ours.shape[1]
    logits = scale * case["q"][0, :, q0 : q0 + R] @ case["k"][0].transpose(-1, -2)  # bf16 math
    torch_bf16 = torch.softmax(logits, dim=-1)[..., k0 : k0 + kl].sum(0)
    err_ours = (ours[0, :, :kl].double() - exact[0, :, :kl]).abs().max().item()
    err_torch = (torch_bf16.double() - exact[0, :, :kl]).abs().max().item()
    assert err_ours <= max(err_torch, 1e-4), (err_ours, err_torch)


@pytest.mark.parametrize("backend,device", backend_params())
def test_zero_key_len_leaves_scores_untouched(backend, device):
    dev = require(backend, device, OP)
    case = make_case(2, 40, 64, 4, 4, torch.float32, dev, padded=False, seed=3)
    scores = case["scores"].clone()
    dvtp_kernels.accumulate_visual_scores(case["q"], case["k"], scores, case["query_start"], case["key_start"],
                                          [0, 0], backend=backend)
    assert torch.equal(scores.nan_to_num(-1.0), case["scores"].nan_to_num(-1.0))
