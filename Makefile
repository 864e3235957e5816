# Two commands do all set-up on a fresh machine:
#   make run   – install into .venv and start the embedded stack (broker, Redis, worker,
#                console channel workers, admin API and dashboard) with a demo
#   make test  – install into .venv and run lint, types and the whole test suite (on the
#                embedded Tansu broker)
#   make test-kafka – the broker-facing (integration) tests on Apache Kafka, started here
#                from Maven Central's jars (needs Java 17+ and Maven)
PYTHON ?= python3.11
# Test processes (pytest-xdist): the integration tests mostly wait on their subprocesses,
# so four keep two cores busy; TEST_WORKERS=0 runs everything in one process.
TEST_WORKERS ?= 4
# The Kafka leg: one process, as it always ran — its JVMs (the node, the chaos run's three,
# the SASL node) take the CPU, and runs with four (and one with two) failed under the load.
KAFKA_TEST_WORKERS ?= 0
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test test-kafka lint bench chaos clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/dripstream dev --demo

lint: $(STAMP)
	$(BIN)/ruff check streams agents tables producers api tests bench
	$(BIN)/mypy

test: lint
	$(BIN)/pytest -n $(TEST_WORKERS) --maxschedchunk 2 --durations=15

test-kafka: $(STAMP)
	DRIPSTREAM_TEST_BROKER=kafka $(BIN)/pytest -m "integration and not surface" -n $(KAFKA_TEST_WORKERS) --maxschedchunk 2 --durations=15

bench: $(STAMP)
	$(BIN)/python -m bench

# The chaos run (docs/reliability.md): 20k contacts, 10 minutes of faults, every output
# checked. Not in `make test` (its 2-minute variant is: tests/integration/test_chaos.py).
chaos: $(STAMP)
	$(BIN)/python -m bench.chaos $(CHAOS_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
