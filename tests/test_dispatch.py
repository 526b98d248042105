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
