# Bootstraps .venv on first use: CPU torch pinned FIRST (an unpinned torch pulls a multi-GB CUDA
# build), then the project with its dev extras. Re-running skips what is already done.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH := torch==2.13.0

.PHONY: test test-fast lab serve bench clean-venv browser-deps

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

# Debian chromium for the browser tests (Playwright cannot download its own browser here) and coturn for the
# TURN relay test (a real relay on loopback).
browser-deps:
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/turnserver ]; then \
		if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium coturn >/dev/null; \
	fi

# The Triton kernels compile and run on a CUDA GPU; the interpreter runs them on CPU only where there is none.
INTERPRET = TRITON_INTERPRET=$$($(BIN)/python -c "import torch; print(0 if torch.cuda.is_available() else 1)")

test: $(STAMP) browser-deps
	$(INTERPRET) $(BIN)/python -m pytest -q -ra

test-fast: $(STAMP)
	$(INTERPRET) $(BIN)/python -m pytest -q -ra -m "not browser and not slow"

lab: $(STAMP)
	$(BIN)/worldlab lab

serve: $(STAMP)
	$(BIN)/worldlab serve

bench: $(STAMP)
	$(BIN)/python -m worldlab.kernels.bench

clean-venv:
	rm -rf $(VENV)
