# Quick start: `make demo` and `make test` on a fresh machine.
# Both create (or reuse) .venv and install storyloom from this repository.

PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU build: an unpinned torch pulls a multi-GB CUDA build.
TORCH := torch==2.13.0
DEMO_RUN := runs/demo

CHROMIUM ?= /usr/bin/chromium
.PHONY: venv demo test bench clean serve browser compiler

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check $(TORCH)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[test]'
	touch $@

venv: $(BIN)/.installed

demo: venv
	rm -rf $(DEMO_RUN)
	$(BIN)/storyloom train --minutes 3 --out $(DEMO_RUN)
	$(BIN)/storyloom generate $(DEMO_RUN) --prompt "ROMEO." --length 500 --seed 1

# The web page's test drives a real headless Chromium: Debian's package (a test tool's own browser download
# needs network that CI does not have). Installed here when missing and we may; otherwise the command to run.
browser:
	@test -x $(CHROMIUM) || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	  && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
	  || { echo "make test needs Chromium at $(CHROMIUM) for the web page's test: sudo apt-get install chromium"; exit 1; }

# native.py's writing loop is C++, built on first use; without a compiler writing stays in Python (3x slower at
# batch 1), and its tests fail, naming this. Installed here when missing and we may.
# On x86 the suite also compiles write.cpp for ARM (a cross compiler's syntax check), so the loop keeps building
# on ARM machines, which CI does not have.
ARM_CXX := aarch64-linux-gnu-g++
compiler:
	@command -v g++ >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	  && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq g++ >/dev/null; } \
	  || { echo "make test needs a C++ compiler for the native writing loop: sudo apt-get install g++"; exit 1; }
	@[ "$$(uname -m)" != x86_64 ] || command -v $(ARM_CXX) >/dev/null || { [ "$$(id -u)" = 0 ] \
	  && command -v apt-get >/dev/null && apt-get update -qq \
	  && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq g++-aarch64-linux-gnu >/dev/null; } \
	  || { echo "make test needs $(ARM_CXX) to check write.cpp for ARM: sudo apt-get install g++-aarch64-linux-gnu"; exit 1; }

# One worker per core (at most 4: each imports torch and trains its modules' tiny runs), a file to a worker, so a
# module's fixtures (a trained run, the ARM compile) are made once. Every test uses one thread, so two workers on
# the 2 cores of CI took 175 s where one took 261. `python -m pytest` by hand runs in one process.
test: venv browser compiler
	$(BIN)/python -m pytest -n auto --maxprocesses 4 --dist loadfile

# Serve the demo run on http://127.0.0.1:8000/ (make demo first).
serve: venv
	$(BIN)/storyloom serve $(DEMO_RUN)

clean:
	rm -rf $(VENV) runs .pytest_cache build *.egg-info
