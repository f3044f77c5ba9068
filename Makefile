# The two commands a newcomer needs: `make demo` and `make test`. Everything else is here
# for the people who work on the code.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# npm packages the tests use, each installed from its lock file (rules below); defined before
# the rules that name them, since make reads a rule's prerequisites when it reads the rule.
NODE_MODULES := clients/node/node_modules/.package-lock.json
AXE          := tests/web/node_modules/.package-lock.json

.PHONY: demo test test-slow test-all mutate mutate-quick proto conformance venv clean help bench bench-quick profile soak migration

help:
	@echo "make demo        start a local network (registry + 3 nodes), run queries, show audit, stop"
	@echo "make test        run the test suite (SQLite and PostgreSQL), without the slow part"
	@echo "make test-slow   the slow part: whole networks of processes killed, restarted, rotated (CI runs it)"
	@echo "make test-all    both"
	@echo "make mutate      mutation testing of the security checks (cosmic-ray; about an hour, nice'd)"
	@echo "make mutate-quick a fixed sample of it (minutes); fails when a mutant of a listed check survives"
	@echo "make bench       measure the query path against a bare-gRPC baseline (bench-quick: < 2 min)"
	@echo "make profile     time each step of the query path, then sample the servers under load (py-spy)"
	@echo "make soak        10 minutes of queries under ever new consents; the servers' memory each minute"
	@echo "make proto       regenerate Python stubs from proto/"
	@echo "make conformance regenerate the conformance vectors in conformance/ (fixed keys: same bytes each time)"
	@echo "make migration   write the next schema revision (STORE=node|registry MSG=\"what changed\")"
	@echo "make clean       remove the virtualenv and demo files"

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

# Generated stubs are committed; tests/test_proto_stubs.py fails when they are stale.
proto: $(STAMP)
	$(PY) scripts/gen_proto.py

# The next Alembic revision of a store's schema, from the difference between the code's tables and
# the newest revision (README, "Changing a table").
# The conformance vectors other languages' clients check themselves against (conformance/README.md);
# committed, and tests/test_conformance.py fails when they differ from a fresh generation.
conformance: $(STAMP)
	$(PY) scripts/conformance.py

migration: $(STAMP)
	$(PY) scripts/migration.py $(STORE) "$(MSG)"

# KEEP=1 leaves the network running at the end, with web app links for each role, until Ctrl-C.
demo: $(STAMP)
	$(PY) scripts/demo.py $(if $(KEEP),--keep)

# `make test` leaves out tests marked slow (networks of real processes started, killed and
# restarted again and again, and the longest single checks); `.ci/run` runs them after it.
test: $(STAMP) $(NODE_MODULES) $(AXE)
	$(PY) -m pytest -q -m "not slow"

test-slow: $(STAMP) $(NODE_MODULES) $(AXE)
	$(PY) -m pytest -q -m slow

test-all: $(STAMP) $(NODE_MODULES) $(AXE)
	$(PY) -m pytest -q

# Mutation testing of the security checks: cosmic-ray mutates each module listed in mutation.toml
# and runs only that module's fast tests against each mutant, in a copy of the tree. The report
# (every surviving mutant: file, line, change) is printed and kept in test-output/mutation/.
# Exits non-zero when a mutant survives that mutation.toml does not list as equivalent.
mutate: $(STAMP)
	nice -n 19 $(PY) scripts/mutate.py --jobs 2

mutate-quick: $(STAMP)
	nice -n 19 $(PY) scripts/mutate.py --quick --jobs 2

# The Node.js client's packages (clients/node), exactly as its lock file says, with no install
# scripts; tests/test_node_client.py runs it against a local network (skipped where node is absent).
$(NODE_MODULES): clients/node/package-lock.json
	@if command -v npm >/dev/null; then cd clients/node && npm ci --ignore-scripts --no-audit --no-fund; \
	else echo "npm not found: the Node.js client's tests (clients/node) will be skipped"; fi

# axe-core, which the web app's browser tests inject into each page to check its accessibility
# (tests/web); exactly as its lock file says. Without npm those checks are skipped.
$(AXE): tests/web/package-lock.json
	@if command -v npm >/dev/null; then cd tests/web && npm ci --ignore-scripts --no-audit --no-fund; \
	else echo "npm not found: the web app's accessibility checks (tests/web) will be skipped"; fi

# Figures, not assertions: the query path beside a bare-gRPC baseline, audit, ingestion, fan-out,
# routing, memory. Writes bench/results.json. bench-quick takes under two minutes.
bench: $(STAMP)
	$(PY) bench/run.py

bench-quick: $(STAMP)
	$(PY) bench/run.py --quick

# Where a query's time goes: each named step timed, then the server processes sampled by py-spy.
profile: $(STAMP)
	$(PY) bench/profile.py --sample

# Memory under steady load, each query under a consent never seen before: RSS of the registry and
# a node each minute, and the growth after warm-up. Not part of `make test` or CI.
# SOAK_ARGS="--minutes 3 --rate 50 --db postgresql+psycopg://USER@HOST/DB"
SOAK_ARGS ?=
soak: $(STAMP)
	$(PY) bench/soak.py $(SOAK_ARGS)

clean:
	rm -rf $(VENV) demo-run build *.egg-info

# `make certs`: the national root and the identities docker-compose.yml mounts from ./certs
# (registry-national, node-510000, node-510100, node-310000). Does nothing when a root exists:
# a second root would not be trusted by anything the first one issued.
CERTS         ?= certs
COMPOSE_NODES := 510000 510100 310000

.PHONY: certs
certs: $(STAMP)
	@if [ -f $(CERTS)/ca/ca.crt ]; then \
	  echo "$(CERTS)/ca/ca.crt exists; keeping the existing root and identities"; \
	else \
	  set -e; \
	  $(VENV)/bin/xinyi pki init --dir $(CERTS); \
	  $(VENV)/bin/xinyi pki issue --dir $(CERTS) --role registry --id national; \
	  for node in $(COMPOSE_NODES); do \
	    $(VENV)/bin/xinyi pki issue --dir $(CERTS) --role node --id $$node; \
	  done; \
	fi
