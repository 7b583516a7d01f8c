# Countersign: `make run` serves the app on the embedded default (SQLite, no services);
# `make test` runs every check against real PostgreSQL and Redis.

SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
# The agent frameworks' own MCP clients (mcp 1.x), in an environment of their own, as their
# users run them; the MCP tests drive them against Countersign.
AGENT_CLIENTS := .venv-agent-clients
AGENT_CLIENT_REQS := tests/gateway/mcp/agent_clients
PORT ?= 8000
HOST ?= 127.0.0.1
# Where this machine reaches the server: all interfaces (HOST=0.0.0.0) include the loopback,
# and 0.0.0.0 itself is no host name the app answers to (ALLOWED_HOSTS).
LOCAL := $(if $(filter 0.0.0.0 ::,$(HOST)),127.0.0.1,$(HOST))
TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/countersign
TEST_REDIS_URL ?= redis://127.0.0.1:6379/0
# The suite's pytest processes (pytest-xdist; each file's tests stay in one process). Each
# has its own test database, Redis database, Celery queue and var/ (tests/support/parallel.py).
# Three on two cores: many tests wait (on worker processes, servers, browsers, timeouts), and
# a third process fills those waits (on the 2-core machine: 8:27 against 10:24 with two).
TEST_PROCESSES ?= 3
# `make test` lists its 20 slowest tests: the suite must stay under 15 minutes in CI.
# The product's packages, checked by mypy with django-stubs.
TYPED := core config audit tools_registry accounts approvals gateway sandbox

.PHONY: run test lint typecheck bench soak clean chromium

$(PY):
	@python=$$(scripts/find-python) || exit 1; \
	echo "Creating $(VENV) with $$python"; \
	"$$python" -m venv $(VENV) && $(PY) -m pip install --quiet --upgrade pip

$(VENV)/.installed-run: pyproject.toml constraints.txt | $(PY)
	$(PY) -m pip install --quiet -c constraints.txt -e .
	@touch $@

$(VENV)/.installed-dev: pyproject.toml constraints.txt | $(PY)
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	@touch $@ $(VENV)/.installed-run

$(AGENT_CLIENTS)/.installed: $(AGENT_CLIENT_REQS)/requirements.txt $(AGENT_CLIENT_REQS)/constraints.txt clients/python/pyproject.toml
	@python=$$(scripts/find-python) || exit 1; \
	echo "Creating $(AGENT_CLIENTS) (agent frameworks' MCP clients) with $$python"; \
	"$$python" -m venv $(AGENT_CLIENTS) && \
	$(AGENT_CLIENTS)/bin/pip install --quiet -c $(AGENT_CLIENT_REQS)/constraints.txt -r $(AGENT_CLIENT_REQS)/requirements.txt
	@touch $@

run: $(VENV)/.installed-run
	@# A taken port stops here, not after the seeding with uvicorn's "address already in use"
	@# while the demo calls went to whatever holds the port, with this var dir's token.
	@$(PY) -c 'import socket, sys; socket.create_server((sys.argv[1], int(sys.argv[2])), family=socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET).close()' '$(HOST)' '$(PORT)' 2>/dev/null || \
	{ echo "Port $(PORT) on $(HOST) is taken (another make run?): stop it, or make run PORT=8001" >&2; exit 1; }
	@env -u DATABASE_URL -u REDIS_URL $(PY) manage.py migrate --noinput -v0
	@env -u DATABASE_URL -u REDIS_URL PORT=$(PORT) $(PY) manage.py seed_demo
	@echo ""
	@echo "Countersign (embedded: SQLite, in-process executor) on http://$(LOCAL):$(PORT)/"
	@echo "  reviewers:  http://$(LOCAL):$(PORT)/approvals/   (reviewer, reviewer2)"
	@echo "  auditors:   http://$(LOCAL):$(PORT)/audit/       (auditor)"
	@echo "  admins:     http://$(LOCAL):$(PORT)/admin/       (admin)"
	@echo "  agent API:  http://$(LOCAL):$(PORT)/api/v1/docs  (Authorization: Bearer <demo-agent token>)"
	@echo "  MCP:        http://$(LOCAL):$(PORT)/mcp           (same token; see docs/mcp.md)"
	@echo "  health:     http://$(LOCAL):$(PORT)/healthz"
	@echo "  reviewer e-mails (console backend) and sweeps: $${COUNTERSIGN_VAR_DIR:-var}/sweeps.log"
	@echo "  the demo agent's calls (sent once the server is up): $${COUNTERSIGN_VAR_DIR:-var}/demo-calls.log"
	@echo ""
	@# The sweeps (expiry, re-sends, audit sealing) run beside the server, as beat would.
	@export PORT=$(PORT); unset DATABASE_URL REDIS_URL; \
	$(PY) manage.py run_sweeps --loop 5 >$${COUNTERSIGN_VAR_DIR:-var}/sweeps.log 2>&1 & sweeps=$$!; \
	$(PY) manage.py demo_calls --url http://$(LOCAL):$(PORT) >$${COUNTERSIGN_VAR_DIR:-var}/demo-calls.log 2>&1 & \
	trap 'kill $$sweeps 2>/dev/null' EXIT INT TERM; \
	$(PY) -m uvicorn config.asgi:application --host $(HOST) --port $(PORT)

# The browser tests drive Debian's chromium (Playwright, executable /usr/bin/chromium).
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "Installing Debian's chromium for the browser tests"; \
	  sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  export DEBIAN_FRONTEND=noninteractive; \
	  $$sudo apt-get update -qq >/dev/null && \
	  $$sudo apt-get install -y -qq chromium >/dev/null; }

# The two environments and the browser are set up side by side: each mostly waits on
# downloads and disk, and a fresh machine (CI) saves the shorter one's half-minute.
SETUP_FOR_TESTS := $(VENV)/.installed-dev $(AGENT_CLIENTS)/.installed chromium

test:
	@$(MAKE) --no-print-directory -s -j3 --output-sync=target $(SETUP_FOR_TESTS)
	@export DATABASE_URL=$${DATABASE_URL:-$(TEST_DATABASE_URL)} REDIS_URL=$${REDIS_URL:-$(TEST_REDIS_URL)} \
		SECRET_KEY=$${SECRET_KEY:-countersign-tests-only} CELERY_QUEUE=$${CELERY_QUEUE:-countersign-tests}; \
	$(PY) scripts/check_services.py || exit 1; \
	$(VENV)/bin/ruff check . && \
	SANDBOX_ENABLED=1 $(VENV)/bin/mypy $(TYPED) && \
	$(PY) manage.py makemigrations --check --dry-run && \
	$(PY) -m pytest -n $(TEST_PROCESSES) --dist loadfile --no-loadscope-reorder --durations=20 $(PYTEST_ARGS)

lint: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# mypy's Django plugin loads the settings: the sandbox app must be installed to type its models.
typecheck: $(VENV)/.installed-dev
	SANDBOX_ENABLED=1 $(VENV)/bin/mypy $(TYPED)

bench: $(VENV)/.installed-dev
	@export DATABASE_URL=$${DATABASE_URL:-$(TEST_DATABASE_URL)} REDIS_URL=$${REDIS_URL:-$(TEST_REDIS_URL)} \
		SECRET_KEY=$${SECRET_KEY:-countersign-bench-only} SANDBOX_ENABLED=1; \
	$(PY) scripts/check_services.py && for b in bench/bench_*.py; do $(PY) $$b || exit 1; done

# The soak (bench/soak.py; not part of `make test`): 10,000 approved write calls through real
# Celery workers while a fault driver kills, pauses, restarts and slows everything around
# them; fails unless every call took effect exactly once. Under 30 minutes on 2 cores;
# SOAK_ARGS="--calls 500" for a quick one. It creates its own database beside
# DATABASE_URL's (<name>_soak) and runs its own Redis (port 6390: it restarts it), and holds
# the benchmark lock so that no benchmark shares the machine with it.
soak: $(VENV)/.installed-dev
	@export DATABASE_URL=$${DATABASE_URL:-$(TEST_DATABASE_URL)} REDIS_URL=$${REDIS_URL:-$(TEST_REDIS_URL)} \
		SECRET_KEY=$${SECRET_KEY:-countersign-soak-only} CELERY_QUEUE=$${CELERY_QUEUE:-countersign-soak} \
		SANDBOX_ENABLED=1; \
	$(PY) scripts/check_services.py || exit 1; \
	command -v redis-server >/dev/null || { echo "The soak runs a Redis of its own: install redis-server."; exit 1; }; \
	flock /tmp/countersign-bench.lock $(PY) bench/soak.py $(SOAK_ARGS)

clean:
	rm -rf $(VENV) $(AGENT_CLIENTS) var .pytest_cache .mypy_cache .ruff_cache
