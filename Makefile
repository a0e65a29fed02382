# Quick start: `make demo` and `make test` on a fresh machine.
# Both create (or reuse) .venv and install storyloom from this repository.

PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU build: an unpinned torch pulls a multi-GB CUDA build.
TORCH := torch==2.13.0
DEMO_RUN := runs/demo

.PHONY: venv demo test bench clean

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

test: venv
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) runs .pytest_cache build *.egg-info
