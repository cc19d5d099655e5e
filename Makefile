# The two commands of the quick start: `make demo` and `make test`. Each bootstraps .venv.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEPS := $(VENV)/.deps-installed

.PHONY: demo test bench lint clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(DEPS): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(DEPS)

demo: $(DEPS)
	$(VENV)/bin/clusterai demo

test: $(DEPS)
	$(PY) -m pytest

bench: $(DEPS)
	bash bench/run_all.sh

lint: $(DEPS)
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/mypy src
	$(VENV)/bin/lint-imports  # the one-way layers (pyproject.toml: tool.importlinter)

clean:
	rm -rf $(VENV) .clusterai .pytest_cache
