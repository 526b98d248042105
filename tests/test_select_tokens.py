"""select_visual_tokens on every backend: exact agreement with the reference and with
properties written out independently here (ties, counts, order, padding)."""
import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import dvtp_kernels
from backends import backend_params, is_interpreted, require

OP = "select_visual_tokens"


def make_scores(B, R, Vmax, *, ties, seed, device):
    g = torch.Generator().manual_seed(seed)
    if ties:
        # Few distinct integer values: float64 row sums are exact in any order, so ties are real.
        scores = torch.randint(0, 3, (B, R, Vmax), generator=g).float()
    else:
        scores = torch.rand(B, R, Vmax, generator=g)
    row_mask = torch.rand(B, R, generator=g) > 0.4
    return scores.to(device), row_mask.to(device)


def expected_keep(scores, row_mask, key_len, keep_count):
    """Independent statement of the rule: rank by (importance desc, index asc), keep the first."""
    out = []
    for b in range(scores.shape[0]):
        imp = (scores[b].double() * row_mask[b].double()[:, None]).sum(0)[: key_len[b]].tolist()
        ranked = sorted(range(key_len[b]), key=lambda j: (-imp[j], j))
        out.append(sorted(ranked[: keep_count[b]]))
    return out


def assert_layout(gather_index, new_len, keep_index, keep_count, seq_len, key_start, key_len, kept):
    B = gather_index.shape[0]
    assert gather_index.dtype == keep_index.dtype == new_len.dtype == keep_count.dtype == torch.int64
    assert gather_index.is_contiguous() and keep_index.is_contiguous()
    assert gather_index.shape == (B, max(new_len.tolist()))
    assert keep_index.shape == (B, max(keep_count.tolist()))
    for b in range(B):
        kc = len(kept[b])
        assert keep_count[b] == kc
        assert keep_index[b, :kc].tolist() == kept[b]
        assert (keep_index[b, kc:] == -1).all()
        positions = list(range(key_start[b])) + [key_start[b] + j for j in kept[b]]
        positions += list(range(key_start[b] + key_len[b], seq_len[b]))
        assert new_len[b] == len(positions)
        assert gather_index[b, : len(positions)].tolist() == positions
        assert (gather_index[b, len(positions):] == -1).all()


CASES = [
    # B, R, Vmax, seq_len, key_start, key_len, ties
    (1, 1, 1, 1, [0], [1], False),
    (1, 32, 3500, 3700, [50], [3500], False),
    (3, 7, 129, 300, [0, 10, 171], [129, 1, 129], False),
    (3, 16, 257, 400, [5, 100, 143], [257, 200, 257], True),
    (2, 5, 1000, 1100, [100, 0], [1000, 999], True),
]
INTERPRETED_CASES = [c for c in CASES if c[2] <= 257]


def run_case(backend, device, case, keep_ratio):
    B, R, Vmax, seq_len, key_start, key_len, ties = case
    scores, row_mask = make_scores(B, R, Vmax, ties=ties, seed=B * 1000 + Vmax, device=device)
    if B > 1:
        row_mask[1] = False  # an item with no still-masked row keeps everything
    seq = [seq_len] * B
    out = dvtp_kernels.select_visual_tokens(scores, row_mask, seq, key_start, key_len,
                                            keep_ratio=keep_ratio, backend=backend)
    keep_count = [
        n if not row_mask[b].any() else max(1, math.floor(n * keep_ratio)) for b, n in enumerate(key_len)
    ]
    kept = expected_keep(scores.cpu(), row_mask.cpu(), key_len, keep_count)
    assert_layout(*(t.cpu() for t in out), seq, key_start, key_len, kept)
    ref = dvtp_kernels.select_visual_tokens(scores, row_mask, seq, key_start, key_len,
                                            keep_ratio=keep_ratio, backend="reference")
    for ours, theirs in zip(out, ref):
        assert torch.equal(ours, theirs)


@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("keep_ratio", [0.5, 0.25, 1e-9, 1.0])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_matches_rule(backend, device, case, keep_ratio):
    dev = require(backend, device, OP)
    cases = INTERPRETED_CASES if is_interpreted(backend, device) else CASES
    if case >= len(cases):
        pytest.skip("larger selection sizes are not run in the Triton interpreter")
    run_case(backend, dev, cases[case], keep_ratio)


@pytest.mark.parametrize("backend,device", backend_params())
def test_keep_per_item_and_all_ties(backend, device):
    dev = require(backend, device, OP)
    B, R, V = 3, 4, 50
    scores = torch.ones(B, R, V, device=dev)  # every token ties: the lowest indices win
    row_mask = torch.ones(B, R, dtype=torch.bool, device=dev)
    gather_index, new_len, keep_index, keep_count = dvtp_kernels.select_visual_tokens(
        scores, row_mask, [60, 60, 55], [2, 10, 5], [50, 40, 50], keep=[3, 40, 1], backend=backend
    )
    assert keep_count.tolist() == [3, 40, 1]
    assert keep_index.cpu().tolist() == [
        [0, 1, 2] + [-1] * 37, list(range(40)), [0] + [-1] * 39,
    ]
    assert new_len.tolist() == [13, 60, 6]
    assert gather_index[2, :6].tolist() == [0, 1, 2, 3, 4, 5]
    assert gather_index[0, :13].tolist() == [0, 1, 2, 3, 4, 52, 53, 54, 55, 56, 57, 58, 59]


@pytest.mark.parametrize("backend,device", backend_params())
def test_no_visual_tokens_in_an_item(backend, device):
    """A text-only item in a batch (key_len 0) keeps its whole sequence."""
    dev = require(backend, device, OP)
    scores, row_mask = make_scores(2, 6, 20, ties=False, seed=5, device=dev)
    gather_index, new_len, keep_index, keep_count = dvtp_kernels.select_visual_tokens(
        scores, row_mask, [30, 25], [4, 0], [20, 0], keep_ratio=0.5, backend=backend
    )
    assert keep_count.tolist() == [10, 0]
    assert new_len.tolist() == [20, 25]
    assert gather_index[1].tolist() == list(range(25))
    assert (keep_index[1] == -1).all()


def test_keep_ratio_floor_matches_python_float_rounding():
    """29 * 0.29 = 8.41 -> 8, and 100 * 0.29 = 28.999999999999996 -> 28, as int(n * r) gives."""
    scores = torch.rand(1, 2, 100)
    row_mask = torch.ones(1, 2, dtype=torch.bool)
    for n, expect in [(29, 8), (100, 28), (3, 1)]:
        _, _, _, keep_count = dvtp_kernels.select_visual_tokens(
            scores, row_mask, 100, 0, n, keep_ratio=0.29, backend="reference"
        )
        assert keep_count.tolist() == [expect]


@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("keep", [3, torch.tensor(3)], ids=["int", "0-dim tensor"])
def test_scalar_keep_with_a_text_only_item(backend, device, keep):
    """One keep for the whole batch: items with visual tokens keep that many, a text-only
    item (key_len 0) keeps 0 (it was refused: keep[1]=3 must lie in [0, 0])."""
    dev = require(backend, device, OP)
    scores, row_mask = make_scores(3, 5, 12, ties=False, seed=8, device=dev)
    row_mask[:] = True
    gather_index, new_len, keep_index, keep_count = dvtp_kernels.select_visual_tokens(
        scores, row_mask, [20, 9, 16], [2, 4, 0], [12, 0, 7], keep=keep, backend=backend
    )
    assert keep_count.tolist() == [3, 0, 3]
    assert new_len.tolist() == [20 - 12 + 3, 9, 16 - 7 + 3]
    assert gather_index[1, :9].tolist() == list(range(9)) and (gather_index[1, 9:] == -1).all()
    assert (keep_index[1] == -1).all()
    kept = expected_keep(scores.cpu(), row_mask.cpu(), [12, 0, 7], [3, 0, 3])
    assert keep_index[0].tolist() == kept[0] and keep_index[2].tolist() == kept[2]


@pytest.mark.parametrize("backend,device", backend_params())
def test_keep_ratio_rule_on_every_backend(backend, device):
    """max(1, int(n * r)) capped at n, 0 for n = 0: r = 0.29 keeps 28 of 100 (100 * 0.29 =
    28.999999999999996), 8 of 29, 1 of 3, 0 of 0; r = 1e-9 keeps 1."""
    dev = require(backend, device, OP)
    scores = torch.rand(5, 2, 100, device=dev)
    row_mask = torch.ones(5, 2, dtype=torch.bool, device=dev)
    _, _, _, keep_count = dvtp_kernels.select_visual_tokens(
        scores, row_mask, 100, 0, [100, 29, 3, 0, 57], keep_ratio=0.29, backend=backend)
    assert keep_count.tolist() == [28, 8, 1, 0, 16]
    _, _, _, keep_count = dvtp_kernels.select_visual_tokens(
        scores, row_mask, 100, 0, [100, 29, 3, 0, 57], keep_ratio=1e-9, backend=backend)
    assert keep_count.tolist() == [1, 1, 1, 0, 1]


@pytest.mark.parametrize("B,R,V,ties", [(1, 37, 2600, False), (3, 21, 1100, True), (2, 9, 5000, False)])
def test_cpu_selection_does_not_depend_on_the_thread_count(B, R, V, ties):
    """The cpu kernel splits one item's columns over threads (blocks of 512): any thread
    count gives the reference's answer, bit for bit."""
    require("cpu", "cpu", OP)
    scores, row_mask = make_scores(B, R, V, ties=ties, seed=R * V, device="cpu")
    row_mask[:, 0] = True
    spans = ([V + 40] * B, [40] * B, [V - 3 * b for b in range(B)])
    expected = dvtp_kernels.select_visual_tokens(scores, row_mask, *spans, keep_ratio=0.3, backend="reference")
    threads = torch.get_num_threads()
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            got = dvtp_kernels.select_visual_tokens(scores, row_mask, *spans, keep_ratio=0.3, backend="cpu")
            assert all(torch.equal(a, b) for a, b in zip(got, expected)), f"{n} threads"
    finally:
        torch.set_num_threads(threads)


class _ScoresReads(TorchDispatchMode):
    """Records the ops that read ``scores``' storage outside the backend's own run."""

    def __init__(self, scores):
        super().__init__()
        self.storage = scores.untyped_storage().data_ptr()
        self.in_backend = False
        self.outside = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not self.in_backend and any(
            isinstance(a, torch.Tensor) and a.untyped_storage().data_ptr() == self.storage
            for a in tree_leaves((args, kwargs or {}))
        ):
            self.outside.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("backend,device", [p for p in backend_params() if p.values[1] == "cpu"])
def test_public_select_reads_scores_only_in_the_backend(backend, device, monkeypatch):
    """NaN detection is part of the backend's pass over scores: the wrapper itself reads no
    element of scores (there once was a whole-tensor isfinite pass, ~75 % of a cpu call)."""
    from dvtp_kernels import dispatch

    dev = require(backend, device, OP)
    scores, row_mask = make_scores(2, 6, 40, ties=False, seed=4, device=dev)
    mode = _ScoresReads(scores)
    real = dispatch.run

    def in_backend(*args, **kwargs):
        mode.in_backend = True
        try:
            return real(*args, **kwargs)
        finally:
            mode.in_backend = False

    monkeypatch.setattr(dispatch, "run", in_backend)
    with mode:
        out = dvtp_kernels.select_visual_tokens(scores, row_mask, 50, 5, [40, 33], keep_ratio=0.25, backend=backend)
    assert mode.outside == []
    kept = expected_keep(scores, row_mask, [40, 33], out[3].tolist())
    assert [out[2][b, : len(kept[b])].tolist() for b in range(2)] == kept
