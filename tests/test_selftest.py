"""dvtp.selftest: the quick self-test passes on this machine's backends, a wrong backend
fails exactly its own cases, and bad arguments are refused before any case runs."""
import json

import pytest
import torch

from dvtp import selftest
from dvtp_kernels import dispatch

KERNEL_OPS = ("accumulate_visual_scores", "select_visual_tokens", "gather_compact")


def usable_on_cpu():
    return [b for b in ("reference", "cpu", "triton") if not selftest._unusable_reasons(b, torch.device("cpu"))]


@pytest.fixture(scope="module")
def quick_report():
    calls = []
    report = selftest.run("cpu", quick=True, progress=lambda done, total, label: calls.append((done, total, label)))
    return report, calls


def test_quick_run_passes_and_covers_every_op_and_backend(quick_report):
    report, calls = quick_report
    failed = [r for r in report.results if not r.passed]
    assert not failed, failed
    assert report.ok
    expected = usable_on_cpu()
    # `make test` builds the extension and sets TRITON_INTERPRET=1 (tests/conftest.py)
    assert {"reference", "cpu", "triton"} <= set(expected), report.unusable
    for backend in expected:
        ran = {r.op for r in report.results if r.backend == backend}
        assert ran == set(selftest.CHECKED_OPS), (backend, ran)
        dtypes = {r.dtype for r in report.results if r.backend == backend and r.op == "accumulate_visual_scores"}
        assert dtypes == {"float32", "float16", "bfloat16"}
    assert "cuda" in report.unusable and report.unusable["cuda"]
    assert not any(r.backend == "cuda" for r in report.results)
    # progress after every case, in order, with the total known from the start
    total = len(report.results)
    assert [c[0] for c in calls] == list(range(1, total + 1)) and {c[1] for c in calls} == {total}
    assert all(isinstance(c[2], str) and c[2] for c in calls)


def test_to_json_round_trips(quick_report):
    report, _ = quick_report
    data = json.loads(json.dumps(report.to_json(), allow_nan=False))
    assert data["ok"] is True and data["device"] == "cpu"
    assert len(data["results"]) == len(report.results)
    fields = {"op", "backend", "dtype", "case", "worst_error", "tolerance", "passed", "detail"}
    assert all(r.keys() == fields for r in data["results"])
    assert data["unusable"] == report.unusable


def test_to_json_writes_non_finite_errors_as_strings():
    bad = selftest.CaseResult("gather_compact", "cpu", "int64", "x", float("inf"), float("nan"), False, "boom")
    report = selftest.SelftestReport("cpu", [bad], {}, 0.1)
    data = json.loads(json.dumps(report.to_json(), allow_nan=False))
    assert data["results"][0]["worst_error"] == "inf" and data["results"][0]["tolerance"] == "nan"
    assert data["ok"] is False


def _patch_backend(monkeypatch, backend, op, wrap):
    """Replace what `dispatch.run` does for one (backend, op): every op call goes through it."""
    original = dispatch.run

    def patched(name, op_name, **args):
        if name == backend and op_name == op:
            return wrap(original, name, op_name, **args)
        return original(name, op_name, **args)

    monkeypatch.setattr(dispatch, "run", patched)


def _require_cpu_backend():
    reasons = selftest._unusable_reasons("cpu", torch.device("cpu"))
    if reasons:
        pytest.skip("the cpu backend is not usable here: " + "; ".join(reasons))


def test_wrong_scores_fail_only_their_cases(monkeypatch):
    _require_cpu_backend()

    def off_by_1e3(original, name, op, **args):
        original(name, op, **args)
        args["scores"].add_(1e-3)  # every entry one thousandth too large (NaN stays NaN)

    _patch_backend(monkeypatch, "cpu", "accumulate_visual_scores", off_by_1e3)
    report = selftest.run("cpu", quick=True, backends=["cpu"])
    assert not report.ok
    failed = [r for r in report.results if not r.passed]
    assert failed and all(r.op == "accumulate_visual_scores" for r in failed)
    # float32 is judged at float32 accuracy: every float32 case sees the error
    f32 = [r for r in report.results if (r.op, r.dtype) == ("accumulate_visual_scores", "float32")]
    assert f32 and all(not r.passed and r.worst_error >= 9e-4 for r in f32)
    others = [r for r in report.results if r.op != "accumulate_visual_scores"]
    assert {r.op for r in others} == {"select_visual_tokens", "gather_compact", "generate"}
    assert all(r.passed for r in others)


def test_wrong_selection_fails_only_its_cases(monkeypatch):
    _require_cpu_backend()

    def shifted(original, name, op, **args):
        gather_index, keep_index, nan_item = original(name, op, **args)
        # the first kept token of each item swapped for its neighbour
        keep_index = keep_index.clone()
        keep_index[:, 0] = torch.where(keep_index[:, 0] > 0, keep_index[:, 0] - 1, keep_index[:, 0] + 1)
        return gather_index, keep_index, nan_item

    _patch_backend(monkeypatch, "cpu", "select_visual_tokens", shifted)
    report = selftest.run("cpu", quick=True, backends=["cpu"])
    assert not report.ok
    failed = [r for r in report.results if not r.passed]
    assert any(r.op == "select_visual_tokens" for r in failed)
    assert all(r.op in ("select_visual_tokens", "generate") for r in failed)  # keep 1.0 reads keep_index too
    assert all("keep_index" in r.detail or r.op == "generate" for r in failed)
    assert all(r.passed for r in report.results if r.op in ("accumulate_visual_scores", "gather_compact"))


def test_an_exception_in_a_backend_is_a_failed_case(monkeypatch):
    _require_cpu_backend()

    def boom(original, name, op, **args):
        raise RuntimeError("gather kernel exploded")

    _patch_backend(monkeypatch, "cpu", "gather_compact", boom)
    report = selftest.run("cpu", quick=True, backends=["cpu"])
    failed = [r for r in report.results if not r.passed]
    gathers = [r for r in report.results if r.op == "gather_compact"]
    assert gathers and all(r in failed for r in gathers)
    assert all("RuntimeError: gather kernel exploded" in r.detail for r in gathers)
    assert all(r.passed for r in report.results if r.op in ("accumulate_visual_scores", "select_visual_tokens"))
    assert not report.ok


def test_ok_needs_a_non_reference_backend():
    on_reference = selftest.CaseResult("gather_compact", "reference", "int64", "x", 0.0, 0.0, True)
    on_cpu = selftest.CaseResult("gather_compact", "cpu", "int64", "x", 0.0, 0.0, True)
    assert not selftest.SelftestReport("cpu", [on_reference], {}, 0.1).ok
    assert selftest.SelftestReport("cpu", [on_reference, on_cpu], {}, 0.1).ok
    assert not selftest.SelftestReport("cpu", [], {}, 0.1).ok


def test_cases_are_seeded_from_the_seed():
    """The same seed gives the same inputs (the same errors), another seed fresh ones."""
    def errors(seed):
        plan = selftest._plan(torch.device("cpu"), ["reference"], True, seed)
        return [case.execute().worst_error for case in plan
                if case.op == "accumulate_visual_scores" and case.dtype == "float32"]

    first = errors(3)
    assert first == errors(3) and first != errors(4)


def test_a_requested_backend_that_cannot_run_fails_the_report():
    report = selftest.run("cpu", quick=True, backends=["cuda"])  # cuda kernels take CUDA tensors only
    assert report.results == [] and "cuda" in report.unusable
    assert "CUDA tensors" in report.unusable["cuda"] and not report.ok
    assert report.requested == ("cuda",)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(device="tpu"), ValueError, "device"),
        (dict(device="cuda:x"), ValueError, "device"),
        (dict(device=0), TypeError, "device"),
        (dict(backends=["cpu", "metal"]), ValueError, r"backends.*'metal'.*reference, cpu, triton, cuda"),
        (dict(backends="cpu"), TypeError, "backends"),
        (dict(backends=[]), ValueError, "backends"),
        (dict(backends=["cpu", "cpu"]), ValueError, "backends"),
        (dict(quick=1), TypeError, "quick"),
        (dict(seed=1.5), TypeError, "seed"),
        (dict(progress="bar"), TypeError, "progress"),
    ],
)
def test_bad_arguments_raise_before_any_case(kwargs, error, match, monkeypatch):
    def no_case(*args, **kw):
        raise AssertionError("a case ran")

    monkeypatch.setattr(selftest, "_plan", no_case)
    with pytest.raises(error, match=match):
        selftest.run(**kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_cuda_device_without_a_gpu_is_refused(monkeypatch):
    monkeypatch.setattr(selftest, "_plan", lambda *a: pytest.fail("a case ran"))
    with pytest.raises(ValueError, match="device='cuda'"):
        selftest.run("cuda")
