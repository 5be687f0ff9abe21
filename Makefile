# One idempotent setup path; `make demo` and `make test` are the README's two commands.
SHELL := /bin/bash
PY ?= python3.11
VENV := .venv
STAMP := $(VENV)/.fasthpt-installed
APT_PKGS := pkg-config libopencv-dev libturbojpeg0-dev
PYTEST_ARGS ?=
# the suite in 2 processes (pytest-xdist), each test file whole in one of them (its module fixtures
# built once): 11.6 -> 6.7 min on the 2-core development machine; PYTEST_WORKERS=0 runs it in one
PYTEST_WORKERS ?= 2

.PHONY: setup demo demo-base test test-gpu bench clean-data test-latest smoke-latest gpu-bundle

setup: $(STAMP)

# Debian packages FFCV builds against; installed only when missing (we are root on the target machine).
.apt-ok:
	@if ! dpkg -s $(APT_PKGS) >/dev/null 2>&1; then \
	  echo "setup: installing $(APT_PKGS)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $(APT_PKGS) >/dev/null; \
	fi
	@touch $@

$(VENV)/bin/python:
	$(PY) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip setuptools wheel

# Re-installs only when pyproject.toml changes: a second `make setup` costs seconds. The full stack:
# the ffcv extra (built against APT_PKGS) and the test tools; without root, `pip install .` is the core.
$(STAMP): pyproject.toml .apt-ok | $(VENV)/bin/python
	$(VENV)/bin/pip install -q -e '.[dev,ffcv]'
	@touch $@

demo: setup
	$(VENV)/bin/fasthpt demo

# the base `make demo` starts from, rebuilt by its preset's chain (minutes; see fasthpt/assets/*.json)
demo-base: setup
	$(VENV)/bin/fasthpt demo --build-base fasthpt/assets/demo-base.pt

# The linter first ([tool.ruff] in pyproject.toml): a lint error fails before the suite starts; then
# the suite on the pinned stack, then its smoke subset on the newest torch (.venv-latest, below).
test: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/python -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS)
	$(MAKE) --no-print-directory smoke-latest PYTEST_ARGS=

test-gpu: setup
	$(VENV)/bin/python -m pytest -q -m gpu $(PYTEST_ARGS)

bench: setup
	$(VENV)/bin/fasthpt bench loaders --data data/sat --json bench/loaders.jsonl

# ---- the same code on the newest torch that installs here ------------------------------------
# Composer 0.32.1 pins torch < 2.7.1, so .venv-latest installs it with --no-deps and takes its other
# requirements from its own metadata (requirements/stack.py). The torch pair defaults to the newest
# that installs on the development machines (a CUDA 13 build; the tests run it on the CPU); another
# pair: make test-latest LATEST_TORCH='torch==X torchvision==Y' after removing $(LATEST_STAMP).
LATEST := .venv-latest
LATEST_STAMP := $(LATEST)/.fasthpt-installed
LATEST_TORCH ?= torch==2.14.1 torchvision==0.29.1
COMPOSER := mosaicml==0.32.1
SMOKE_TESTS := tests/bench/test_latest_smoke.py

$(LATEST)/bin/python:
	$(PY) -m venv $(LATEST)
	$(LATEST)/bin/pip install -q --upgrade pip setuptools wheel

$(LATEST_STAMP): pyproject.toml requirements/stack.py .apt-ok | $(LATEST)/bin/python
	@mkdir -p $(LATEST)/wheels && printf '%s\n' $(LATEST_TORCH) > $(LATEST)/torch-pin.txt
	$(LATEST)/bin/pip install -q $(LATEST_TORCH)
	$(LATEST)/bin/pip download -q --no-deps -d $(LATEST)/wheels $(COMPOSER)
	$(LATEST)/bin/pip install -q --no-deps $(LATEST)/wheels/mosaicml-0.32.1-*.whl
	$(LATEST)/bin/python requirements/stack.py latest $(LATEST)/wheels/mosaicml-0.32.1-*.whl > $(LATEST)/requirements.txt
	$(LATEST)/bin/pip install -q -r $(LATEST)/requirements.txt -c $(LATEST)/torch-pin.txt
	$(LATEST)/bin/pip install -q --no-deps -e .
	@$(LATEST)/bin/python -c 'import torch, composer; print("test-latest: torch", torch.__version__, "composer", composer.__version__)'
	@touch $@

test-latest: $(LATEST_STAMP)
	$(LATEST)/bin/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

# prep, a 2-batch pretrain and kNN on the newest torch: the subset cheap enough for every CI run
smoke-latest: $(LATEST_STAMP)
	$(LATEST)/bin/python -m pytest -q -p no:cacheprovider $(SMOKE_TESTS) $(PYTEST_ARGS)

# wheels the GPU machine lacks (cp312), in folders of one device call each: see bench/gpu_bundle.py
gpu-bundle: .apt-ok
	$(PY) bench/gpu_bundle.py
