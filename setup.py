"""Build of dvtp: the C++ CPU extension always, CUDA kernels when a CUDA toolchain is there.

Environment:
  DVTP_SKIP_EXT=1   build no extension (pure-Python install: reference + Triton backends)
  FORCE_CUDA=1      compile csrc/cuda/*.cu even if torch/CUDA_HOME do not say CUDA
  MAX_JOBS=N        parallel compile jobs (ninja)
  TORCH_CUDA_ARCH_LIST  CUDA archs (default "8.0;9.0")
  DVTP_SANITIZE=1   C++ sources with AddressSanitizer + UndefinedBehaviorSanitizer (-O1 -g,
                    no CUDA); used by `make sanitize` (tools/sanitize.sh) in a copy of the tree
"""
import glob
import json
import os
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))
BUILD_INFO = os.path.join(ROOT, "dvtp_kernels", "_build_info.json")


def _flag(name):
    return os.environ.get(name, "0").strip().lower() in ("1", "true", "yes", "on")


def _extensions():
    """Return (ext_modules, cmdclass, build_info)."""
    import torch
    from torch.utils import cpp_extension

    info = {
        "torch_version": torch.__version__,
        "torch_cuda_version": torch.version.cuda,
        "cuda_home": cpp_extension.CUDA_HOME,
        "cuda_arch_list": None,
        "compiled_backends": [],
        "skipped": [],
    }
    if _flag("DVTP_SKIP_EXT"):
        info["skipped"].append("DVTP_SKIP_EXT=1: no extension built")
        return [], {}, info

    sanitize = _flag("DVTP_SANITIZE")
    # Never decide on torch.cuda.is_available(): build machines often have no GPU.
    with_cuda = not sanitize and (_flag("FORCE_CUDA") or (
        torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None
    ))
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")))
    sources += sorted(glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
    # torch adds its own -std (c++20 for 2.13). at::parallel_for is a header template that
    # runs serially unless the including file is built with OpenMP; the process already
    # holds torch's libgomp.so.1, which the extension's reference resolves to.
    openmp = ["-fopenmp"] if sys.platform.startswith("linux") else []
    cxx_flags = ["-O3", *openmp]
    link_flags = list(openmp)
    if sanitize:
        # Every finding aborts (no recovery), so a test run fails on the first report.
        san = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"]
        cxx_flags = ["-O1", "-g", *san, *openmp]
        link_flags = [*san, *openmp]
        info["sanitize"] = "address,undefined"
    extra = {"cxx": cxx_flags}
    if with_cuda:
        cuda_sources = sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
        sources += cuda_sources
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
        info["cuda_arch_list"] = os.environ["TORCH_CUDA_ARCH_LIST"]
        extra["nvcc"] = ["-O3", "--use_fast_math", "-lineinfo"]
        ext_cls = cpp_extension.CUDAExtension
        info["compiled_backends"] = ["cpu", "cuda"] if cuda_sources else ["cpu"]
    else:
        ext_cls = cpp_extension.CppExtension
        info["compiled_backends"] = ["cpu"]
        info["skipped"].append(
            "cuda: torch has no CUDA or CUDA_HOME is unset (set FORCE_CUDA=1 to force)"
        )
    ext = ext_cls(
        "dvtp_kernels._C",
        sources,
        extra_compile_args=extra,
        include_dirs=[os.path.join(ROOT, "csrc")],
        extra_link_args=link_flags,
    )
    cmdclass = {"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)}
    return [ext], cmdclass, info


ext_modules, cmdclass, build_info = _extensions()
with open(BUILD_INFO, "w") as f:
    json.dump(build_info, f, indent=2)

setup(ext_modules=ext_modules, cmdclass=cmdclass)
