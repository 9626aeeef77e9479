# pyopt — the two set-up commands are `make demo` and `make test`; both start from a bare machine.
PY        ?= python3
VENV      ?= .venv
VPY       := $(VENV)/bin/python
VPIP      := $(VPY) -m pip
NVCC      ?= nvcc
# the defines torch's CUDAExtension passes to nvcc (torch/utils/cpp_extension.py COMMON_NVCC_FLAGS), so that
# check-cuda here fails where the real extension build on a GPU box would
TORCH_NVCC_DEFS := -D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__ \
  -D__CUDA_NO_BFLOAT16_CONVERSIONS__ -D__CUDA_NO_HALF2_OPERATORS__ --expt-relaxed-constexpr
NVCCFLAGS := -O3 -std=c++17 $(TORCH_NVCC_DEFS) -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 \
             -gencode arch=compute_90,code=compute_90 -I csrc
CU_SRCS   := $(wildcard csrc/cuda/*.cu)
CU_OBJS   := $(patsubst csrc/cuda/%.cu,build/cuda-check/%.o,$(CU_SRCS))
NATIVE_SRCS := setup.py $(wildcard csrc/*.cpp csrc/*.h csrc/cpu/*.cpp csrc/cpu/*.h csrc/cuda/*.cu csrc/cuda/*.cpp csrc/cuda/*.cuh)

.PHONY: all venv build demo test pytest asan bench bench-quick bench-pytest check-cuda check-cuda-bind lint format info clean

all: test

# A venv with torch (the CPU wheel here; a torch already importable by $(PY), e.g. on a GPU box, is kept
# by creating the venv with --system-site-packages), plus the test/demo dependencies.
$(VENV)/.deps: requirements-dev.txt
	@if [ ! -x $(VPY) ]; then \
	  if $(PY) -c "import torch" 2>/dev/null; then $(PY) -m venv --system-site-packages $(VENV); \
	  else $(PY) -m venv $(VENV); fi; fi
	@$(VPY) -c "import torch" 2>/dev/null || $(VPIP) install -q torch==2.13.0
	$(VPIP) install -q -r requirements-dev.txt
	@touch $@
venv: $(VENV)/.deps

# The extension is rebuilt when a native source changes (editable install: Python edits need nothing).
$(VENV)/.built: $(VENV)/.deps $(NATIVE_SRCS)
	$(VPIP) install -q --no-build-isolation --no-deps -e .
	@touch $@
build: $(VENV)/.built

# The demo writes pyopt-demo-out/; its table and picture are also copied to docs/demo/ (shown in the README).
demo: build
	$(VPY) -m pyopt demo --out pyopt-demo-out
	@mkdir -p docs/demo && cp pyopt-demo-out/results.md pyopt-demo-out/results.json pyopt-demo-out/tradeoffs.png docs/demo/

test: lint check-cuda pytest

pytest: build
	$(VPY) -m pytest tests

# AddressSanitizer + UBSan: the C++ kernels built with PYOPT_SANITIZE in a copy of the tree (build/asan/tree; the
# .venv install is untouched), then the native tests (guard-page tests included) and the fuzz targets run there
# with libasan preloaded (and libstdc++: ASan intercepts __cxa_throw only if that is loaded first; python itself
# is not instrumented, its leaks by design are not reported). Own job, not part of `make test`. ASAN_TESTS /
# ASAN_PYTEST_ARGS narrow or extend the run.
ASAN_DIR   := build/asan/tree
ASAN_TESTS ?= tests/test_quant.py tests/test_int8_linear.py tests/test_binary_linear.py tests/test_sparse.py \
              tests/test_sgd.py tests/test_embedding.py $(wildcard tests/test_fuzz_*.py)
ASAN_PYTEST_ARGS ?= -k "not triton and not cuda"
asan: $(VENV)/.deps
	@mkdir -p $(ASAN_DIR)
	@git ls-files -co --exclude-standard -z | tar --null --ignore-failed-read -T - -cf - 2>/dev/null | tar -xf - -C $(ASAN_DIR)
	cd $(ASAN_DIR) && PYOPT_SANITIZE=address,undefined $(abspath $(VPY)) setup.py -q build_ext --inplace
	cd $(ASAN_DIR) && export LD_PRELOAD="$$($(CXX) -print-file-name=libasan.so) $$($(CXX) -print-file-name=libstdc++.so)" \
	  ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 && \
	  $(abspath $(VPY)) -c "import pyopt.ops.native as n, os; f = n.cpu_ext().__file__; \
	    assert f.startswith(os.getcwd()), f; print('asan: testing', f)" && \
	  $(abspath $(VPY)) -m pytest -q -p no:cacheprovider $(ASAN_TESTS) $(ASAN_PYTEST_ARGS)

bench: build
	$(VPY) -m pyopt bench

bench-quick: build
	$(VPY) -m pyopt bench --quick

# The same cases under pytest-benchmark (groups of pyopt + baselines; add --benchmark-json / --benchmark-compare)
bench-pytest: build
	$(VPY) -m pytest bench --benchmark-only $(BENCH_ARGS)

# Every .cu includes only CUDA headers, so it compiles to an object here even though torch has no CUDA. The
# binding files (.cpp, which include torch) are compiled for syntax and types against this torch's headers
# and the CUDA toolkit's (a CPU wheel lacks only torch's generated c10/cuda/impl/cuda_cmake_macros.h: a stub).
CU_BINDS  := $(wildcard csrc/cuda/*.cpp)
check-cuda: $(CU_OBJS) check-cuda-bind
	@if command -v $(NVCC) >/dev/null; then echo "check-cuda: $(words $(CU_SRCS)) .cu file(s) compile for sm_80 and sm_90"; \
	else echo "check-cuda: skipped (no nvcc on this machine)"; fi

check-cuda-bind: $(VENV)/.deps
	@if command -v $(NVCC) >/dev/null; then \
	  cuda_inc=; for d in "$$CUDA_HOME" /usr/local/cuda /opt/cuda; do \
	    if [ -n "$$d" ] && [ -f "$$d/include/cuda_runtime.h" ]; then cuda_inc=$$d/include; break; fi; done; \
	  if [ -z "$$cuda_inc" ]; then echo "check-cuda-bind: skipped (no cuda_runtime.h found)"; exit 0; fi; \
	  torch_inc=$$($(VPY) -c "import torch.utils.cpp_extension as c; print(' '.join('-I' + p for p in c.include_paths()))"); \
	  py_inc=$$($(VPY) -c "import sysconfig; print(sysconfig.get_paths()['include'])"); \
	  mkdir -p build/cuda-stub/c10/cuda/impl; \
	  printf '#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n' > build/cuda-stub/c10/cuda/impl/cuda_cmake_macros.h; \
	  for f in $(CU_BINDS); do \
	    $(CXX) -std=c++17 -fsyntax-only -w -Ibuild/cuda-stub $$torch_inc -I$$cuda_inc -I$$py_inc -I csrc \
	      -DTORCH_EXTENSION_NAME=_C_cuda $$f || exit 1; done; \
	  echo "check-cuda: $(words $(CU_BINDS)) CUDA binding file(s) compile against torch's headers"; \
	else echo "check-cuda-bind: skipped (no nvcc on this machine)"; fi

build/cuda-check/%.o: csrc/cuda/%.cu $(wildcard csrc/cuda/*.cuh)
	@mkdir -p $(@D)
	@if command -v $(NVCC) >/dev/null; then echo "nvcc $<"; $(NVCC) $(NVCCFLAGS) -c $< -o $@; else touch $@; fi

lint: $(VENV)/.deps
	$(VPY) -m ruff check .
	$(VPY) -m ruff format --check .

format: $(VENV)/.deps
	$(VPY) -m ruff format .
	$(VPY) -m ruff check --fix .

info: build
	$(VPY) -m pyopt info

clean:
	rm -rf build *.egg-info pyopt/*.so $(VENV)/.built
