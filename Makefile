# Two entry points: `make serve` (install + run the gateway) and `make test` (install + run all tests).
# Each step says what it does ("== ... =="); the installs show pip's own progress. A re-run with the
# packages installed skips them (the stamp files below name the requirements' checksums) and starts in seconds.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Test processes (pytest-xdist): most tests wait on sockets, subprocesses and timers rather than
# compute, so two per core; TEST_WORKERS=0 runs the whole suite in this process.
TEST_WORKERS ?= $(shell echo $$((2 * $$(nproc 2>/dev/null || echo 1))))
RUNTIME_STAMP := $(VENV)/.runtime-$(shell cat requirements.txt | cksum | cut -d' ' -f1)
TEST_STAMP := $(VENV)/.test-$(shell cat requirements.txt requirements-test.txt | cksum | cut -d' ' -f1)

.PHONY: serve test migrate bench fuzz cluster

serve: $(RUNTIME_STAMP)
	@echo "== applying the database migrations =="
	$(PY) manage.py migrate --noinput
	@echo "== starting the gateway (Ctrl-C stops it) =="
	$(PY) manage.py gateway

# A local cluster (distributed mode): two gateways behind a balancer on serve.port, a Celery worker and
# beat, on this machine's PostgreSQL (the database is created when missing) and Redis. Ctrl-C stops it.
CLUSTER_DATABASE_URL ?= $(or $(DATABASE_URL),postgresql://postgres@127.0.0.1:5432/voicecall)
CLUSTER_REDIS_URL ?= $(or $(REDIS_URL),redis://127.0.0.1:6379/0)
CLUSTER_ARGS ?=

cluster: $(RUNTIME_STAMP)
	$(PY) manage.py voicecall cluster --database-url "$(CLUSTER_DATABASE_URL)" --redis-url "$(CLUSTER_REDIS_URL)" $(CLUSTER_ARGS)

test: $(TEST_STAMP)
	@echo "== running the test suite ($(TEST_WORKERS) worker processes) =="
	$(PY) -m pytest -n $(TEST_WORKERS) $(PYTEST_ARGS)

# Every benchmark at small levels (a few minutes), then one table against the targets (bench/README.md).
bench: $(TEST_STAMP)
	$(PY) bench/summary.py

# Hypothesis fuzzing through the real ASGI application (tests/fuzz/): FUZZ_EXAMPLES examples shared by
# the webhook, RPC and media-frame fuzz tests, each example one request or a few frames. Nightly-style:
# it takes many minutes, so the per-test limit is off and the session limit a day. `make test` runs a short version.
FUZZ_EXAMPLES ?= 100000

fuzz: $(TEST_STAMP)
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(PY) -m pytest -n 0 --timeout=0 --session-timeout=86400 tests/fuzz $(PYTEST_ARGS)

migrate: $(RUNTIME_STAMP)
	@echo "== applying the database migrations =="
	$(PY) manage.py migrate --noinput

# A failed venv (no venv module, no ensurepip) is removed, so the next run starts over rather than
# finding a python without pip.
$(VENV)/bin/python:
	@echo "== creating the virtualenv in $(VENV) with $(PYTHON) =="
	@$(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); echo "could not create $(VENV) with $(PYTHON): install Python 3.11 and its venv module (Debian: apt-get install python3-venv), or name another interpreter with PYTHON=/path/to/python3.11" >&2; exit 1; }

# pip's own output (each package, download progress) shows it working; a terminal also gets its progress bars.
PIP_INSTALL := $(PY) -m pip install --disable-pip-version-check

$(RUNTIME_STAMP): requirements.txt | $(VENV)/bin/python
	@echo "== installing the runtime packages into $(VENV) (about 3 min on the first run) =="
	$(PIP_INSTALL) -r requirements.txt
	@touch $@

# requirements-test.txt includes requirements.txt, so this install also satisfies the runtime stamp.
$(TEST_STAMP): requirements.txt requirements-test.txt | $(VENV)/bin/python
	@echo "== installing the runtime and test packages into $(VENV) (a few minutes on the first run) =="
	$(PIP_INSTALL) -r requirements-test.txt
	@touch $@ $(RUNTIME_STAMP)
