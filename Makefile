# Every target sets itself up: a local virtualenv in .venv with the package (editable) and test tools.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
WEIGHTIDX := $(VENV)/bin/weightidx
STAMP := $(VENV)/.installed-stamp
DEMO := build/demo

.PHONY: setup test lint demo bench clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit("weightidx needs Python 3.11+, found " + sys.version.split()[0]) if sys.version_info < (3, 11) else None'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

setup: $(STAMP)

lint: $(STAMP)
	$(PY) -m ruff check weightidx tests

test: lint
	$(PY) -m pytest -q

demo: $(STAMP)
	$(WEIGHTIDX) demo $(DEMO)
	$(WEIGHTIDX) index $(DEMO)/wan_a.safetensors -o $(DEMO)/wan_a.parquet
	$(WEIGHTIDX) index $(DEMO)/longcat_b.safetensors -o $(DEMO)/longcat_b.parquet
	$(WEIGHTIDX) compare $(DEMO)/wan_a.parquet $(DEMO)/longcat_b.parquet --names Wan2.1-style LongCat-style -o $(DEMO)/report.json
	$(WEIGHTIDX) lora convert $(DEMO)/wan_a_lora.safetensors --report $(DEMO)/report.json -o $(DEMO)/longcat_b_lora.safetensors --verify

bench: $(STAMP)
	$(PY) tests/benchmarks/bench_index.py
	$(PY) tests/benchmarks/bench_compare.py
	$(PY) tests/benchmarks/bench_catalog.py

clean:
	rm -rf build $(VENV)
