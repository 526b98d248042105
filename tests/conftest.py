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
