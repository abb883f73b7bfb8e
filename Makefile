# Every target creates .venv and installs the package (with dev extras) first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
# Empty: every .proto in the repo (rpc.protogen.discover_protos), the same list
# tests/test_generated_code.py checks. `make proto PROTOS=a.proto` for just one.
PROTOS ?=

.PHONY: all test lint proto demo rpc-demo run bench bench-compare chaos clean

all: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not chaos"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy --strict rpc raft kvserver clerk

proto: $(STAMP)
	$(BIN)/python -m rpc.protogen $(PROTOS)

demo: $(STAMP)
	$(BIN)/python -m kvserver.demo

rpc-demo: $(STAMP)
	$(BIN)/python -m examples.demo

run: $(STAMP)
	$(BIN)/raftCoreRun -n 3 -f test.conf --keep-config --data-dir data

bench: $(STAMP)
	$(BIN)/python -m pip install -q -e '.[bench]'
	$(BIN)/python benchmarks/rpc_bench.py
	$(BIN)/python benchmarks/core_bench.py
	$(BIN)/python benchmarks/wal_bench.py
	$(BIN)/python benchmarks/raft_bench.py

# Ours vs PySyncObj vs etcd 3.4 on 127.0.0.1 (< 10 min; COMPARE_ARGS=--quick: ~2 min).
# The setup step apt-get installs etcd where it can, else says why and etcd is skipped.
COMPARE_ARGS ?=
bench-compare: $(STAMP)
	$(BIN)/python -m pip install -q -e '.[compare]'
	$(BIN)/python benchmarks/peers/setup.py
	$(BIN)/python benchmarks/compare.py $(COMPARE_ARGS)

chaos: $(STAMP)
	$(BIN)/python -m pytest -q -m chaos -p no:cacheprovider

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
