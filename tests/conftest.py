import os
import tempfile

import pytest

# Triton kernels run on CPU only in the interpreter, which must be switched on before
# triton (or dvtp_kernels.triton_backend) defines its kernels. On a GPU machine they run
# compiled instead, and on CUDA tensors.
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# torch.compile's on-disk caches: one fresh directory per test session, so graphs compiled
# by an earlier run (or another checkout) never stand in for tracing the code under test.
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="dvtp-test-compile-cache-"))

import hypothesis_profiles  # noqa: E402,F401  (registers "ci" / "thorough" before the plugin picks one)


@pytest.fixture(scope="module")
def llada():
    """The tiny LLaDA-style LM (vocab 128, mask id 127) of the sampler tests."""
    from dvtp import models

    return models.llada_lm(models.tiny_llada_config(), seed=0)


@pytest.fixture(scope="module")
def dream():
    """The tiny Dream-style LM (GQA 4/2 heads, vocab 128, mask id 127) of the sampler tests."""
    from dvtp import models

    return models.dream_lm(models.tiny_dream_config(), seed=0)


# ---------------------------------------------------------------------------------------
# Deprecated calls made by dvtp itself fail the test
# ---------------------------------------------------------------------------------------
# A library deprecation (transformers' `deprecate_kwarg`, torch's) warns with stacklevel=2,
# i.e. it is attributed to whoever called the deprecated function. For a model called as
# `model(...)` that is torch's Module call machinery, not dvtp, so a filterwarnings module
# regex cannot see who made the call (pyproject's `error::...:dvtp` entries catch the
# warnings attributed to dvtp's own frames). This hook looks at the stack instead: starting
# at the attributed frame it skips the call plumbing between a caller and a model's
# forward (Module.__call__, transformers' forward decorators, accelerate's hooks); if the
# frame reached is dvtp's, dvtp made the deprecated call and the warning becomes an error.
# Warnings transformers or torch raise about their own internal calls stop at a
# transformers/torch frame and are left alone, as are a test's own deprecated calls.

_PLUMBING = (
    "torch.nn.modules.module", "torch.utils._contextlib", "transformers.utils.generic",
    "transformers.utils.deprecation", "transformers.utils.output_capturing", "accelerate.hooks",
    "functools", "contextlib",
)


def _module_of(frame) -> str:
    return frame.f_globals.get("__name__", "")


def _is_dvtp(module: str) -> bool:
    return module == "dvtp" or module.startswith(("dvtp.", "dvtp_kernels"))


def deprecated_call_origin(filename: str, lineno: int, frame=None) -> str | None:
    """The module that made the call a warning attributed to ``filename:lineno`` is about,
    seen from ``frame`` (default: the caller's stack), or None if that frame is not on the
    stack. Call plumbing frames (`_PLUMBING`) between the two are skipped."""
    import sys

    frame = frame or sys._getframe(1)
    while frame is not None and not (frame.f_code.co_filename == filename and frame.f_lineno == lineno):
        frame = frame.f_back
    while frame is not None and _module_of(frame) in _PLUMBING:
        frame = frame.f_back
    return None if frame is None else _module_of(frame)


class DvtpDeprecatedCall(AssertionError):
    """dvtp called a deprecated API (the message is the library's warning)."""


@pytest.fixture(autouse=True)
def _dvtp_deprecated_calls_are_errors():
    import warnings

    previous = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, (DeprecationWarning, FutureWarning)):
            origin = deprecated_call_origin(filename, lineno)
            if origin is not None and _is_dvtp(origin):
                raise DvtpDeprecatedCall(f"{origin} made a deprecated call: {category.__name__}: {message}")
        previous(message, category, filename, lineno, file, line)

    # no filter of our own: the test's filters decide what is shown (pytest shows every
    # DeprecationWarning and, since each test starts with fresh filters, a FutureWarning's
    # first occurrence per location in each test)
    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = previous
