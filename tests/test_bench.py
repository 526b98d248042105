"""dvtp.bench: quick runs of the three kernel ops on CPU, the record files, the report, the
timing and memory measures, and argument errors."""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import time

import pytest
import torch

from dvtp import bench
from dvtp.bench import harness, ops
from dvtp.bench.report import latest

KERNEL_OPS = ("scores", "select", "compact")
CPU = torch.device("cpu")
# /proc/self/clear_refs resets the RSS high-water mark; without it CPU peak memory is None
CPU_PEAK = os.access("/proc/self/clear_refs", os.W_OK)


@pytest.fixture(scope="module")
def quick_runs(tmp_path_factory):
    """One quick CPU run per kernel op, all appended to one JSON Lines file."""
    path = tmp_path_factory.mktemp("bench") / "cpu.jsonl"
    calls = []
    runs = {op: bench.run(op, device="cpu", quick=True, out=str(path), progress=lambda *a: calls.append(a))
            for op in KERNEL_OPS}
    return runs, path, calls


@pytest.mark.parametrize("op", KERNEL_OPS)
def test_quick_run_records(quick_runs, op):
    runs, _, _ = quick_runs
    records = runs[op]
    cases = bench.cases(op, device="cpu", quick=True)
    names, skipped = ops.implementations(op, CPU)
    assert "reference" in names and "triton" in skipped  # the interpreter is never timed
    assert [(r.case, r.backend) for r in records] == [(c.name, n) for c in cases for n in names]
    fields = {f.name for f in dataclasses.fields(harness.Record)}
    for r in records:
        d = r.to_dict()
        assert set(d) == fields
        assert r.op == op and r.device == "cpu" and r.device_name and r.baseline == ops.USER_IMPLS[op][0]
        assert "N" in r.shape and r.median_ms > 0 and r.iqr_ms >= 0
        assert r.extra["rounds"] >= harness.BUDGETS[("cpu", True)].min_rounds and r.extra["calls_per_round"] >= 1
        if CPU_PEAK:
            assert r.peak_mib is not None and r.peak_mib >= 0
        for key in ("torch", "triton", "cuda", "python", "threads", "commit", "timestamp", "others_cpu_cores"):
            assert key in r.env
        assert r.env["others_cpu_cores"] is None or r.env["others_cpu_cores"] >= 0
        assert r.env["threads"] == torch.get_num_threads()
        json.dumps(d)  # JSON-able
    for case in cases:
        recs = {r.backend: r for r in records if r.case == case.name}
        base = recs[case.baseline]
        assert base.ratio == 1.0 and base.extra["skipped"] == skipped
        for r in recs.values():
            assert r.ratio == pytest.approx(base.median_ms / r.median_ms)
    if op == "compact":
        assert all(r.extra["effective_GBps"] > 0 and r.extra["bytes_moved"] > 0 for r in records)


def test_progress_and_round_trip(quick_runs):
    runs, path, calls = quick_runs
    written = harness.load_records(str(path))
    assert [r.to_dict() for r in written] == [r.to_dict() for op in KERNEL_OPS for r in runs[op]]
    n_cases = {op: len(bench.cases(op, device="cpu", quick=True)) for op in KERNEL_OPS}
    assert [c[:2] for c in calls] == [(i, n_cases[op]) for op in KERNEL_OPS for i in range(n_cases[op] + 1)]
    assert "not measured: triton" in calls[0][2]


@pytest.mark.parametrize("op", KERNEL_OPS)
def test_quick_impls_agree(op):
    """Every impl of a case computes what the baseline computes (a speedup of a different
    result would mean nothing). float32 scores: atol 1e-5 on probabilities summed over 4
    heads, rtol 1e-4 (summation order); indices and copies: exact."""
    for case in bench.cases(op, device="cpu", quick=True):
        outs = {name: fn() for name, fn in case.setup().items()}
        want = outs.pop(case.baseline)
        for name, got in outs.items():
            if op == "scores":
                assert torch.count_nonzero(want) > 0.9 * want.numel()
                torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4, msg=f"{case.name} {name}")
            elif op == "select":
                assert torch.equal(got[0], want[0]), (case.name, name)
            else:
                assert len(got) == len(want)
                assert all(torch.equal(g, w) for g, w in zip(got, want)), (case.name, name)


def test_run_case_impls_filter():
    case = bench.cases("select", device="cpu", quick=True)[0]
    records = harness.run_case(case, "cpu", quick=True, impls=["reference"])
    assert [r.backend for r in records] == ["topk_sort_index", "reference"]  # the baseline always
    with pytest.raises(ValueError, match="impls.*triton.*interpreter"):
        harness.run_case(case, "cpu", quick=True, impls=["triton"])


def test_measure_times_and_memory():
    m = harness.measure(lambda: time.sleep(0.003), "cpu", repeats=5)
    assert len(m.times_ms) == 5 and m.calls_per_round == 1
    assert 3.0 <= m.median_ms < 30.0 and m.iqr_ms >= 0
    m = harness.measure(lambda: torch.ones(2**20), "cpu", quick=True, memory=False)
    assert m.peak_mib is None and m.last.numel() == 2**20 and m.calls_per_round >= 1
    if not CPU_PEAK:
        pytest.skip("no /proc/self/clear_refs: CPU peak memory is not measurable here")

    def three_live(mib):
        xs = [torch.ones(mib * 2**18) for _ in range(3)]  # written, so resident
        return sum(x.numel() for x in xs)

    # 20 MiB blocks freed first stay in the heap (glibc raised its mmap threshold): peak_mib
    # must still see the 3 x 6 MiB that reuse them
    for _ in range(3):
        three_live(20)
    m = harness.measure(lambda: three_live(6), "cpu", quick=True)
    assert 17.0 <= m.peak_mib < 40.0, m.peak_mib


def test_cpu_tensor_peak():
    def fn():
        a = torch.empty(1000, 1000)  # 4 MB
        b = torch.empty(2000, 1000)  # 8 MB
        del a
        c = torch.empty(500, 1000)  # 2 MB
        return b, c

    peak, largest = harness.cpu_tensor_peak(fn)
    assert peak == 12_000_000 and largest == 8_000_000


def test_others_cpu_cores():
    # 4 busy CPU seconds in 2 s of wall time, 2 of them this process's: 1 core of others
    assert harness.others_cpu_cores((10.0, 1.0), (14.0, 3.0), 2.0) == 1.0
    assert harness.others_cpu_cores(None, (14.0, 3.0), 2.0) is None


def test_quartiles():
    assert harness.quartiles([5.0]) == (5.0, 5.0, 5.0)
    assert harness.median_iqr([1.0, 2.0, 3.0, 4.0, 5.0]) == (3.0, 2.0)
    with pytest.raises(ValueError, match="times"):
        harness.median_iqr([])


def _record(op, case, backend, N, ratio, median, *, stamp="2026-01-01T00:00:00+00:00", threads=2, skipped=None):
    extra = {"rounds": 5, "calls_per_round": 1}
    if skipped:
        extra["skipped"] = skipped
    baseline = {"scores": "eager", "select": "topk_sort_index"}[op]
    return harness.Record(
        op=op, case=case, shape={"N": N, "V": N - 300, "R": 32}, backend=backend, device="cpu",
        device_name="Test CPU", median_ms=median, iqr_ms=median / 10, peak_mib=1.5 * N / 1000, ratio=ratio,
        baseline=baseline, extra=extra,
        env={"torch": "2.13.0", "threads": threads, "commit": "abc123", "dirty": False, "timestamp": stamp,
             "loadavg_1m": 1.0},
    )


def test_report_markdown_and_png(tmp_path):
    from PIL import Image

    recs = []
    for N in (1024, 2048, 3800):
        case = f"N={N} V={N - 300} R=32"
        eager = N * N / 1e4
        recs += [
            _record("scores", case, "eager", N, 1.0, eager, skipped={"triton": "not timed"}),
            _record("scores", case, "cpu", N, eager / (N / 1e3), N / 1e3),
        ]
    recs.append(_record("select", "N=3800 V=3500 R=128 B=1", "topk_sort_index", 3800, 1.0, 0.15))
    recs.append(_record("select", "N=3800 V=3500 R=128 B=1", "cpu", 3800, 0.15 / 0.3, 0.3))
    # an older record of a measured key, later in the file: the newer one (by timestamp) wins
    recs.append(_record("scores", "N=3800 V=3500 R=32", "cpu", 3800, 2.0, 700.0, stamp="2025-01-01T00:00:00+00:00"))
    # another thread count is another platform: its own table
    recs.append(_record("select", "N=3800 V=3500 R=128 B=1", "topk_sort_index", 3800, 1.0, 0.1, threads=8))
    path = tmp_path / "results" / "cpu.jsonl"
    harness.append_records(recs[:4], str(path))
    harness.append_records(recs[4:], str(path))
    assert len(latest(harness.load_records(str(path)))) == len(recs) - 1

    png = tmp_path / "plot" / "speedup.png"
    rep = bench.report([str(path)], png=str(png))
    md = rep.markdown
    assert rep.png == str(png)
    assert md.count("| op | case | backend | median ms | IQR ms | peak MiB | speedup vs baseline |") == 2
    assert "**cpu: Test CPU, 2 threads**" in md and "**cpu: Test CPU, 8 threads**" in md
    assert "| scores | N=1024 V=724 R=32 | eager (baseline) | 105 | 10.5 | 1.54 | 1.00x |" in md
    assert "|  |  | cpu | 3.80 | 0.380 | 5.70 | 380x |" in md  # the newest N=3800 cpu record
    assert "700" not in md
    assert "| select | N=3800 V=3500 R=128 B=1 | topk_sort_index (baseline) | 0.150 |" in md
    assert "|  |  | cpu | 0.300 | 0.030 | 5.70 | 0.500x |" in md
    assert "- not measured: triton (scores): not timed" in md
    lines = md.splitlines()
    assert lines.index("| scores | N=1024 V=724 R=32 | eager (baseline) | 105 | 10.5 | 1.54 | 1.00x |") < \
        lines.index("| select | N=3800 V=3500 R=128 B=1 | topk_sort_index (baseline) | 0.150 | 0.015 | 5.70 | 1.00x |")
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size[0] > 100 and im.size[1] > 100
        assert len(im.convert("L").getcolors(maxcolors=100_000) or []) > 10  # something was drawn


def test_report_errors(tmp_path):
    with pytest.raises(ValueError, match="paths"):
        bench.report([str(tmp_path / "missing.jsonl")])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"op": "scores"}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1.*missing fields"):
        bench.report([str(bad)])


def test_bad_arguments(tmp_path):
    out = tmp_path / "never.jsonl"
    with pytest.raises(ValueError, match="op must be 'all' or one of"):
        bench.run("sores", device="cpu", out=str(out))
    with pytest.raises(ValueError, match="device must be"):
        bench.run("scores", device="tpu", out=str(out))
    with pytest.raises(ValueError, match="device must be"):
        bench.cases("scores", device=3.5)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device='cuda'"):
            bench.run("scores", device="cuda", out=str(out))
    assert not out.exists()


def test_generate_cases():
    if importlib.util.find_spec("dvtp.bench.generate") is None:
        with pytest.raises(ValueError, match="dvtp.bench.generate"):
            bench.cases("generate", device="cpu", quick=True)
    else:
        found = bench.cases("generate", device="cpu", quick=True)
        assert found and all(c.op == "generate" and isinstance(c, harness.Case) for c in found)

