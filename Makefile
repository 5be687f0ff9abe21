# One idempotent setup path; `make demo` and `make test` are the README's two commands.
SHELL := /bin/bash
PY ?= python3.11
VENV := .venv
STAMP := $(VENV)/.fasthpt-installed
APT_PKGS := pkg-config libopencv-dev libturbojpeg0-dev
PYTEST_ARGS ?=

.PHONY: setup demo test test-gpu bench clean-data

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

# Re-installs only when pyproject.toml changes: a second `make setup` costs seconds.
$(STAMP): pyproject.toml .apt-ok | $(VENV)/bin/python
	$(VENV)/bin/pip install -q -e '.[dev]'
	@touch $@

demo: setup
	$(VENV)/bin/fasthpt demo

test: setup
	$(VENV)/bin/python -m pytest -q $(PYTEST_ARGS)

test-gpu: setup
	$(VENV)/bin/python -m pytest -q -m gpu $(PYTEST_ARGS)

bench: setup
	$(VENV)/bin/fasthpt bench loaders --data data/sat --json bench/loaders.jsonl
