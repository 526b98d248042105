"""Determinism: equal inputs give bit-identical outputs on every backend, and on the C++
CPU backend also for any intra-op thread count (its work split is fixed by the shapes,
never by torch.get_num_threads()).

Outputs are compared bit for bit (float tensors through an integer view, so NaN
entries -- the never-written tail of scores -- compare too)."""
import contextlib
import os
import platform
import subprocess
import sys
import textwrap

import pytest
import torch

import dvtp_kernels
from backends import backend_params, is_interpreted, require


def bits(t: torch.Tensor) -> torch.Tensor:
    if t.dtype in (torch.float32,):
        return t.view(torch.int32)
    if t.dtype in (torch.float16, torch.bfloat16):
        return t.view(torch.int16)
    return t


def same_bits(a, b) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(bits(a), bits(b))


@contextlib.contextmanager
def num_threads(n):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# B, Hq, Hkv, N, D, R, dtype, lse given
ACCUMULATE_SHAPES = [
    (1, 4, 2, 300, 72, 48, torch.float32, False),   # one item: the row split is all the parallelism
    (3, 8, 2, 257, 64, 200, torch.bfloat16, True),  # several row blocks per item
    (2, 6, 3, 129, 20, 24, torch.float16, False),   # odd head dim, GQA 2
    (5, 2, 1, 90, 96, 17, torch.float32, True),
]
INTERPRETED_SHAPES = [(1, 4, 2, 40, 20, 12, torch.float32, False), (2, 2, 1, 33, 72, 5, torch.bfloat16, True)]


def accumulate_inputs(shape, device, seed=0):
    B, Hq, Hkv, N, D, R, dtype, with_lse = shape
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, N, Hq, D, generator=g).to(dtype).transpose(1, 2)
    k = torch.randn(B, Hkv, N, D, generator=g).to(dtype)
    key_valid = torch.rand(B, N, generator=g) > 0.1
    key_len = [int(x) for x in torch.randint(1, N // 2, (B,), generator=g)]
    key_start = [int(torch.randint(0, N - n + 1, (1,), generator=g)) for n in key_len]
    query_start = [int(torch.randint(0, N - R + 1, (1,), generator=g)) for _ in range(B)]
    scores = torch.rand(B, R, max(key_len) + 2, generator=g)
    for b, n in enumerate(key_len):
        scores[b, :, n:] = float("nan")
    lse = torch.randn(B, Hq, N, generator=g).abs() + 3.0 if with_lse else None
    to = lambda t: None if t is None else t.to(device)  # noqa: E731
    return dict(q=to(q), k=to(k), scores=to(scores), query_start=query_start, key_start=key_start,
                key_len=key_len, lse=to(lse), key_valid=to(key_valid))


def accumulate(a, backend):
    out = a["scores"].clone()
    dvtp_kernels.accumulate_visual_scores(a["q"], a["k"], out, a["query_start"], a["key_start"], a["key_len"],
                                          lse=a["lse"], key_valid=a["key_valid"], backend=backend)
    return out


def select(scores, backend):
    B, R, V = scores.shape
    row_mask = torch.ones(B, R, dtype=torch.bool, device=scores.device)
    return dvtp_kernels.select_visual_tokens(scores.nan_to_num(0.0), row_mask, V + 10, 3, V, keep_ratio=0.3,
                                             backend=backend)


def gather(device, backend):
    g = torch.Generator().manual_seed(4)
    B, N = 3, 500
    tensors = [torch.randn(B, N, 64, generator=g), torch.randint(0, 1000, (B, N), generator=g),
               torch.randn(B, 4, N, 16, generator=g).to(torch.bfloat16)]
    index = torch.full((B, N), -1, dtype=torch.int64)
    lengths = []
    for b in range(B):
        rows = torch.nonzero(torch.rand(N, generator=g) > 0.4).flatten()
        index[b, : rows.numel()] = rows
        lengths.append(rows.numel())
    return dvtp_kernels.gather_compact([t.to(device) for t in tensors], index.to(device), lengths,
                                       dims=[1, 1, 2], pad_value=-3, backend=backend)


@pytest.mark.parametrize("backend,device", backend_params())
def test_reruns_are_bit_identical(backend, device):
    dev = require(backend, device, "accumulate_visual_scores")
    shapes = INTERPRETED_SHAPES if is_interpreted(backend, device) else ACCUMULATE_SHAPES
    for shape in shapes:
        a = accumulate_inputs(shape, dev)
        first, second = accumulate(a, backend), accumulate(a, backend)
        assert same_bits(first, second), shape
        for x, y in zip(select(first, backend), select(second, backend)):
            assert torch.equal(x, y)
    for x, y in zip(gather(dev, backend), gather(dev, backend)):
        assert same_bits(x, y)


@pytest.mark.parametrize("threads", [2, 3, 4])
@pytest.mark.parametrize("shape", ACCUMULATE_SHAPES, ids=lambda s: "B{}-H{}x{}-N{}-D{}-R{}".format(*s[:6]))
def test_cpu_accumulate_does_not_depend_on_the_thread_count(shape, threads):
    """torch.set_num_threads(1) and (n) give the same bits: the C++ kernel's row blocks are
    sized from the shapes only (they were sized from the thread count)."""
    require("cpu", "cpu", "accumulate_visual_scores")
    a = accumulate_inputs(shape, torch.device("cpu"), seed=1)
    with num_threads(1):
        one = accumulate(a, "cpu")
    with num_threads(threads):
        many = accumulate(a, "cpu")
    assert same_bits(one, many)


def test_cpu_select_and_gather_do_not_depend_on_the_thread_count():
    require("cpu", "cpu", "select_visual_tokens")
    scores = torch.rand(4, 64, 700)
    with num_threads(1):
        one = select(scores, "cpu") + tuple(gather(torch.device("cpu"), "cpu"))
    with num_threads(2):
        two = select(scores, "cpu") + tuple(gather(torch.device("cpu"), "cpu"))
    for x, y in zip(one, two):
        assert same_bits(x, y)


def test_cpu_accumulate_thread_count_independent_from_a_fresh_process():
    """The first call on fresh OpenMP workers (a new process, threads raised from 1) gives
    the same bits too: ATen initialises each worker lazily, resetting MKL's thread-local
    setting, which the kernel must re-pin before its GEMMs."""
    require("cpu", "cpu", "accumulate_visual_scores")
    code = textwrap.dedent("""
        import sys, torch
        sys.path.insert(0, %r)
        from test_kernel_determinism import ACCUMULATE_SHAPES, accumulate, accumulate_inputs, same_bits
        results = {}
        for threads in (1, 2, 1, 3, 2):
            torch.set_num_threads(threads)
            for i, shape in enumerate(ACCUMULATE_SHAPES):
                out = accumulate(accumulate_inputs(shape, torch.device("cpu"), seed=2), "cpu")
                first = results.setdefault(i, out)
                assert same_bits(first, out), (threads, shape)
        print("ok")
    """ % os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "ok"


def subnormal_inputs():
    """Logits spread over > 87 (|q|, |k| ~ 6): many probabilities exp(logit - lse) are
    subnormal floats, and so are scores entries that start at 0."""
    g = torch.Generator().manual_seed(0)
    B, Hq, Hkv, N, D, R = 2, 4, 2, 96, 16, 8
    return dict(q=6 * torch.randn(B, Hq, N, D, generator=g), k=6 * torch.randn(B, Hkv, N, D, generator=g),
                scores=torch.zeros(B, R, 40), query_start=[50, 60], key_start=[3, 10], key_len=[40, 33],
                lse=None, key_valid=None)


@contextlib.contextmanager
def caller_fp_env(flush_denormal: bool, rounding: int | None):
    """Set this thread's FP environment (MXCSR on x86): FTZ/DAZ through torch, the rounding
    mode through libm's fesetround. The intra-op pool's workers keep their own state."""
    import ctypes
    import ctypes.util

    libm = ctypes.CDLL(ctypes.util.find_library("m"))
    before = libm.fegetround()
    torch.set_flush_denormal(flush_denormal)
    if rounding is not None:
        assert libm.fesetround(rounding) == 0
    try:
        yield
    finally:
        libm.fesetround(before)
        torch.set_flush_denormal(False)


@pytest.mark.parametrize("threads", [1, 2])
# glibc x86 FE_TOWARDZERO = 0xC00, FE_UPWARD = 0x800
@pytest.mark.parametrize("flush_denormal,rounding", [(True, None), (False, 0xC00), (True, 0x800)],
                         ids=["ftz-daz", "round-toward-zero", "ftz-daz-round-up"])
def test_cpu_accumulate_does_not_depend_on_the_callers_fp_environment(flush_denormal, rounding, threads):
    """The kernel computes in the IEEE default environment on every thread, whatever the
    caller set: torch.set_flush_denormal(True) changes only the calling thread, so before
    the kernel pinned it, the items the caller ran flushed their subnormal probabilities
    and those of pool workers did not (61 vs 41 entries differed from IEEE for 1 vs 2
    threads), and a directed rounding mode moved entries by up to 7 ulp."""
    require("cpu", "cpu", "accumulate_visual_scores")
    if platform.machine() not in ("x86_64", "AMD64") or not sys.platform.startswith("linux"):
        pytest.skip("written for x86-64 Linux (MXCSR; glibc's FE_* rounding constants)")
    a = subnormal_inputs()
    with num_threads(1):
        expected = accumulate(a, "cpu")
    assert ((expected > 0) & (expected < torch.finfo(torch.float32).tiny)).any()  # the case is real
    with num_threads(threads), caller_fp_env(flush_denormal, rounding):
        got = accumulate(a, "cpu")
    assert same_bits(expected, got)


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("DVTP_STRESS") != "1", reason="stress run: set DVTP_STRESS=1 (minutes)")
def test_cpu_accumulate_first_call_of_a_process_under_load():
    """tools/stress_first_call.py: 300 fresh processes, two busy-loop processes loading
    the cores, threads 1-4; every process's first call must give the later calls' bits."""
    require("cpu", "cpu", "accumulate_visual_scores")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run([sys.executable, os.path.join(root, "tools", "stress_first_call.py"), "--procs", "300",
                             "--load", "2", "--threads", "1,2,3,4"], capture_output=True, text=True, timeout=7200)
    assert result.returncode == 0, result.stdout + result.stderr
