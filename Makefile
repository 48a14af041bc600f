# Two set-up commands: `make demo` and `make test`. Each builds .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test faults lint bench clean

$(BIN)/batchctl: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

# Offline validators for deploy/ (promtool, hadolint, kubernetes-validate, ...).
$(VENV)/.deploy-tools: deploy/install-tools.sh $(BIN)/batchctl
	VENV=$(VENV) bash deploy/install-tools.sh
	touch $@

demo: $(BIN)/batchctl
	$(BIN)/batchctl demo

test: $(BIN)/batchctl $(VENV)/.deploy-tools
	$(BIN)/pytest

# The fault-injection suite alone (also part of `make test`); prints one row
# per scenario (docs/RELIABILITY.md). It stops and starts RabbitMQ and Redis:
# on a shared machine, `flock /tmp/batch-actions-machine.lock make faults`.
faults: $(BIN)/batchctl
	$(BIN)/pytest tests/faults -m faults

# The benchmark (bench/run.py; not part of `make test`). The machine is shared:
#   flock /tmp/batch-actions-machine.lock make bench [BENCH_ARGS="--learners 1000000"]
$(VENV)/.bench-deps: pyproject.toml $(BIN)/batchctl
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	touch $@

bench: $(BIN)/batchctl $(VENV)/.bench-deps
	$(BIN)/python -m bench $(BENCH_ARGS)

lint: $(BIN)/batchctl
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) .pytest_cache batch_actions.db
