# The README's two commands: `make demo` (set up + the main job) and `make test`.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev]"
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/echo-lite demo --preset tiny

test: $(STAMP)
	$(BIN)/python -m pytest -q tests notebooks --nbval-lax -p no:cacheprovider

lint: $(STAMP)
	$(BIN)/ruff check echo_lite tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache
