# The README's two commands: `make demo` (set up + the main job) and `make test`.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup speech demo test lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev]"
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

# Spoken words in the synthetic world need espeak-ng and sox (Debian packages): installed here
# where that is allowed (root with apt-get, as on CI machines); elsewhere a hint, and the world
# has no speech events, so the demo's data and numbers differ from the shipped ones.
speech:
	@if ! command -v espeak-ng >/dev/null 2>&1 || ! command -v sox >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends espeak-ng sox) >/dev/null 2>&1 \
	      || echo "setup: espeak-ng/sox could not be installed; speech events will be skipped"; \
	  else \
	    echo "setup: no espeak-ng/sox: the synthetic world has no speech (sudo apt-get install espeak-ng sox)"; \
	  fi; \
	fi

setup: speech $(STAMP)

demo: speech $(STAMP)
	$(BIN)/echo-lite demo --preset tiny

test: $(STAMP)
	$(BIN)/python -m pytest -q tests notebooks --nbval-lax -p no:cacheprovider

lint: $(STAMP)
	$(BIN)/ruff check echo_lite tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache
