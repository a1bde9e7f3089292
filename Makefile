# The two commands of the README: `make demo` and `make test`. Each sets up what it needs.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint bench clean broker mosquitto chromium

# The demo and the tests start their own mosquitto (the tests also PostgreSQL); install the
# Debian packages where missing.
mosquitto:
	@command -v mosquitto >/dev/null 2>&1 || test -x /usr/sbin/mosquitto || \
	  { (apt-get install -y -qq mosquitto >/dev/null 2>&1 || \
	     (apt-get update -qq && apt-get install -y -qq mosquitto >/dev/null)) && \
	    echo "installed mosquitto"; }

broker: mosquitto
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 || \
	  { (apt-get install -y -qq postgresql >/dev/null 2>&1 || \
	     (apt-get update -qq && apt-get install -y -qq postgresql >/dev/null)) && \
	    echo "installed postgresql"; }

# The dashboard's browser tests drive Debian's chromium (headless, through Playwright).
chromium:
	@command -v chromium >/dev/null 2>&1 || test -x /usr/bin/chromium || \
	  { (apt-get install -y -qq chromium >/dev/null 2>&1 || \
	     (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)) && \
	    echo "installed chromium"; }

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Run from a terminal, the demo keeps the service and fleet up at the end for a look at the
# dashboard (its address is printed) until Enter.
demo: $(STAMP) mosquitto
	$(BIN)/python -m edgeops.demo $$(test -t 0 && echo --keep)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint broker chromium
	$(BIN)/python -m pytest -q

# Every benchmark: tables on stdout (kept in results/NAME.txt), JSON in results/NAME.json, then
# results/README.md with every goal in one markdown table.
# drift runs in .venv-drift: its peers (Evidently, alibi-detect) need numpy < 2.
BENCHMARKS := conversion byom byom_serving agent service rollout commands dashboard
DRIFT_VENV  := .venv-drift
DRIFT_STAMP := $(DRIFT_VENV)/.installed

$(DRIFT_STAMP): pyproject.toml
	$(PYTHON) -m venv $(DRIFT_VENV)
	$(DRIFT_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(DRIFT_VENV)/bin/python -m pip install --quiet -e '.[drift-bench]'
	touch $(DRIFT_STAMP)

bench: $(STAMP) $(DRIFT_STAMP) broker
	@mkdir -p benchmarks/results
	@for b in $(BENCHMARKS); do \
	  $(BIN)/python benchmarks/$$b.py --out benchmarks/results > benchmarks/results/$$b.txt || exit 1; \
	  cat benchmarks/results/$$b.txt; \
	done
	$(DRIFT_VENV)/bin/python benchmarks/drift.py --out benchmarks/results > benchmarks/results/drift.txt
	@cat benchmarks/results/drift.txt
	$(BIN)/python benchmarks/summary.py --results benchmarks/results

clean:
	rm -rf $(VENV) $(DRIFT_VENV) demo-output benchmarks/results .mypy_cache .ruff_cache .pytest_cache
