# chatwoot-glpi-sync: the two commands a newcomer needs are `make run` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
KAFKA_LIBS := .cache/kafka/libs

.PHONY: bench bench-ingress chaos run test check static fmt fmt-check lint typecheck imports schemas kafka test-unit test-integration \
        test-e2e venv clean

# PYTHONWARNINGS: setuptools prints a banner about editable installs that says nothing to a newcomer.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	PYTHONWARNINGS=ignore $(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	PYTHONWARNINGS=ignore $(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

## Fetch Apache Kafka (KRaft) jars from Maven Central for the test suite (cached).
kafka: $(KAFKA_LIBS)/.fetched
$(KAFKA_LIBS)/.fetched: deploy/kafka/pom.xml
	mkdir -p $(KAFKA_LIBS)
	mvn -q -B -f deploy/kafka/pom.xml dependency:copy-dependencies -DoutputDirectory=$(CURDIR)/$(KAFKA_LIBS)
	touch $@

## Embedded broker + GLPI emulator + worker + a demo conversation; runs until Ctrl-C.
run: venv
	$(VENV)/bin/glpi-sync demo

## The whole test suite (unit, emulator, real Kafka end-to-end).
test: venv kafka
	$(PY) -m pytest --durations=15

test-unit: venv
	$(PY) -m pytest tests/unit

test-integration: venv
	$(PY) -m pytest tests/integration

test-e2e: venv kafka
	$(PY) -m pytest tests/e2e

## The long fault-injection suite: 50 kill -9 points, GLPI faults, a 60 s outage, rebalance and broker restart.
chaos: venv kafka
	$(PY) -m tests.chaos --kills 50 --outage 60

# Throughput against the GLPI emulator (50 ms, 16 slots); numbers into docs/bench.md. Not a test.
bench: venv kafka
	$(PY) -m tests.bench --write docs/bench.md
	$(PY) -m tests.bench --write docs/bench.md --block bench-kinds --capacity 4 \
	    --kind-latency search=0.012,read=0.008,create=0.015,update=0.018,delete=0.015

# Signed webhooks per second through glpi-sync ingress into the test Kafka; numbers into docs/bench.md. Not a test.
bench-ingress: venv kafka
	$(PY) -m tests.bench_ingress --write docs/bench.md

fmt: venv
	$(VENV)/bin/ruff format app tests
	$(VENV)/bin/ruff check --fix app tests

fmt-check: venv
	$(VENV)/bin/ruff format --check app tests

lint: venv
	$(VENV)/bin/ruff check app tests

typecheck: venv
	$(VENV)/bin/mypy

imports: venv
	$(VENV)/bin/lint-imports

static: fmt-check lint typecheck imports

check: static test

schemas: venv
	$(PY) -m app.schema_export schemas/chatwoot

clean:
	rm -rf $(VENV) .cache .pytest_cache .mypy_cache .ruff_cache data
	rm -rf $${TMPDIR:-/tmp}/glpi-sync-demo-* $${TMPDIR:-/tmp}/glpi-sync-chaos-*
