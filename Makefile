# The two commands a newcomer runs: `make demo` and `make test` (both install first when needed).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
WORKDIR ?= work/demo
# The CPU wheel, pinned so a CPU machine never downloads a CUDA build; GPU clusters install the
# project on their own CUDA torch (pyproject.toml states a range).
TORCH_CPU := torch==2.13.0

.PHONY: install test test-unit demo bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH_CPU)
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

# pytest exits 5 when it collects no test, so an empty suite fails here too.
test: $(STAMP)
	$(BIN)/python -m pytest tests

test-unit: $(STAMP)
	$(BIN)/python -m pytest tests -m unit

demo: $(STAMP)
	$(BIN)/incept demo --workdir $(WORKDIR)

bench: $(STAMP)
	$(BIN)/python bench/model.py
	$(BIN)/python bench/shard.py

clean:
	rm -rf $(VENV) work build *.egg-info
