# Two set-up commands: `make demo` and `make test`. Each builds .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test test-fast faults lint bench clean deploy-test lock

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

# `make test` (what CI runs) in tiers, each only once the one before passed:
# 1 fast, no services (SQLite, Dramatiq's StubBroker; `make test-fast` alone,
# for the edit-run loop); 2 integration on the real PostgreSQL, RabbitMQ and
# Redis; 3 the fault suite. A tier that collects no tests fails (pytest exit 5).
# Tier 1 starts with the type checker (mypy, configured in pyproject.toml).
test-fast: $(BIN)/batchctl $(VENV)/.deploy-tools
	@echo "== tier 1: fast (no services) =="
	$(BIN)/mypy
	$(BIN)/pytest tests/unit

test: test-fast
	@echo "== tier 2: integration (PostgreSQL, RabbitMQ, Redis) =="
	$(BIN)/pytest tests/integration
	@echo "== tier 3: faults (stops and starts RabbitMQ and Redis) =="
	$(BIN)/pytest tests/faults -m faults

# The fault-injection suite alone (tier 3 of `make test`); prints one row
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

# deploy/docker-compose.yml for real: podman builds the image and Debian-based
# stand-ins for the third-party images, podman-compose runs the stack, a batch of
# every action must complete, then `down` (deploy/podman/deploy-test.sh; root).
deploy-test:
	bash deploy/podman/deploy-test.sh

# requirements.lock: the image's runtime dependencies (pyproject.toml's
# `dependencies`), pinned with hashes, which deploy/Dockerfile installs with
# --require-hashes. `make lock` re-resolves it after pyproject.toml changes,
# keeping every pin that still fits; `make lock LOCK_ARGS=--upgrade` moves all
# to their newest. deploy/validate.sh fails when the two disagree.
UV := uv==0.13.9
lock: $(BIN)/batchctl
	$(BIN)/pip install --quiet '$(UV)'
	$(BIN)/uv pip compile pyproject.toml --universal --python-version 3.11 \
		--generate-hashes --custom-compile-command 'make lock' \
		--output-file requirements.lock --quiet $(LOCK_ARGS)

lint: $(BIN)/batchctl
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .pytest_cache batch_actions.db
