"""The ``dvtp`` command line's contract (docs/cli.md) beyond each command's happy path:
usage errors found before any model or benchmark runs, in one ``Error:`` line naming the
option; the ``--json`` error document; a start-up that imports neither torch nor
transformers for --help and usage errors; output paths checked first; honest reports;
user-folder benchmark results; batch mode; the docs against --help.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from dvtp.cli import _choices, main

REPO = Path(__file__).resolve().parents[1]
TINY = ["--model", "tiny", "--device", "cpu"]
FAST = ["--gen-length", "4", "--steps", "2"]


def invoke(*args: str, env: dict | None = None):
    return CliRunner().invoke(main, list(args), env=env)


def dvtp_cli(*args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "DVTP_BACKEND")}
    base["OMP_NUM_THREADS"] = "1"
    return subprocess.run([sys.executable, *args], cwd=REPO, env={**base, **(env or {})}, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture
def no_model(monkeypatch):
    """Any model load or benchmark run fails the test: usage errors come first."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded or a benchmark run before the usage error")

    monkeypatch.setattr("dvtp.cli.model.load_model", refuse)
    monkeypatch.setattr("dvtp.bench.run", refuse)
    monkeypatch.setattr("dvtp.bench.report", refuse)


def save_photo(path: Path, width: int, height: int, seed: int = 0) -> Path:
    from dvtp.vlm.images import synthetic_photo

    photo = synthetic_photo(width, height, seed=seed)
    (photo if isinstance(photo, Image.Image) else Image.fromarray(np.asarray(photo))).save(path)
    return path


def one_error_line(result, option: str) -> str:
    """The usage error's whole stderr: one ``Error: ...`` line naming ``option``."""
    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert option in lines[0], lines[0]
    assert result.stdout == ""
    return lines[0]


# ---------------------------------------------------------------------------------------
# choice lists (torch-free copies) equal the library's
# ---------------------------------------------------------------------------------------


def test_choice_lists_equal_the_librarys():
    from dvtp import bench
    from dvtp.generation.request import CACHE_MODES
    from dvtp.policies import available_policies
    from dvtp_kernels.dispatch import BACKENDS

    assert _choices.BACKENDS == BACKENDS
    assert list(_choices.POLICIES) == available_policies()
    assert _choices.CACHE_MODES == tuple(m for m in CACHE_MODES if m is not None)
    assert _choices.BENCH_OPS == (*bench.OPS, "all")


# ---------------------------------------------------------------------------------------
# start-up: no torch, no transformers for --help and usage errors
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("args", [
    ["--help"],
    ["answer", "--help"],
    ["answer", "--model", "tiny", "--question", "q", "--image", "/no/such/photo.png"],  # missing image
    ["answer", "--model", "tiny", "--question", "q", "--keep-ratio", "nan"],  # bad option value
    ["answer", "--model", "tiny", "--question", "q", "--no-such-option"],
    ["answer", "--model", "tiny", "--question", "q", "--policy", "random"],  # an option that would be ignored
    ["visualize", "--model", "tiny", "--image", "synthetic", "--question", "q", "--keep-ratio", "0.5",
     "--out", "/proc/kept.png"],
    ["selftest", "--backend", "bogus"],
    ["bench", "--report", "--png", "/proc/report.png"],
])
def test_help_and_usage_errors_import_neither_torch_nor_transformers(args):
    proc = dvtp_cli("-X", "importtime", "-m", "dvtp", *args, timeout=120)
    assert proc.returncode == (0 if "--help" in args else 2), proc.stderr
    imported = {line.rsplit("|", 1)[1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert imported, "no -X importtime output"
    assert not {"torch", "transformers", "dvtp_kernels"} & imported


# ---------------------------------------------------------------------------------------
# usage errors: before any model, one line naming the option
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("args,option,words", [
    # item 7: accepted but wrong
    (["--question", "   "], "--question", "empty"),
    (["--question", ""], "--question", "empty"),
    (["--question", "q", "--temperature", "inf"], "--temperature", "finite"),
    (["--question", "q", "--temperature", "nan"], "--temperature", "finite"),
    (["--question", "q", "--policy", "random"], "--policy", "--keep-ratio"),
    (["--question", "q", "--policy", "uniform"], "--policy", "--keep-ratio"),
    (["--question", "q", "--backend", "reference"], "--backend", "--keep-ratio"),
    (["--question", "q", "--keep-ratio", "0.5", "--repeats", "2"], "--repeats", "--compare"),
    (["--question", "q", "--seed", "3"], "--seed", "--temperature"),
    # item 8: messages name options, not API fields
    (["--question", "q", "--keep-ratio", "nan"], "--keep-ratio", "finite"),
    (["--question", "q", "--gen-length", "7", "--block-length", "4"], "--gen-length 7", "--block-length 4"),
    (["--question", "q", "--refresh", "3"], "--refresh 3", "--cache"),
    (["--question", "q", "--gen-length", "1", "--keep-ratio", "0.5"], "--keep-ratio", "--steps 1"),
    (["--question", "q", "--gen-length", "8", "--steps", "1", "--keep-ratio", "0.5"], "--keep-ratio", "--steps 1"),
    (["--question", "q", "--steps", "9", "--gen-length", "8"], "--steps 9", "--gen-length 8"),
    # click's own errors, one line too
    (["--question", "q", "--keep-ratio", "1.5"], "--keep-ratio", "1.5"),
    (["--question", "q", "--no-such-option"], "--no-such-option", "No such option"),
    ([], "--question", "Missing"),
])
def test_answer_usage_errors(no_model, args, option, words):
    line = one_error_line(invoke("answer", *TINY, *args), option)
    assert words in line
    assert "PruningConfig" not in line and "gen_length=" not in line and "prune_step" not in line


def test_selftest_backend_is_a_choice(no_model):
    line = one_error_line(invoke("selftest", "--backend", "bogus"), "--backend")
    assert "reference" in line and "unknown names" not in line


def test_demo_usage_errors(no_model):
    one_error_line(invoke("demo", "--question", " "), "--question")
    one_error_line(invoke("demo", "--keep", "nan"), "--keep")
    one_error_line(invoke("demo", "--gen-length", "8", "--block-length", "8", "--steps", "16"), "--steps 16")


# ---------------------------------------------------------------------------------------
# output paths checked first (item 3)
# ---------------------------------------------------------------------------------------

VISUALIZE = ["visualize", *TINY, "--image", "synthetic", "--question", "q", "--keep-ratio", "0.5"]


def test_output_paths_are_checked_before_anything_runs(no_model, tmp_path):
    for bad, why in (("/proc/kept.png", "cannot write"), (str(tmp_path), "folder"),
                     (str(tmp_path / "no" / "kept.png"), "does not exist"),
                     (str(tmp_path / "kept.nosuchext"), "extension"), (str(tmp_path / "kept"), "extension")):
        line = one_error_line(invoke(*VISUALIZE, "--out", bad), "--out")
        assert why in line, line
    line = one_error_line(invoke("bench", "--op", "select", "--quick", "--out", "/proc/cpu.jsonl"), "--out")
    assert "cannot write" in line
    one_error_line(invoke("bench", "--out", str(tmp_path)), "--out")
    records = tmp_path / "cpu.jsonl"
    records.write_text("")
    for bad in ("/proc/report.png", str(tmp_path / "report.nosuchext"), str(tmp_path / "no" / "report.png")):
        one_error_line(invoke("bench", "--report", "--records", str(records), "--png", bad), "--png")
    one_error_line(invoke("bench", "--report", "--records", str(tmp_path / "none.jsonl")), "--records")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cpu.jsonl"]  # the write checks left nothing


# ---------------------------------------------------------------------------------------
# --json errors (item 9)
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("args,option", [
    (["answer", *TINY, "--question", "q", "--keep-ratio", "2", "--json"], "--keep-ratio"),  # click's check
    (["answer", *TINY, "--json"], "--question"),  # a missing option
    (["answer", "--json", "--question", "q"], "--model"),  # click's missing required option
    (["answer", *TINY, "--question", "q", "--gen-length", "7", "--block-length", "4", "--json"], "--gen-length"),
    (["answer", *TINY, "--question", "q", "--image", "/no/such.png", "--json"], "--image"),
    ([*VISUALIZE, "--out", "/proc/kept.png", "--json"], "--out"),
    (["selftest", "--backend", "bogus", "--json"], "--backend"),
])
def test_json_usage_error_document(no_model, args, option):
    result = invoke(*args)
    assert result.exit_code == 2
    doc = json.loads(result.stdout)
    assert set(doc) == {"error"}
    error = doc["error"]
    assert (error["type"], error["option"], error["exit_code"]) == ("usage", option, 2)
    assert error["message"] and result.stderr == f"Error: {error['message']}\n"


def test_json_failure_document(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("the model could not be built")

    monkeypatch.setattr("dvtp.cli.model.load_model", broken)
    result = invoke("answer", *TINY, "--question", "q", "--json")
    assert result.exit_code == 1
    error = json.loads(result.stdout)["error"]
    assert error["type"] == "failure" and error["exit_code"] == 1 and error["option"] is None
    assert "RuntimeError: the model could not be built" in error["message"]


def test_usage_error_is_one_line_from_a_subprocess():
    proc = dvtp_cli("-m", "dvtp", "answer", "--model", "tiny", "--question", "q", "--bogus", timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == "Error: No such option '--bogus'.\n"


# ---------------------------------------------------------------------------------------
# transformers' progress bars (item 2)
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("quiet", [False, True])
def test_loading_a_checkpoint_prints_no_transformers_bar(tmp_path_factory, quiet):
    """stderr is a pipe here (not a terminal): no "Loading weights" bar, quiet or not."""
    from dvtp.checkpoint import save_llada_v
    from dvtp.vlm import tiny_llada_v

    folder = tmp_path_factory.mktemp("tiny_checkpoint")
    save_llada_v(tiny_llada_v(seed=0), folder, max_shard_size="300KB")
    proc = dvtp_cli("-m", "dvtp", "answer", "--model", str(folder), "--device", "cpu", "--question", "q",
                    "--gen-length", "2", "--steps", "2", *(["--quiet"] if quiet else []))
    assert proc.returncode == 0, proc.stderr
    assert "Loading weights" not in proc.stderr and "it/s]" not in proc.stderr and "%|" not in proc.stderr


# ---------------------------------------------------------------------------------------
# true reports (item 10)
# ---------------------------------------------------------------------------------------


def test_cached_run_reports_sequence_and_forwards_and_the_real_dtype():
    args = ["answer", *TINY, "--image", "synthetic:384x384", "--question", "q", "--keep-ratio", "0.25",
            "--gen-length", "8", "--steps", "4", "--cache", "prefix", "--no-stop"]
    doc = json.loads(invoke(*args, "--json").stdout)
    assert doc["dtype"] == "float32" and doc["dtype_requested"] == "auto"
    seq, fw = doc["sequence_length"], doc["forwards"]
    kept = int(1485 * 0.25)
    assert seq["before"] - seq["after"] == 1485 - kept and doc["pruned_after_step"] == 1
    assert fw["total"] == 4 and fw["full"] + fw["cached"] == 4 and fw["cached"] >= 1
    assert all(n < seq["after"] for n in fw["cached_tokens"])  # a cached step runs only its active tokens
    text = invoke(*args).stdout
    assert "tokens per step" not in text
    assert f"sequence: {seq['before']} tokens, {seq['after']} after pruning at step 1; 4 forwards" in text
    assert "(float32)" in text


def test_compare_reports_spread_and_machine_load():
    args = ["answer", *TINY, "--image", "synthetic:384x384", "--question", "q", "--keep-ratio", "0.5", *FAST,
            "--no-stop", "--compare", "--repeats", "2"]
    result = invoke(*args, "--json")
    assert result.exit_code == 0, result.output
    c = json.loads(result.stdout)["compare"]
    for setting in ("unpruned", "pruned"):
        for key in ("generate", "total"):
            s = c["seconds"][setting][key]
            assert len(s["runs"]) == 2 and s["min"] <= s["q1"] <= s["median"] <= s["q3"] <= s["max"]
    machine = c["machine"]
    assert machine["others_cpu_cores"] is None or machine["others_cpu_cores"] >= 0
    assert machine["cpu_count"] == os.cpu_count()
    text = invoke(*args).stdout
    assert re.search(r"generate \d+\.\d\ds \[\d+\.\d\d-\d+\.\d\d\] unpruned", text), text
    assert "machine during the runs:" in text


# ---------------------------------------------------------------------------------------
# benchmark results in a user folder (item 11)
# ---------------------------------------------------------------------------------------


def test_results_dir_is_a_user_folder(monkeypatch, tmp_path):
    from dvtp.bench import harness

    monkeypatch.delenv("DVTP_RESULTS_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert harness.results_dir() == str(tmp_path / "xdg" / "dvtp" / "bench")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert harness.results_dir() == str(tmp_path / "home" / ".cache" / "dvtp" / "bench")
    monkeypatch.setenv("DVTP_RESULTS_DIR", str(tmp_path / "mine"))
    assert harness.results_dir() == str(tmp_path / "mine")
    assert harness.results_path("cpu") == str(tmp_path / "mine" / "cpu.jsonl")
    assert harness.repository_results_dir() == str(REPO / "benchmarks" / "results")


def test_bench_writes_into_the_repository_only_when_asked(monkeypatch, tmp_path):
    committed = REPO / "benchmarks" / "results"
    before = {p.name: p.stat().st_mtime_ns for p in committed.iterdir()}
    monkeypatch.setenv("DVTP_RESULTS_DIR", str(tmp_path / "user"))
    seen = {}

    def fake_run(op, *, device, quick, out, progress):
        seen["out"] = out
        return []

    monkeypatch.setattr("dvtp.bench.run", fake_run)
    assert invoke("bench", "--op", "select").exit_code == 0
    assert seen["out"] == str(tmp_path / "user" / "cpu.jsonl")
    # --report without --records: the user folder's records, which do not exist yet
    result = invoke("bench", "--report")
    line = one_error_line(result, "--records")
    assert "no benchmark records" in line and "benchmarks/results/cpu.jsonl" in line
    records = tmp_path / "user" / "cpu.jsonl"
    records.write_text((committed / "cpu.jsonl").read_text())
    result = invoke("bench", "--report", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["png"] == str(tmp_path / "user" / "report.png")
    assert (tmp_path / "user" / "report.png").is_file()
    assert {p.name: p.stat().st_mtime_ns for p in committed.iterdir()} == before


# ---------------------------------------------------------------------------------------
# batch mode (item 19)
# ---------------------------------------------------------------------------------------


def write_items(path: Path, items: list) -> Path:
    path.write_text("".join((json.dumps(i) if not isinstance(i, str) else i) + "\n" for i in items))
    return path


def test_batch_answers_equal_single_runs(tmp_path):
    save_photo(tmp_path / "wide.png", 512, 300, seed=1)
    save_photo(tmp_path / "tall.png", 300, 420, seed=2)
    items = [{"image": "wide.png", "question": "What is it?", "id": "a"},
             {"image": None, "question": "Say hi.", "id": 7},
             {"image": [str(tmp_path / "tall.png")], "question": "Which colours?"}]
    source = write_items(tmp_path / "items.jsonl", items[:1] + [""] + items[1:])  # a blank line is skipped
    common = [*TINY, "--keep-ratio", "0.5", "--gen-length", "8", "--steps", "4"]
    out = tmp_path / "answers.jsonl"
    result = invoke("answer", *common, "--input", str(source), "--batch-size", "2", "--output", str(out))
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(d["id"], d["line"]) for d in lines] == [("a", 1), (7, 3), (None, 4)]
    assert [d["images"] for d in lines] == [["wide.png"], [], [str(tmp_path / "tall.png")]]
    for item, d in zip(items, lines):
        single = ["answer", *common, "--question", item["question"], "--json"]
        image = item["image"]
        for spec in [] if image is None else [image] if isinstance(image, str) else image:
            single += ["--image", str(tmp_path / spec)]
        alone = json.loads(invoke(*single).stdout)
        assert d["answer"] == alone["answer"] and d["question"] == item["question"]
        assert (d["visual_tokens"], d["kept_tokens"]) == (alone["visual_tokens"], alone["kept_tokens"])
        assert d["sequence_length"] == alone["sequence_length"]
    assert lines[1]["visual_tokens"] == 0 and lines[1]["kept_tokens"] is None
    assert lines[0]["visual_tokens"] != lines[2]["visual_tokens"]  # different sizes, different token counts


@pytest.mark.parametrize("items,words", [
    ([{"question": "q"}, {"image": "missing.png", "question": "q"}], "line 2: image"),
    ([{"question": "q"}, {"question": "  "}], "line 2: \"question\" must be a non-empty string"),
    ([{"question": "q", "image": "notes.txt"}], "line 1: image"),
    (["{not json"], "line 1: not JSON"),
    ([{"question": "q", "images": ["a.png"]}], "line 1: unknown keys ['images']"),
    ([{"question": "q", "image": 3}], "line 1: \"image\" must be"),
    ([[1, 2]], "line 1: expected an object"),
    ([""], "no items"),
])
def test_batch_input_is_checked_line_by_line_before_the_model(no_model, tmp_path, items, words):
    (tmp_path / "notes.txt").write_text("not a picture")
    source = write_items(tmp_path / "items.jsonl", items)
    line = one_error_line(invoke("answer", *TINY, "--input", str(source)), "--input")
    assert words in line


def test_batch_option_combinations(no_model, tmp_path):
    source = write_items(tmp_path / "items.jsonl", [{"question": "q"}])
    for extra, option in ((["--question", "q"], "--question"), (["--image", "synthetic"], "--image"),
                          (["--compare", "--keep-ratio", "0.5"], "--compare"),
                          (["--output", "/proc/answers.jsonl"], "--output"), (["--output", str(tmp_path)], "--output")):
        one_error_line(invoke("answer", *TINY, "--input", str(source), *extra), option)
    result = invoke("answer", *TINY, "--input", str(source), "--json")  # the answers are JSON Lines already
    assert result.exit_code == 2 and json.loads(result.stdout)["error"]["option"] == "--json"
    one_error_line(invoke("answer", *TINY, "--question", "q", "--batch-size", "2"), "--batch-size")
    one_error_line(invoke("answer", *TINY, "--question", "q", "--output", str(tmp_path / "a.jsonl")), "--output")
    one_error_line(invoke("answer", *TINY, "--input", str(tmp_path / "none.jsonl")), "--input")


# ---------------------------------------------------------------------------------------
# docs/cli.md against --help (item 17)
# ---------------------------------------------------------------------------------------


def test_docs_name_every_option_of_every_command():
    """Each command's section of docs/cli.md names every option its --help lists."""
    docs = (REPO / "docs" / "cli.md").read_text()
    sections = dict(re.findall(r"^## `dvtp (\w+)[^`]*`\n(.*?)(?=^## |\Z)", docs, flags=re.M | re.S))
    missing = {}
    for name, command in main.commands.items():
        assert name in sections, f"docs/cli.md has no section for dvtp {name}"
        for param in command.params:
            if isinstance(param, click.Option):
                for opt in param.opts + param.secondary_opts:
                    common = ("--help", "--quiet", "--debug")  # in the conventions, for every command
                    if opt.startswith("--") and opt not in common and opt not in sections[name]:
                        missing.setdefault(name, []).append(opt)
    assert not missing, f"options missing from docs/cli.md: {missing}"
    assert '"error": {' in docs and '"exit_code"' in docs
