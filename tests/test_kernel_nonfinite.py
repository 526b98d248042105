"""NaN / Inf semantics of accumulate_visual_scores and select_visual_tokens, per backend.

The rules (docstrings of the ops; dvtp_kernels/reference.py NONFINITE_RULES), restated
here as an independent float64 oracle:
  * per (item, query head, row) the normaliser is lse -- given, or the log-sum-exp over
    the valid keys (key_valid True);
  * lse NaN or +inf (computed: any valid logit NaN or +inf) -> the row's visual entries
    of scores become NaN;  lse -inf (no valid key) -> the row adds 0;
  * finite lse -> exp(logit - lse) per entry, IEEE (NaN -> NaN, +inf -> +inf, -inf -> 0);
  * keys with key_valid False are never read;
  * select_visual_tokens raises ValueError when an item's importance over its selected
    rows (columns < key_len) is NaN; NaN elsewhere is ignored; +-inf rank as extremes.
Tolerances: as tests/test_accumulate_scores.py (the kernels accumulate in float32; inputs
are rounded to the test dtype first, and the oracle reads those rounded values). NaN and
inf positions must match exactly (assert_close with equal_nan).
"""
import math

import pytest
import torch

import dvtp_kernels
from backends import backend_params, require

TOLERANCES = {
    torch.float32: dict(atol=1e-5, rtol=1e-4),
    torch.float16: dict(atol=1e-3, rtol=1e-2),
    torch.bfloat16: dict(atol=2e-3, rtol=2e-2),
}
NAN, INF = math.nan, math.inf
# The Triton interpreter's numpy matmul warns on inf * 0: expected here.
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")


def accumulate_oracle(q, k, scores, query_start, key_start, key_len, scale, lse=None, key_valid=None):
    """float64 statement of accumulate_visual_scores including the non-finite rules.

    q [B,Hq,N,D], k [B,Hkv,N,D], scores [B,R,Vmax] (start values), per-item Python int lists,
    lse [B,Hq,N] or None, key_valid [B,N] bool or None. Returns the expected float64 scores."""
    out = scores.double().clone()
    B, Hq, N, _ = q.shape
    group = Hq // k.shape[1]
    R = scores.shape[1]
    for b in range(B):
        q0, k0, kl = query_start[b], key_start[b], key_len[b]
        if kl == 0 or R == 0:
            continue
        valid = torch.ones(N, dtype=torch.bool) if key_valid is None else key_valid[b].cpu()
        kb = k[b].cpu().double().repeat_interleave(group, dim=0)  # [Hq, N, D]
        logits = scale * (q[b, :, q0 : q0 + R].cpu().double() @ kb.transpose(-1, -2))  # [Hq, R, N]
        logits = torch.where(valid, logits, -INF)  # padding keys are never read
        if lse is None:
            poisoned = (logits.isnan() | (logits == INF)).any(dim=-1)
            norm = torch.logsumexp(torch.where(poisoned.unsqueeze(-1), 0.0, logits), dim=-1)
            norm = torch.where(poisoned, NAN, norm)
        else:
            norm = lse[b, :, q0 : q0 + R].cpu().double()
        norm = norm.unsqueeze(-1)
        probs = torch.exp(logits[..., k0 : k0 + kl] - norm)
        probs = torch.where(norm == -INF, 0.0, probs)
        probs = torch.where(norm.isnan() | (norm == INF), NAN, probs)
        out[b, :, :kl] += probs.sum(dim=0)
    return out


def finite_lse(q, k, scale, key_valid=None):
    """float64-exact lse [B, Hq, N] of every row, as a flash kernel would return it."""
    B, Hq, N, _ = q.shape
    group = Hq // k.shape[1]
    logits = scale * (q.double() @ k.double().repeat_interleave(group, dim=1).transpose(-1, -2))
    if key_valid is not None:
        logits = logits.masked_fill(~key_valid.view(B, 1, 1, N), -INF)
    return torch.logsumexp(logits, dim=-1).float()


def base_case(dtype, seed=0):
    """B=2, Hq=4, Hkv=2 (GQA), N=37, D=20 (not a power of two), R=6; item 1 padded."""
    g = torch.Generator().manual_seed(seed)
    B, Hq, Hkv, N, D, R = 2, 4, 2, 37, 20, 6
    q = torch.randn(B, N, Hq, D, generator=g).to(dtype).transpose(1, 2)  # strided view
    k = torch.randn(B, Hkv, N, D, generator=g).to(dtype)
    key_valid = torch.ones(B, N, dtype=torch.bool)
    key_valid[1, 30:] = False  # item 1: padding tail
    key_valid[1, 12] = False  # and a hole inside its visual span
    case = dict(q=q, k=k, scores=torch.rand(B, R, 15, generator=g), query_start=[31, 20],
                key_start=[4, 8], key_len=[15, 11], key_valid=key_valid)
    return case


def run(backend, device, case, *, lse=None, scale=None):
    """Run the op on ``device`` (inputs built on the CPU), check it against the oracle,
    return the scores (on the CPU)."""
    scale = case["q"].shape[-1] ** -0.5 if scale is None else scale
    out = case["scores"].clone().to(device)
    dvtp_kernels.accumulate_visual_scores(
        case["q"].to(device), case["k"].to(device), out, case["query_start"], case["key_start"],
        case["key_len"], scale=scale, lse=None if lse is None else lse.to(device),
        key_valid=case["key_valid"].to(device), backend=backend)
    out = out.cpu()
    expected = accumulate_oracle(case["q"], case["k"], case["scores"], case["query_start"], case["key_start"],
                                 case["key_len"], scale, lse, case["key_valid"])
    torch.testing.assert_close(out.double(), expected, equal_nan=True, **TOLERANCES[case["q"].dtype])
    return out


DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_nan_in_q_row_poisons_only_that_row(backend, device, dtype):
    require(backend, device, "accumulate_visual_scores")
    case = base_case(dtype)
    case["q"][0, 3, 31 + 2, 5] = NAN  # item 0, head 3, query row 2
    out = run(backend, device, case)
    assert out[0, 2, :15].isnan().all()
    assert not out[0, [0, 1, 3, 4, 5], :15].isnan().any() and not out[1].isnan().any()


@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("value", [NAN, INF, -INF], ids=["nan", "+inf", "-inf"])
def test_nonfinite_key_at_valid_key_poisons_every_row_of_the_item(backend, device, value):
    """A NaN/inf element of k at a valid key (here outside the visual span) is in every
    row's softmax normaliser: with a computed lse every row of the item becomes NaN (an
    inf element gives +-inf or NaN logits: the rows reading +inf/NaN ones are poisoned)."""
    require(backend, device, "accumulate_visual_scores")
    case = base_case(torch.float32)
    case["k"][1, 0, 2, 7] = value  # item 1, kv head 0 (query heads 0, 1), key 2: valid, not visual
    out = run(backend, device, case)
    assert not out[0].isnan().any()
    if math.isnan(value):
        assert out[1, :, :11].isnan().all()


@pytest.mark.parametrize("backend,device", backend_params())
def test_nan_at_padding_key_is_never_read(backend, device):
    require(backend, device, "accumulate_visual_scores")
    case = base_case(torch.float32)
    case["k"][1, :, 33] = NAN  # padding tail of item 1
    case["k"][1, :, 12] = INF  # padding hole inside item 1's visual span
    out = run(backend, device, case)
    assert not out.isnan().any()


@pytest.mark.parametrize("backend,device", backend_params())
def test_given_lse_rules(backend, device):
    """With a given lse: NaN or +inf lse -> row NaN; -inf -> row adds 0; finite lse -> a NaN
    logit at a visual key is NaN at that column only, a non-visual one is not read."""
    require(backend, device, "accumulate_visual_scores")
    case = base_case(torch.float32)
    scale = 20 ** -0.5
    lse = finite_lse(case["q"], case["k"], scale, case["key_valid"])
    lse[0, 1, 31 + 0] = NAN  # item 0 row 0
    lse[0, 2, 31 + 1] = INF  # item 0 row 1
    lse[0, :, 31 + 2] = -INF  # item 0 row 2: no head adds anything
    case["k"][1, 1, 8 + 3, 0] = NAN  # item 1, kv head 1, visual column 3
    case["k"][1, 1, 0, 0] = NAN  # item 1, kv head 1, key 0: not visual, not read with lse given
    out = run(backend, device, case, lse=lse, scale=scale)
    assert out[0, 0, :15].isnan().all() and out[0, 1, :15].isnan().all()
    assert torch.equal(out[0, 2], case["scores"][0, 2])
    assert out[1, :, 3].isnan().all()
    assert not out[1, :, [0, 1, 2, 4, 5, 6, 7, 8, 9, 10]].isnan().any()


@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("seed", range(6))
def test_random_nonfinite_inputs_match_the_oracle(backend, device, seed):
    """Random NaN/+-inf sprinkled into q, k (and a given lse), with and without lse."""
    require(backend, device, "accumulate_visual_scores")
    g = torch.Generator().manual_seed(1000 + seed)
    case = base_case(DTYPES[seed % 3], seed=seed)
    for t in (case["q"].transpose(1, 2), case["k"]):  # both contiguous: view(-1) writes through
        flat = t.view(-1)
        for _ in range(2):
            i = int(torch.randint(0, flat.numel(), (1,), generator=g))
            flat[i] = [NAN, INF, -INF][int(torch.randint(0, 3, (1,), generator=g))]
    scale = 20 ** -0.5
    lse = None
    if seed % 2:
        lse = finite_lse(case["q"].nan_to_num(0.0, 0.0, 0.0), case["k"].nan_to_num(0.0, 0.0, 0.0), scale,
                         case["key_valid"])
        lse[int(torch.randint(0, 2, (1,), generator=g)), :, int(torch.randint(20, 37, (1,), generator=g))] = \
            [NAN, INF, -INF][seed % 3]
    run(backend, device, case, lse=lse, scale=scale)


# --------------------------------------------------------------------------------------
# select_visual_tokens
# --------------------------------------------------------------------------------------


def select(backend, scores, row_mask, key_len, **keep):
    B = scores.shape[0]
    return dvtp_kernels.select_visual_tokens(scores, row_mask, [30] * B, [2] * B, key_len, backend=backend,
                                             **(keep or dict(keep_ratio=0.5)))


def rule_keep(scores, row_mask, key_len, keep_count):
    """Independent rule: float64 sums in row order over selected rows, (importance desc,
    index asc), first keep_count, ascending."""
    out = []
    for b in range(scores.shape[0]):
        imp = [0.0] * key_len[b]
        for i in range(scores.shape[1]):
            if row_mask[b, i]:
                for j in range(key_len[b]):
                    imp[j] += float(scores[b, i, j])
        out.append(sorted(sorted(range(key_len[b]), key=lambda j: (-imp[j], j))[: keep_count[b]]))
    return out


def flag_case():
    """Normalised op arguments (what the wrapper passes a backend) for six items, each with
    a different way of (not) holding a NaN importance; -> (args, expected nan_item)."""
    g = torch.Generator().manual_seed(11)
    B, R, V = 6, 5, 13
    scores = torch.rand(B, R, V, generator=g) + 0.5
    row_mask = torch.rand(B, R, generator=g) > 0.5
    row_mask[:, 0], row_mask[:, 1] = True, False
    row_mask[5] = False
    key_len = [13, 11, 12, 7, 13, 9]
    keep = [6, 4, 5, 7, 3, 9]  # item 3 keeps everything, item 5 (no selected row) too
    scores[0, 0, 6], scores[0, 2, 6] = INF, -INF  # +inf and -inf in one column of selected rows
    row_mask[0, 2] = True
    scores[1, 0, 10] = NAN  # NaN in a selected row, inside key_len
    scores[2, 1, :] = NAN  # NaN in an unselected row ...
    scores[2, 0, 12:] = NAN  # ... and beyond key_len: never read
    scores[3, 0, 2] = NAN  # a NaN item that keeps all its tokens is still flagged
    scores[4, 0, 1], scores[4, 0, 8] = INF, -INF  # infinities in different columns: ranked, no NaN
    scores[5, 0, 3] = NAN  # no selected row: nothing is read
    expected = [True, True, False, True, False, False]
    args = dict(scores=scores, row_mask=row_mask, seq_len=torch.tensor([20, 15, 30, 9, 13, 12]),
                key_start=torch.tensor([2, 0, 18, 1, 0, 3]), key_len=torch.tensor(key_len),
                keep_count=torch.tensor(keep))
    return args, expected


@pytest.mark.parametrize("backend,device", backend_params())
def test_select_backend_flags_nan_items(backend, device):
    """Each backend's own op (called directly, without the public wrapper) reports the items
    with a NaN importance in its nan_item output, and still selects the other items exactly
    (outputs wider than needed, as the wrapper asks for, padded with -1)."""
    from dvtp_kernels import dispatch

    dev = require(backend, device, "select_visual_tokens")
    args, expected = flag_case()
    args = {k: v.to(dev) for k, v in args.items()}
    max_new_len, max_keep = 32, 14
    gather_index, keep_index, nan_item = dispatch.run(backend, "select_visual_tokens", **args,
                                                      max_new_len=max_new_len, max_keep=max_keep)
    assert nan_item.dtype == torch.bool and nan_item.shape == (6,)
    assert nan_item.tolist() == expected
    assert gather_index.shape == (6, max_new_len) and keep_index.shape == (6, max_keep)
    cpu = {k: v.cpu() for k, v in args.items()}
    key_len, keep = cpu["key_len"].tolist(), cpu["keep_count"].tolist()
    kept = rule_keep(cpu["scores"], cpu["row_mask"], key_len, keep)
    for b in range(6):
        if expected[b]:
            continue  # no defined selection: the wrapper raises
        k0, n = int(cpu["key_start"][b]), int(cpu["seq_len"][b])
        assert keep_index[b].tolist() == kept[b] + [-1] * (max_keep - keep[b])
        positions = list(range(k0)) + [k0 + j for j in kept[b]] + list(range(k0 + key_len[b], n))
        assert gather_index[b].tolist() == positions + [-1] * (max_new_len - len(positions))


def _patch_flag(monkeypatch, flag):
    """Make dispatch.run report ``flag(nan_item)`` instead of the backend's own flag."""
    from dvtp_kernels import dispatch

    real = dispatch.run

    def patched(name, op, **args):
        out = real(name, op, **args)
        if op == "select_visual_tokens":
            return out[0], out[1], flag(out[2])
        return out

    monkeypatch.setattr(dispatch, "run", patched)


@pytest.mark.parametrize("backend,device", backend_params())
def test_select_refuses_nan_in_a_selected_row(backend, device):
    dev = require(backend, device, "select_visual_tokens")
    scores = torch.rand(3, 5, 12, device=dev)
    row_mask = torch.tensor([[1, 1, 0, 0, 0], [1, 0, 1, 1, 0], [0, 0, 0, 0, 0]], dtype=torch.bool, device=dev)
    scores[1, 2, 4] = NAN
    scores[1, 3, 0] = NAN
    with pytest.raises(ValueError, match=r"scores .*NaN.*item 1: 2 of its 3 selected rows \(row_mask\) hold NaN"):
        select(backend, scores, row_mask, [12, 10, 12])


@pytest.mark.parametrize("backend,device", backend_params())
def test_select_wrapper_trusts_the_backend_flag(backend, device, monkeypatch):
    """The wrapper makes no NaN check of its own (no extra pass over scores): it raises
    exactly for the items the backend flags."""
    dev = require(backend, device, "select_visual_tokens")
    scores = torch.rand(2, 4, 9, device=dev)
    row_mask = torch.ones(2, 4, dtype=torch.bool, device=dev)
    scores[0, 1, 3] = NAN
    _patch_flag(monkeypatch, torch.zeros_like)  # the backend "saw" no NaN
    _, _, keep_index, keep_count = select(backend, scores, row_mask, [9, 9])
    assert keep_count.tolist() == [4, 4] and keep_index.shape == (2, 4)
    scores[0, 1, 3] = 0.5
    _patch_flag(monkeypatch, lambda f: torch.tensor([False, True], device=f.device))
    with pytest.raises(ValueError, match=r"NaN importance.*item 1: "):
        select(backend, scores, row_mask, [9, 9])


@pytest.mark.parametrize("backend,device", backend_params())
def test_select_refuses_plus_and_minus_inf_in_one_column(backend, device):
    dev = require(backend, device, "select_visual_tokens")
    scores = torch.rand(2, 4, 9, device=dev)
    row_mask = torch.ones(2, 4, dtype=torch.bool, device=dev)
    scores[0, 0, 6], scores[0, 3, 6] = INF, -INF
    with pytest.raises(ValueError, match=r"item 0: its 4 selected rows \(row_mask\) hold \+inf and -inf in one column"):
        select(backend, scores, row_mask, [9, 9])


@pytest.mark.parametrize("backend,device", backend_params())
def test_select_ignores_nan_where_it_is_not_read(backend, device):
    """NaN in unselected rows and in columns >= key_len is never read: every backend gives
    the rule's answer (the reference once multiplied unselected rows by 0: NaN * 0 = NaN)."""
    dev = require(backend, device, "select_visual_tokens")
    g = torch.Generator().manual_seed(3)
    scores = torch.rand(2, 6, 20, generator=g)
    row_mask = torch.rand(2, 6, generator=g) > 0.5
    row_mask[:, 0], row_mask[:, 1] = True, False
    scores[:, 1, :] = NAN  # unselected row
    scores[0, :, 14:] = NAN  # beyond item 0's key_len
    key_len = [14, 20]
    gather_index, new_len, keep_index, keep_count = select(backend, scores.to(dev), row_mask.to(dev), key_len)
    kept = rule_keep(scores, row_mask, key_len, keep_count.tolist())
    for b in range(2):
        assert keep_index[b, : keep_count[b]].tolist() == kept[b]


@pytest.mark.parametrize("backend,device", backend_params())
def test_select_ranks_infinities_as_extremes(backend, device):
    dev = require(backend, device, "select_visual_tokens")
    scores = torch.rand(1, 3, 10)
    row_mask = torch.ones(1, 3, dtype=torch.bool)
    scores[0, 1, 7] = INF
    scores[0, 2, 2] = INF
    scores[0, 0, 0] = -INF
    _, _, keep_index, _ = select(backend, scores.to(dev), row_mask.to(dev), [10], keep=2)
    assert keep_index.tolist() == [[2, 7]]
    _, _, keep_index, _ = select(backend, scores.to(dev), row_mask.to(dev), [10], keep=9)
    assert 0 not in keep_index.tolist()[0]
