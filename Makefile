# Two entry points for a fresh machine: `make run` and `make test`.
# Both create .venv on first use and reinstall when pyproject.toml changes.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HASH := $(shell cksum pyproject.toml | cut -d' ' -f1)
STAMP := $(VENV)/.installed-test-$(HASH)
BENCH_STAMP := $(VENV)/.installed-bench-$(HASH)
SOAK_MINUTES ?= 30

.PHONY: run test lint bench bench-codec bench-cluster bench-handover soak clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	rm -f $(VENV)/.installed-test-*
	$(BIN)/pip install -q -e '.[test]'
	touch $@

$(BENCH_STAMP): pyproject.toml $(STAMP)
	rm -f $(VENV)/.installed-bench-*
	$(BIN)/pip install -q -e '.[test,bench]'
	touch $@

run: $(STAMP)
	$(BIN)/relayctl start

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check relay shard_worker supervisor tests bench

bench-codec: $(BENCH_STAMP)
	$(BIN)/python bench/codec.py

bench: $(BENCH_STAMP)
	$(BIN)/python -m bench.run
	$(BIN)/python -m bench.cluster

# The cross-node hop alone: 1 node, 1 node behind HAProxy, 3 nodes behind HAProxy.
bench-cluster: $(BENCH_STAMP)
	$(BIN)/python -m bench.cluster

# Per-room pause while a node scales and restarts its shard workers (live operations).
bench-handover: $(BENCH_STAMP)
	$(BIN)/python -m bench.handover

# A relay under churn, shard kills and bad input for SOAK_MINUTES (default 30);
# fails on leaks, exceeded bounds, lost acknowledged values or unexpected deaths.
soak: $(BENCH_STAMP)
	$(BIN)/python -m bench.soak --minutes $(SOAK_MINUTES)

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
