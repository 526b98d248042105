"""Backend choice, the reasons it gives, DVTP_BACKEND, and life without the extension."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import dvtp_kernels
from backends import REQUIRED
from dvtp_kernels import dispatch
from dvtp_kernels.validation import check_accumulate


def accumulate_args():
    q = torch.randn(1, 2, 10, 16)
    return check_accumulate(q, q, torch.zeros(1, 3, 4), 7, 2, 4, None, None, None)


def test_default_on_cpu_is_the_extension_never_triton(monkeypatch):
    monkeypatch.delenv("DVTP_BACKEND", raising=False)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    chosen = dispatch.choose("accumulate_visual_scores", accumulate_args())
    if "cpu" in REQUIRED:
        assert chosen == "cpu"
    assert chosen in ("cpu", "reference")


def test_env_var_overrides_the_default(monkeypatch):
    monkeypatch.setenv("DVTP_BACKEND", "reference")
    assert dispatch.choose("accumulate_visual_scores", accumulate_args()) == "reference"
    monkeypatch.setenv("DVTP_BACKEND", "fastest")
    with pytest.raises(dvtp_kernels.BackendError, match="DVTP_BACKEND='fastest' is not a backend"):
        dispatch.choose("accumulate_visual_scores", accumulate_args())
    # an explicit argument wins over the variable
    assert dispatch.choose("accumulate_visual_scores", accumulate_args(), "reference") == "reference"


def test_triton_on_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    reasons = dispatch.not_supported_reasons("triton", "gather_compact", torch.device("cpu"))
    assert any("TRITON_INTERPRET=1" in r for r in reasons)


def test_error_lists_every_reason():
    with pytest.raises(dvtp_kernels.BackendError) as info:
        dispatch.choose("accumulate_visual_scores", accumulate_args(), "cuda")
    assert "takes CUDA tensors, got tensors on cpu" in str(info.value)


def run_python(code, **env):
    full_env = dict(os.environ, **env)
    full_env.pop("DVTP_BACKEND", None)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env=full_env, timeout=120)


def test_import_does_not_initialise_cuda_or_load_the_extension():
    result = run_python("""
        import sys, torch
        import dvtp_kernels
        import dvtp
        assert not torch.cuda.is_initialized()
        assert "dvtp_kernels._C" not in sys.modules
        print("ok")
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_without_extension_falls_back_and_warns_once():
    result = run_python("""
        import importlib.abc, sys, warnings

        class NoExtension(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name == "dvtp_kernels._C":
                    raise ImportError("simulated: extension not built")

        sys.meta_path.insert(0, NoExtension())
        import torch, dvtp_kernels
        q = torch.randn(1, 2, 10, 16)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(3):
                dvtp_kernels.accumulate_visual_scores(q, q, torch.zeros(1, 3, 4), 7, 2, 4)
        messages = [str(w.message) for w in caught if "dvtp_kernels" in str(w.message)]
        assert len(messages) == 1, messages
        assert "pip install --no-build-isolation" in messages[0]
        try:
            dvtp_kernels.accumulate_visual_scores(q, q, torch.zeros(1, 3, 4), 7, 2, 4, backend="cpu")
        except dvtp_kernels.BackendError as e:
            assert "simulated: extension not built" in str(e)
            print("ok")
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_info_reports_builds_and_backends():
    result = run_python("import dvtp_kernels.info as i; i.main()")
    assert result.returncode == 0, result.stderr
    assert "backends for CPU tensors" in result.stdout
    if "cpu" in REQUIRED:
        assert "C++ extension: loaded" in result.stdout
        assert "compiled_backends: ['cpu'" in result.stdout


# --------------------------------------------------------------------------------------
# python -m dvtp_kernels.info
# --------------------------------------------------------------------------------------

NO_EXTENSION = """
import importlib.abc, sys

class NoExtension(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "dvtp_kernels._C":
            raise ImportError("simulated: extension not built")

sys.meta_path.insert(0, NoExtension())
"""


SEPARATOR = "=== next report ==="


def run_info(prelude="", reports=("",), **env):
    """Outputs of dvtp_kernels.info.main() in one fresh process: one report per entry of
    ``reports`` (code run before that report); env: variables to set (None: unset)."""
    full_env = dict(os.environ)
    full_env.pop("DVTP_BACKEND", None)
    for key, value in env.items():
        if value is None:
            full_env.pop(key, None)
        else:
            full_env[key] = value
    code = prelude + "\nimport os\nimport dvtp_kernels.info as info\n"
    for before in reports:
        code += f"{before}\ninfo.main()\nprint({SEPARATOR!r})\n"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full_env,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout.split(SEPARATOR + "\n")[: len(reports)]


NO_RECORD = "info.build_info = lambda: None"


@pytest.fixture(scope="module")
def info_reports():
    """{(extension built|missing, build record present|absent): report}, two processes."""
    reports = {}
    for extension, prelude in (("built", ""), ("missing", NO_EXTENSION)):
        with_record, without = run_info(prelude, reports=("", NO_RECORD), TRITON_INTERPRET=None)
        reports[extension, "present"] = with_record
        reports[extension, "absent"] = without
    return reports


@pytest.fixture(scope="module")
def env_reports():
    """Reports with DVTP_BACKEND invalid, then valid (one process, TRITON_INTERPRET=1)."""
    return run_info(reports=("os.environ['DVTP_BACKEND'] = 'fastest'", "os.environ['DVTP_BACKEND'] = 'reference'"),
                    TRITON_INTERPRET="1")


def test_info_flags_an_invalid_dvtp_backend(env_reports):
    invalid, valid = env_reports
    assert "DVTP_BACKEND='fastest' is INVALID: not a backend (expected one of reference, cpu, triton, cuda)" in invalid
    assert "backend=None picks: none: DVTP_BACKEND is invalid" in invalid
    assert "DVTP_BACKEND=reference (calls without backend= use it)" in valid
    assert "backend=None picks: reference (DVTP_BACKEND)" in valid


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
def test_info_and_dispatch_do_not_offer_triton_for_cuda_tensors_without_cuda(env_reports):
    """Triton was reported "usable" for CUDA tensors on a CPU-only torch."""
    for op in dispatch.OPS:
        reasons = dispatch.not_supported_reasons("triton", op, torch.device("cuda"))
        assert any("no CUDA" in r or "CPU-only build" in r for r in reasons), reasons
    for out in env_reports:
        cuda_lines = out[out.index("backends for CUDA tensors"):]
        assert "usable" not in cuda_lines.replace("unusable", "")
        assert "none, there is no CUDA device" in cuda_lines


@pytest.mark.parametrize("extension", ["built", "missing"])
def test_info_prints_each_reason_once(info_reports, extension):
    """The extension's load problem and the build hint were repeated on every backend line."""
    from dvtp_kernels import _extension

    out = info_reports[extension, "present"]
    assert out.count(_extension.BUILD_HINT) == (1 if extension == "missing" else 0)
    if extension == "missing":
        assert out.count("simulated: extension not built") == 1
        assert "cpu       unusable: the C++ extension is not loaded (see 'C++ extension' above)" in out
    reason_lines = [line for line in out.splitlines() if "unusable: " in line]
    reasons = [r for line in reason_lines for r in line.split("unusable: ", 1)[1].split("; ")]
    long_reasons = [r for r in reasons if len(r) > 40 and "(see " not in r]
    assert len(long_reasons) == len(set(long_reasons)), long_reasons


@pytest.mark.parametrize("extension", ["built", "missing"])
@pytest.mark.parametrize("record", ["present", "absent"])
def test_info_never_tells_to_run_itself(info_reports, extension, record):
    """It pointed at `python -m dvtp_kernels.info` from inside its own report; and without a
    build record its hint now says what that means instead of one generic line."""
    out = info_reports[extension, record]
    assert "dvtp_kernels.info" not in out
    if record == "absent":
        expected = ("never built (see 'C++ extension' below)" if extension == "missing"
                    else "yet the C++ extension loads")
        assert expected in out
    if extension == "built" and "cpu" in REQUIRED:
        assert "C++ extension: loaded" in out


def test_backend_errors_point_to_info_once():
    with pytest.raises(dvtp_kernels.BackendError) as info:
        dispatch.choose("accumulate_visual_scores", accumulate_args(), "cuda")
    assert str(info.value).count("python -m dvtp_kernels.info") == 1
