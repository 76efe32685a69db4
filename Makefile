# Quickstart: `make demo` then `make test`. Both create .venv and install on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-all install bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, from its pinned CPU build, so no dependency pulls a CUDA build
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[test]'
	# CLIP's BPE vocabulary for the real tokenizer (models/clip_tokenizer.py): only the file is read; the package
	# itself imports torchvision, which cannot be installed beside the CPU torch, so no dependencies are installed
	$(BIN)/python -m pip install -q --no-deps open-clip-torch==3.3.0
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python scripts/demo.py --out out/demo

test: $(STAMP)
	$(BIN)/python -m pytest -q --durations=15

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -m ''

bench: $(STAMP)
	$(BIN)/python scripts/bench_judges.py
	$(BIN)/python scripts/bench_fidelity.py
	$(BIN)/python scripts/bench_speed.py
	$(BIN)/python scripts/bench_eval.py

clean:
	rm -rf out .pytest_cache
