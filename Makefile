# One-command entry points; see README. The services (Kafka, PostgreSQL) come from
# scripts/services and their addresses reach the worker through `scripts/services env`.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The installer of both venvs (see install).
UV_REQUIREMENT := uv>=0.9,<1
UV := $(BIN)/uv
SERVICES := scripts/services
# Applies `scripts/services env` (BILLING_* exports) to the rest of a recipe line.
WITH_ENV := services_env=$$($(SERVICES) env); eval "$$services_env";
PYTEST_ARGS ?=
# make test's test processes; 0 runs the suite in one process
PYTEST_WORKERS ?= 2
DEMO_ARGS ?=
BENCH_ARGS ?=
# e.g. CHAOS_ARGS="--events 200000 --accounts 2000 --seed 7"; python -m chaos.runner -h
CHAOS_ARGS ?=
# The official AsyncAPI parser, installed from its lock file into a project-local folder.
ASYNCAPI_TOOLS := tools/asyncapi
ALERTS := deploy/prometheus

# e.g. MUTANTS='worker.domain.lots*' for one module; empty = all of worker/domain
MUTANTS ?=
MUTATION_FLOOR ?=
# extra pytest arguments for every run of the tests (PYTEST_ADDOPTS), e.g. --ignore=FILE
MUTATION_PYTEST_ARGS ?=
MVENV := .venv-mutation
MBIN := $(MVENV)/bin
CI_MUTANTS := worker.domain.reminders*
CI_MUTATION_FLOOR := 100
CI_MUTATION_IGNORE := --ignore=tests/unit/test_oracle.py --ignore=tests/unit/test_properties.py \
	--ignore=tests/unit/test_rating_sole_region.py

.PHONY: help install services secure-services migrate run worker demo test tools alerts bench lint format down status env chaos mutation mutation-ci

help:
	@echo "make install   create $(VENV) and install the worker with its dev tools"
	@echo "make services  start the local Kafka and PostgreSQL (scripts/services up)"
	@echo "make secure-services  the secured pair: SASL_SSL, mutual TLS, ACLs, PostgreSQL TLS"
	@echo "               (scripts/services --secure up; own ports and .local-secure/)"
	@echo "make migrate   apply the database migrations"
	@echo "make run       install, start services, migrate, run the worker with demo traffic"
	@echo "               and a live view; Ctrl-C stops both (DEMO_ARGS='--rate 100')"
	@echo "make worker    install, start services, migrate, run only the worker"
	@echo "make demo      only the demo traffic, for a worker already running"
	@echo "make test      install, start both pairs of services, check the alert rules (promtool),"
	@echo "               run the test suite in two processes (PYTEST_ARGS=..., PYTEST_WORKERS=0: one)"
	@echo "make alerts    promtool check rules and promtool test rules on $(ALERTS)"
	@echo "make tools     install promtool and the AsyncAPI parser when missing"
	@echo "make bench     start services, measure ceilings, throughput, latency, memory, scaling;"
	@echo "               append to benchmarks/RESULTS.md (BENCH_ARGS='--events 20000 --accounts 500')"
	@echo "make lint      ruff, mypy, import-linter"
	@echo "make chaos     kills, outages and restarts against its own Kafka and PostgreSQL"
	@echo "               (.local-chaos, ports 29092/25432), checked against a reference model;"
	@echo "               results in benchmarks/chaos/ (CHAOS_ARGS='--events 200000 --seed 7')"
	@echo "make mutation  mutation testing of worker/domain under its unit tests (slow: ~45 min);"
	@echo "               MUTANTS='worker.domain.lots*' runs one module; survivors listed at the end"
	@echo "make mutation-ci  the CI-sized mutation run (reminders.py; fails under its floor)"
	@echo "make down      stop the local services"

install: $(VENV)/.installed

# Reinstalls only when pyproject.toml changes (or the venv is new). The packages are installed
# by uv (itself installed into the venv by pip): it resolves the same versions as pip, downloads
# in parallel and keeps what it downloaded in its cache (~/.cache/uv), so the mutation venv
# below reuses it; pip took about ten times as long for each venv.
$(VENV)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q '$(UV_REQUIREMENT)'
	$(UV) pip install -q --python $(BIN)/python -e '.[dev]'
	@touch $@

services:
	$(SERVICES) up

# tests/secure runs the whole worker over SASL_SSL and mutual TLS against this pair.
secure-services:
	$(SERVICES) --secure up

migrate: install services
	$(WITH_ENV) $(BIN)/billing-worker migrate

# scripts/run-demo starts the services, migrates, runs the worker in the background and the
# demo in the foreground, and on Ctrl-C stops the demo and then the worker gracefully.
run: install
	scripts/run-demo $(DEMO_ARGS)

worker: install services migrate
	$(WITH_ENV) exec $(BIN)/billing-worker run

demo: install services migrate
	$(WITH_ENV) exec $(BIN)/billing-worker demo $(DEMO_ARGS)

# Two test processes (pytest-xdist): each has its own database, every test its own topics and
# consumer group (or broker). Then, in one process, the tests marked `alone` (the reduced chaos
# run: its timing preconditions want the machine to itself). Both runs always run; exit 5
# (no test selected, e.g. PYTEST_ARGS=tests/unit) fails only when neither selected any.
test: install services secure-services alerts
	$(WITH_ENV) a=0; b=0; \
	$(BIN)/pytest -n $(PYTEST_WORKERS) --dist worksteal -m 'not alone' $(PYTEST_ARGS) || a=$$?; \
	$(BIN)/pytest -m alone $(PYTEST_ARGS) || b=$$?; \
	if [ $$a = 5 ] && [ $$b = 5 ]; then exit 5; fi; \
	for r in $$a $$b; do if [ $$r != 0 ] && [ $$r != 5 ]; then exit $$r; fi; done

# Test tools that are not Python packages: promtool (Debian's prometheus package, installed
# when missing) and the AsyncAPI parser (npm, pinned by its package-lock.json).
tools: $(ASYNCAPI_TOOLS)/node_modules/.installed
	scripts/install-promtool

$(ASYNCAPI_TOOLS)/node_modules/.installed: $(ASYNCAPI_TOOLS)/package.json $(ASYNCAPI_TOOLS)/package-lock.json
	npm ci --prefix $(ASYNCAPI_TOOLS) --no-audit --no-fund --loglevel=error
	@touch $@

alerts: tools
	promtool check rules $(ALERTS)/alerts.yml
	promtool test rules $(ALERTS)/alerts_test.yml

# Uses the services of scripts/services (BILLING_SERVICES_* select another pair).
bench: install services
	$(WITH_ENV) $(BIN)/python -m benchmarks.bench $(BENCH_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

down:
	$(SERVICES) down
	$(SERVICES) --secure down

status:
	$(SERVICES) status

env:
	@$(SERVICES) env

# Starts and stops its own services (never the shared ones); results in benchmarks/chaos/.
chaos: install
	$(BIN)/python -m chaos.runner $(CHAOS_ARGS)

# mutmut runs in a venv of its own with pytest 8 (pyproject.toml, the `mutation` extra). It
# copies the code to mutants/ and runs the domain's unit tests against each mutant; its
# progress goes to mutants/run.log. Exit status 1 when a selected mutant survived, or the
# score is under MUTATION_FLOOR (percent).
$(MVENV)/.installed: pyproject.toml $(VENV)/.installed
	@test -x $(MBIN)/python || $(PYTHON) -m venv $(MVENV)
	$(UV) pip install -q --python $(MBIN)/python -e '.[mutation]'
	@touch $@

mutation: $(MVENV)/.installed
	rm -rf mutants && mkdir mutants
	HYPOTHESIS_PROFILE=mutation PYTEST_ADDOPTS='$(MUTATION_PYTEST_ARGS)' $(MBIN)/mutmut run --max-children 2 $(MUTANTS) > mutants/run.log 2>&1 \
		|| { tail -n 40 mutants/run.log; exit 1; }
	$(MBIN)/python -m benchmarks.mutation_report $(if $(MUTATION_FLOOR),--floor $(MUTATION_FLOOR)) $(MUTANTS)

# The CI-sized run: the reminder rules under their example tests only (the slow generated
# histories left out), every mutant killed or the build fails.
mutation-ci: $(MVENV)/.installed
	$(MAKE) mutation MUTANTS='$(CI_MUTANTS)' MUTATION_FLOOR=$(CI_MUTATION_FLOOR) \
		MUTATION_PYTEST_ARGS='$(CI_MUTATION_IGNORE)'
