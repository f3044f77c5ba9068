# The two commands a newcomer needs: `make demo` and `make test`. Everything else is here
# for the people who work on the code.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test test-sqlite proto proto-check venv clean help

help:
	@echo "make demo        start a local network (registry + 3 nodes), run queries, show audit, stop"
	@echo "make test        run the test suite (SQLite and PostgreSQL)"
	@echo "make proto       regenerate Python stubs from proto/"
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

demo: $(STAMP)
	$(PY) scripts/demo.py

test: $(STAMP)
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) demo-run build *.egg-info
