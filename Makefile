# One-command set-up: `make test` and `make demo` create .venv, install the pinned stack and
# build the package (C++ extension; CUDA kernels too where a CUDA torch + toolkit exist).
PYTHON      ?= python3
VENV        := .venv
PY          := $(VENV)/bin/python
TORCH_PIN   := 2.13.0
TRITON_PIN  := 3.7.1
# A local CPU wheel of torch (this project's machines keep one in /opt/wheels).
WHEELS      ?= /opt/wheels
DEPS        := triton==$(TRITON_PIN) numpy "transformers>=5.24,<5.40" tokenizers safetensors pillow accelerate tqdm click rich matplotlib pytest pytest-benchmark hypothesis ninja pybind11 setuptools wheel
EXT_SOURCES := $(wildcard csrc/*.cpp csrc/*.h csrc/cpu/*.cpp csrc/cpu/*.h csrc/cuda/*.cu csrc/cuda/*.cuh)
PYTEST_ARGS ?=
export MAX_JOBS ?= 2

.PHONY: test demo install cuda-check sanitize bench clean

$(VENV)/.deps-installed:
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@# uv installs the stack in seconds; plain pip is the fallback. torch is pinned in the
	@# same command so nothing can pull an unpinned (multi-GB CUDA) torch.
	if $(PY) -m pip install -q uv; then \
	  if ls $(WHEELS)/torch-$(TORCH_PIN)+cpu-*.whl >/dev/null 2>&1; then torch="torch==$(TORCH_PIN)+cpu"; \
	  else torch="torch==$(TORCH_PIN)"; fi; \
	  $(VENV)/bin/uv pip install --python $(PY) -f $(WHEELS) "$$torch" $(DEPS); \
	else \
	  $(PY) -m pip install -q "torch==$(TORCH_PIN)" $(DEPS); \
	fi
	touch $@

$(VENV)/.dvtp-built: $(VENV)/.deps-installed $(EXT_SOURCES) setup.py pyproject.toml
	$(PY) -m pip install -q --no-build-isolation --no-deps -e .
	touch $@

install: $(VENV)/.dvtp-built

test: install
	DVTP_REQUIRE_BACKENDS=reference,cpu,triton $(PY) -m pytest $(PYTEST_ARGS)

demo: install
	$(VENV)/bin/dvtp demo

cuda-check: install
	@# CI checks sm_90 only (half the time); ARCHS="80 90" checks both.
	ARCHS="$${ARCHS:-90}" PYTHON=$(PY) bash tools/check_cuda_compile.sh

sanitize: install
	@# The C++ CPU kernels under ASan + UBSan, built in build/sanitize/ (the normal build is
	@# untouched); runs the cpu-backend op tests and fails on any sanitizer report.
	PYTHON=$(PY) bash tools/sanitize.sh

bench: install
	$(PY) -m pytest benchmarks --benchmark-enable --benchmark-only

clean:
	rm -rf build dist *.egg-info dvtp_kernels/_C*.so dvtp_kernels/_build_info.json
