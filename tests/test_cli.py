"""The ``dvtp`` command line: every command once in a fresh process (``python -m dvtp``,
quick modes, the tiny model), the cheap checks (help, usage errors, exit codes, the
report) in-process with click's CliRunner.

Subprocesses run without TRITON_INTERPRET (as a user's shell on a CPU machine would), so
Triton is reported unusable on CPU rather than run in its slow interpreter.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import dvtp
from dvtp.cli import main
from dvtp.visualize import GAP, HEADER_HEIGHT, MARGIN, TITLE_HEIGHT
from dvtp.vlm.images import synthetic_photo
from dvtp_kernels import BACKENDS, _extension, dispatch

REPO = Path(__file__).resolve().parents[1]
COMMANDS = ("info", "selftest", "demo", "answer", "visualize", "bench")
EXTENSION = _extension.load() is None
# A 384x384 image has 1485 visual tokens: base view 27x27 + a 1x1 grid 27x27 + 27 newlines.
SMALL = dict(visual=1485, base=729, grid=729, newline=27)
FAST = ["--gen-length", "8", "--steps", "4"]


def dvtp_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    # one torch thread each: up to three of these run at once on the test machine's cores
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "DVTP_BACKEND")}
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.run([sys.executable, "-m", "dvtp", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def ok_json(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    return json.loads(proc.stdout)


def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


# ---------------------------------------------------------------------------------------
# each command in a fresh process
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every command's subprocess, started together (three at a time: most of each is
    importing torch and transformers, which overlaps well); a test waits for its own."""
    tmp = tmp_path_factory.mktemp("cli")
    photo, grey, kept = tmp / "photo.png", tmp / "grey.png", tmp / "kept.png"
    Image.fromarray(synthetic_photo(384, 384, seed=1)).save(photo)
    Image.fromarray(np.random.default_rng(5).integers(0, 256, (384, 384), dtype=np.uint8)).save(grey)
    results = REPO / "benchmarks" / "results"
    results_before = sorted(p.name for p in results.glob("*")) if results.is_dir() else []
    commands = {  # the slowest first
        "answer": ["answer", "--model", "tiny", "--device", "cpu", "--image", str(photo), "--question",
                   "What is in the picture?", "--keep-ratio", "0.25", *FAST, "--no-stop", "--compare",
                   "--repeats", "1", "--json"],
        "selftest": ["selftest", "--quick", "--json"],
        "demo": ["demo", "--image", "synthetic:384x384", "--keep", "0.5", *FAST, "--block-length", "8",
                 "--repeats", "1", "--threads", "1", "--json"],
        "visualize": ["visualize", "--model", "tiny", "--device", "cpu", "--image", str(grey), "--question",
                      "What is this?", "--keep-ratio", "0.3", "--out", str(kept), "--panel", "486", *FAST, "--json"],
        "bench": ["bench", "--op", "select", "--quick", "--json"],
        "info": ["info", "--json"],
    }
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = {name: pool.submit(dvtp_cli, *args) for name, args in commands.items()}
        yield SimpleNamespace(photo=photo, kept=kept, results=results, results_before=results_before,
                              done=lambda name: futures[name].result())


def test_info_json(runs):
    doc = ok_json(runs.done("info"))
    assert doc["versions"]["dvtp"] == dvtp.__version__
    assert doc["versions"]["torch"] == torch.__version__
    assert doc["extension"]["loaded"] is EXTENSION
    cpu = doc["devices"]["cpu"]
    assert cpu["available"] is True and cpu["default_order"] == list(dispatch.DEFAULT_ORDER["cpu"])
    assert set(cpu["backends"]) == set(BACKENDS)
    for entry in cpu["backends"].values():
        assert isinstance(entry["usable"], bool) and entry["usable"] == (not entry["reasons"])
        assert all(isinstance(r, str) and r for r in entry["reasons"])
    assert cpu["backends"]["reference"]["usable"] and cpu["backends"]["cpu"]["usable"] is EXTENSION
    assert any("TRITON_INTERPRET" in r for r in cpu["backends"]["triton"]["reasons"])
    assert cpu["default"] == ("cpu" if EXTENSION else "reference")
    assert doc["devices"]["cuda"]["available"] is torch.cuda.is_available()


def test_selftest_quick_passes_on_cpu(runs):
    proc = runs.done("selftest")
    doc = json.loads(proc.stdout)
    if not EXTENSION:  # only the reference could run: nothing was checked, which fails
        assert proc.returncode == 1 and "no backend other than the reference" in proc.stderr
        return
    assert proc.returncode == 0, proc.stderr
    assert doc["ok"] is True and doc["device"] == "cpu"
    assert {r["op"] for r in doc["results"]} == {*dispatch.OPS, "generate"}
    assert {r["backend"] for r in doc["results"]} == {"reference", "cpu"}
    assert "TRITON_INTERPRET" in doc["unusable"]["triton"]
    for r in doc["results"]:
        assert set(r) == {"op", "backend", "dtype", "case", "worst_error", "tolerance", "passed", "detail"}
        assert r["passed"] is True and r["detail"] == ""
        assert 0.0 <= r["worst_error"] <= r["tolerance"]


def test_demo_json(runs):
    doc = ok_json(runs.done("demo"))
    unpruned, pruned = doc["settings"]
    assert (unpruned["name"], unpruned["keep_ratio"], unpruned["kept_tokens"]) == ("unpruned", None, None)
    assert (pruned["name"], pruned["keep_ratio"], pruned["kept_tokens"]) == ("keep 0.5", 0.5, 742)
    assert unpruned["visual_tokens"] == pruned["visual_tokens"] == SMALL["visual"]
    assert unpruned["speedup"] == 1.0 and len(pruned["times"]) == 1 and pruned["median"] > 0
    lens = pruned["tokens_per_step"]
    assert len(lens) == 4 and lens[0] - lens[-1] == SMALL["visual"] - 742
    assert set(unpruned["tokens_per_step"]) == {lens[0]}


def test_answer_json_with_compare(runs):
    doc = ok_json(runs.done("answer"))
    assert isinstance(doc["answer"], str) and doc["images"] == [str(runs.photo)]
    assert doc["pruning"] == {"keep_ratio": 0.25, "policy": "redvtp", "backend": None}
    assert doc["generation"] == {"gen_length": 8, "steps": 4, "block_length": 8, "temperature": 0.0,
                                 "cache": None, "refresh": "block", "threshold": None, "factor": None, "stop": False,
                                 "seed": None}
    kept = int(SMALL["visual"] * 0.25)
    assert (doc["visual_tokens"], doc["kept_tokens"]) == (SMALL["visual"], kept)
    (views,) = doc["views"]
    assert [(v["name"], v["total"]) for v in views] == [("base", 729), ("grid", 729), ("newline", 27)]
    assert sum(v["kept"] for v in views) == kept
    lens = doc["tokens_per_step"]
    assert len(lens) == 4 and lens[0] - lens[-1] == SMALL["visual"] - kept
    assert set(doc["timings"]) == {"preprocess", "vision", "generate", "total"}
    assert set(doc["backends"]) == set(dispatch.OPS)
    c = doc["compare"]
    assert c["repeats"] == 1 and isinstance(c["same_tokens"], bool)
    assert set(c["unpruned_tokens_per_step"]) == {lens[0]}
    for key in ("speedup", "speedup_total"):
        assert math.isfinite(c[key]) and c[key] > 0
    assert set(c["seconds"]) == {"unpruned", "pruned"}
    assert c["speedup"] == pytest.approx(c["seconds"]["unpruned"]["generate"]["median"]
                                         / c["seconds"]["pruned"]["generate"]["median"])


def test_visualize_png_dims_the_pruned_fraction(runs):
    """A grey-noise 384x384 image: its base view and 1x1 grid are both 27x27 cells, which
    at --panel 486 are exactly 18x18 pixels, so each panel's dimmed area (grey pixels: kept
    ones are tinted) is exactly 324 pixels per pruned token of its view."""
    doc = ok_json(runs.done("visualize"))
    assert doc["out"] == str(runs.kept)
    picture = np.asarray(Image.open(runs.kept).convert("RGB")).astype(np.int64)
    # figure_size: 2 margins + 2 panels + a gap + the colour bar; margins, header, titles, panel
    assert doc["size"] == [1092, 558] and picture.shape == (558, 1092, 3)
    views = {v["name"]: v for v in doc["views"][0]}  # one list of views per image
    assert doc["kept_tokens"] == int(SMALL["visual"] * 0.3) == sum(v["kept"] for v in doc["views"][0])
    top = MARGIN + HEADER_HEIGHT + TITLE_HEIGHT
    for i, name in enumerate(("base", "grid")):
        left = MARGIN + i * (486 + GAP)
        panel = picture[top : top + 486, left : left + 486]
        grey = (panel[..., 0] == panel[..., 1]) & (panel[..., 1] == panel[..., 2])
        pruned = views[name]["total"] - views[name]["kept"]
        assert views[name]["total"] == 729 and 0 < pruned < 729
        assert int(grey.sum()) == pruned * 18 * 18
    assert views["newline"]["total"] == 27


def test_bench_quick_json(runs):
    doc = ok_json(runs.done("bench"))
    assert doc["out"] is None  # --quick saves nothing unless --out is given
    after = sorted(p.name for p in runs.results.glob("*")) if runs.results.is_dir() else []
    assert after == runs.results_before
    records = doc["records"]
    fields = {"op", "case", "shape", "backend", "device", "device_name", "median_ms", "iqr_ms", "peak_mib",
              "ratio", "baseline", "extra", "env"}
    assert records and all(set(r) == fields for r in records)
    assert {r["op"] for r in records} == {"select"} and {r["device"] for r in records} == {"cpu"}
    for case in {r["case"] for r in records}:
        rows = [r for r in records if r["case"] == case]
        assert [r["ratio"] for r in rows if r["backend"] == r["baseline"]] == [1.0]
        assert all(r["median_ms"] > 0 for r in rows)


# ---------------------------------------------------------------------------------------
# in-process: help, usage errors, failures, the report
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", COMMANDS)
def test_help(command):
    result = invoke(command, "--help")
    assert result.exit_code == 0 and "Usage: " in result.output
    assert "--quiet" in result.output and "--debug" in result.output


@pytest.mark.parametrize("args,message", [
    (["answer", "--model", "tiny", "--question", "q", "--compare"], "--compare"),
    (["answer", "--model", "tiny", "--question", "q", "--image", "/no/such/photo.png"], "no such file"),
    (["answer", "--model", "/no/such/folder", "--question", "q"], "not a folder"),
    (["answer", "--model", "tiny", "--question", "q", "--gen-length", "8", "--block-length", "3"], "--block-length 3"),
    (["answer", "--model", "tiny", "--question", "q", "--image", "synthetic:0x5"], "synthetic:WxH"),
    (["answer", "--model", "tiny"], "--question"),
    (["answer", "--model", "tiny", "--question", "q", "--cache", "prefix", "--refresh", "0"], "--refresh"),
    (["answer", "--model", "tiny", "--question", "q", "--refresh", "2"], "needs a cache"),
    (["answer", "--model", "tiny", "--question", "q", "--threshold", "0"], "--threshold"),
    (["visualize", "--model", "tiny", "--image", "synthetic", "--question", "q", "--keep-ratio", "1.5"],
     "--keep-ratio"),
    (["visualize", "--model", "tiny", "--image", "synthetic", "--question", "q", "--keep-ratio", "0.5",
      "--out", "/no/such/folder/kept.png"], "does not exist"),
    (["visualize", "--model", "tiny", "--image", "synthetic", "--question", "q", "--keep-ratio", "0.5",
      "--cmap", "no-such-map"], "cmap"),
    (["selftest", "--device", "tpu"], "--device"),
    (["selftest", "--backend", "nope"], "--backend"),
    (["bench", "--report", "--quick"], "--report"),
    (["bench", "--op", "nope"], "--op"),
])
def test_usage_errors_exit_2(args, message):
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr and "Error" in result.stderr
    assert "Traceback" not in result.output and result.stdout == ""


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_missing_cuda_is_a_usage_error():
    result = invoke("answer", "--model", "tiny", "--question", "q", "--device", "cuda")
    assert result.exit_code == 2 and dispatch.no_cuda_reason() in result.stderr


def test_failure_exits_1_with_the_traceback_only_under_debug(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("the model could not be built")

    monkeypatch.setattr("dvtp.cli.model.load_model", broken)
    args = ["answer", "--model", "tiny", "--question", "q"]
    plain = invoke(*args)
    assert plain.exit_code == 1
    assert "Error: RuntimeError: the model could not be built" in plain.stderr and "Traceback" not in plain.stderr
    debug = invoke(*args, "--debug")
    assert debug.exit_code == 1 and "Traceback" in debug.stderr


@pytest.mark.skipif(not EXTENSION, reason="needs the C++ extension (the backend made wrong here)")
def test_selftest_fails_when_a_backend_is_wrong(monkeypatch):
    real = dispatch.run

    def wrong(backend, op, **args):  # the cpu backend's selection returns its keep list reversed
        out = real(backend, op, **args)
        if backend == "cpu" and op == "select_visual_tokens":
            return out[0], out[1].flip(-1), out[2]
        return out

    monkeypatch.setattr(dispatch, "run", wrong)
    result = invoke("selftest", "--quick", "--backend", "cpu", "--json")
    assert result.exit_code == 1 and "selftest failed" in result.stderr
    doc = json.loads(result.stdout)
    failed = {(r["op"], r["backend"]) for r in doc["results"] if not r["passed"]}
    assert doc["ok"] is False and ("select_visual_tokens", "cpu") in failed
    # one document: the report with the error in it (docs/cli.md)
    assert doc["error"]["type"] == "failure" and doc["error"]["exit_code"] == 1
    assert doc["error"]["message"].startswith("selftest failed")
    assert failed <= {("select_visual_tokens", "cpu"), ("generate", "cpu")}
    assert all(r["passed"] for r in doc["results"] if r["op"] in ("accumulate_visual_scores", "gather_compact"))
    text = invoke("selftest", "--quick", "--backend", "cpu", "--quiet")  # the table lists the failed cases only
    assert text.exit_code == 1
    assert text.stdout.count("FAIL") == len(doc["results"]) - sum(r["passed"] for r in doc["results"])


def _record(case: str, backend: str, n: int, median: float, baseline: str, stamp: str) -> dict:
    return dict(op="select", case=case, shape={"N": n, "V": n // 2}, backend=backend, device="cpu",
                device_name="Test CPU", median_ms=median, iqr_ms=median / 10, peak_mib=1.5,
                ratio=None, baseline=baseline, extra={}, env={"threads": 2, "torch": "2.13.0", "timestamp": stamp})


def test_bench_report_from_records(tmp_path):
    records = tmp_path / "cpu.jsonl"
    rows = []
    for n, base_ms, cpu_ms in ((512, 2.0, 0.5), (2048, 9.0, 1.5)):
        for backend, ms in (("topk_sort_index", base_ms), ("cpu", cpu_ms)):
            r = _record(f"N={n}", backend, n, ms, "topk_sort_index", "2025-01-01T00:00:00+00:00")
            r["ratio"] = base_ms / ms
            rows.append(r)
    stale = dict(rows[1], median_ms=99.0, ratio=0.02, env=dict(rows[1]["env"], timestamp="2024-01-01T00:00:00+00:00"))
    records.write_text("\n".join(json.dumps(r) for r in [stale, *rows]) + "\n")
    png = tmp_path / "report.png"
    result = invoke("bench", "--report", "--records", str(records), "--png", str(png), "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["png"] == str(png) and Image.open(png).size[0] > 100
    md = doc["markdown"]
    assert "| select | N=512 | topk_sort_index (baseline) | 2.00 |" in md
    assert "| cpu | 0.500 |" in md and "4.00x" in md and "6.00x" in md
    assert "99" not in md  # the older record of the same case is not shown
    text = invoke("bench", "--report", "--records", str(records), "--png", str(png))
    assert text.exit_code == 0 and text.stdout == md


def test_python_m_dvtp_demo_is_the_demo_command():
    """``python -m dvtp demo`` is the demo command (the library module dvtp.demo never
    imports the command line, which imports it)."""
    proc = subprocess.run([sys.executable, "-m", "dvtp", "demo", "--help"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and "Usage: dvtp demo [OPTIONS]" in proc.stdout
