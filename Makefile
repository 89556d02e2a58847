# The two commands of the README: `make demo` and `make test`. Each sets up .venv first if needed.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

demo: setup
	HF_HUB_OFFLINE=1 $(BIN)/vlcache demo --out runs/demo

test: setup
	$(BIN)/ruff check .
	HF_HUB_OFFLINE=1 $(BIN)/pytest

bench: setup
	HF_HUB_OFFLINE=1 $(BIN)/python bench/extract_bench.py --out runs/bench
	HF_HUB_OFFLINE=1 $(BIN)/python bench/extract_speed_bench.py --out runs/bench
	HF_HUB_OFFLINE=1 $(BIN)/python bench/decode_bench.py --out runs/bench
	HF_HUB_OFFLINE=1 $(BIN)/python bench/loader_bench.py --out runs/bench
	HF_HUB_OFFLINE=1 $(BIN)/python bench/head_speed_bench.py --out runs/bench
	HF_HUB_OFFLINE=1 $(BIN)/python bench/metadata_bench.py --out runs/bench

clean:
	rm -rf $(VENV) runs
