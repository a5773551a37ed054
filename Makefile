# Every target sets itself up: a local virtualenv in .venv with the package (editable) and test tools.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
WEIGHTIDX := $(VENV)/bin/weightidx
STAMP := $(VENV)/.installed-stamp
DOCS_STAMP := $(VENV)/.docs-installed-stamp
DEMO := build/demo

.PHONY: setup test lint browser demo bench clean docs

$(STAMP): pyproject.toml weightidx/fingerprint/_fused.c
	@$(PYTHON) -c 'import sys; sys.exit("weightidx needs Python 3.11+, found " + sys.version.split()[0]) if sys.version_info < (3, 11) else None'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

setup: $(STAMP)

lint: $(STAMP)
	$(PY) -m ruff check weightidx tests benchmarks

test: lint browser docs
	$(PY) -m pytest -q

# The documentation site: docs/cli.md regenerated from every command's --help (in CI, where
# CI=true, a stale committed page fails instead), then a strict mkdocs build into build/site.
$(DOCS_STAMP): $(STAMP) pyproject.toml
	$(PY) -m pip install --quiet -e '.[test,docs]'
	@touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	$(PY) docs/gen_cli.py $(if $(CI),--check)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --site-dir build/site

# The HTML report is tested in a real headless Chromium (Debian's package): installed here when
# missing and we are root (as in CI); otherwise that test is skipped and says why.
browser:
	@if ! command -v chromium >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium) \
	      >/dev/null 2>&1 || echo "chromium could not be installed: the browser test will be skipped"; \
	  else echo "chromium is not installed (installing it needs root): the browser test will be skipped"; fi; \
	fi

demo: $(STAMP)
	$(WEIGHTIDX) demo $(DEMO)
	$(WEIGHTIDX) index $(DEMO)/wan_a.safetensors -o $(DEMO)/wan_a.parquet
	$(WEIGHTIDX) index $(DEMO)/longcat_b.safetensors -o $(DEMO)/longcat_b.parquet
	$(WEIGHTIDX) compare $(DEMO)/wan_a.parquet $(DEMO)/longcat_b.parquet --names Wan2.1-style LongCat-style -o $(DEMO)/report.json --html $(DEMO)/report.html
	$(WEIGHTIDX) lora convert $(DEMO)/wan_a_lora.safetensors --report $(DEMO)/report.json -o $(DEMO)/longcat_b_lora.safetensors --verify

bench: $(STAMP)
	$(PY) benchmarks/bench_index.py
	$(PY) benchmarks/bench_compare.py
	$(PY) benchmarks/bench_catalog.py
	$(PY) benchmarks/bench_moe.py
	$(PY) benchmarks/bench_gguf.py

clean:
	rm -rf build $(VENV)
