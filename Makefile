# The README's two commands are `make demo` and `make test`; .ci/run calls `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
# the suite's processes (pytest-xdist): most tests wait on servers and child processes, so two use both cores;
# PYTEST_WORKERS=0 runs it in this one process
PYTEST_WORKERS ?= 2

.PHONY: setup setup-test demo test test-long lint audit clean

setup:
	scripts/bootstrap run

setup-test:
	scripts/bootstrap test

demo: setup
	$(VENV)/bin/dcpue demo $(DEMO_ARGS)

test: setup-test
	$(PY) -m pytest -n $(PYTEST_WORKERS) --dist worksteal $(PYTEST_ARGS)

# the long profiles of the fault-injection and fuzz suites (docs/reliability.md, docs/testing.md)
test-long: setup-test
	FAULTS_PROFILE=long FUZZ_PROFILE=long $(PY) -m pytest tests/faults tests/fuzz -p no:cacheprovider $(PYTEST_ARGS)

lint: setup-test
	$(PY) -m pip install -q ruff
	$(VENV)/bin/ruff check dcpue ingest analytics dashboards tests

audit: setup-test
	scripts/audit

clean:
	rm -rf $(VENV) dcpue-data tests/artifacts *.egg-info build
