# Shaping: the README's commands. `make help` lists the targets.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
SHAPING := $(VENV)/bin/shaping

.DEFAULT_GOAL := help
.PHONY: help install lock demo test test-fast lint lint-imports format kafka-up kafka-down pg-up pg-down stack-up stack-down stack-status dashboards bench bench-ibl clean

help: ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  make %-12s %s\n", $$1, $$2}'

install: ## Create .venv and install Shaping with every extra (once per pyproject change)
	@infra/bootstrap.sh

# uv runs from a venv of its own (.cache/lock-tools), never the project's. Existing pins are kept
# where they still fit; `make lock LOCK_ARGS=--upgrade` moves every package to its newest version.
LOCK_ARGS ?=
lock: ## Rewrite requirements.lock, the versions make install pins (uv pip compile, from PyPI)
	@python3 -m venv .cache/lock-tools
	@.cache/lock-tools/bin/python -m pip install -q --disable-pip-version-check "uv>=0.9,<1"
	.cache/lock-tools/bin/uv pip compile pyproject.toml --extra services --extra rig --extra dev \
		--universal --python-version 3.11 --custom-compile-command "make lock" \
		-o requirements.lock $(LOCK_ARGS)

demo: install ## Simulate a lab in one process on SQLite (no Kafka, no Java): status table and stage paths
	@$(SHAPING) demo --out demo-output

test: install ## The whole test suite: unit, property, real Kafka, real PostgreSQL, end to end
	@infra/kafka/kafka.sh fetch
	@infra/graphviz/graphviz.sh ensure
	@infra/chromium/chromium.sh ensure
	$(PY) -m pytest

test-fast: install ## Tests that need neither Kafka nor PostgreSQL
	@infra/graphviz/graphviz.sh ensure
	@infra/chromium/chromium.sh ensure
	$(PY) -m pytest -m "not kafka and not postgres"

lint: install ## ruff (lint and format check), mypy and the layers' import rules
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	@mkdir -p .cache/typecheck/shaping && for d in services schemas rig curricula; do ln -sfn ../../../$$d .cache/typecheck/shaping/$$d; done
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

lint-imports: install ## The layers' import rules (pyproject.toml [tool.importlinter], docs/architecture.md)
	$(VENV)/bin/lint-imports

format: install ## Apply ruff's formatting and safe fixes
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

kafka-up: install ## Start a local single-node Kafka (KRaft) on 127.0.0.1:9092 and create the topics
	@infra/kafka/kafka.sh up
	@$(SHAPING) topics create

kafka-down: ## Stop the local Kafka
	@infra/kafka/kafka.sh down

pg-up: ## Start a local PostgreSQL for the projector (passwords; prints its roles and files)
	@infra/postgres/postgres.sh up
	@infra/postgres/postgres.sh url

pg-down: ## Stop the local PostgreSQL
	@infra/postgres/postgres.sh down

stack-up: install ## Start the whole stack as local processes, secured (SHAPING_STACK_INSECURE=1: plaintext Kafka)
	@infra/stack.sh up

stack-down: ## Stop every part of the local stack
	@infra/stack.sh down

stack-status: ## Say which parts of the local stack run
	@infra/stack.sh status

dashboards: install ## Regenerate the Grafana dashboards (infra/grafana/dashboards/*.json)
	$(PY) infra/grafana/dashboards.py

bench: install ## Run the benchmarks and rewrite bench/REPORT.md
	$(PY) -m bench.run

bench-ibl: install ## IBL ladder: metric updates, recompute, and ibllib on the same trials (IBL section of bench/REPORT.md)
	$(PY) -m bench.ibl

clean: ## Remove demo output and caches (keeps .venv and the Kafka jars)
	rm -rf demo-output .pytest_cache .mypy_cache .ruff_cache .hypothesis
