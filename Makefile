# All setup happens here: a fresh clone with Python 3.11 needs nothing else.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# moto's S3 server (the backup tests' object store) lives in a venv of its own: botocore requires
# python-dateutil<3, kubernetes >=3. Built once; the sandbox finds it through ETCDLOCK_SANDBOX_MOTO_SERVER.
MOTO_VENV := .venv-moto
MOTO_STAMP := $(MOTO_VENV)/.installed

.PHONY: run test lint bench clean

# The product with its operator extra, the test tools, and the sandbox (its own distribution, sandbox/).
$(STAMP): pyproject.toml sandbox/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[operator,test]' -e './sandbox[pytest]'
	touch $(STAMP)

$(MOTO_STAMP):
	$(PYTHON) -m venv $(MOTO_VENV)
	$(MOTO_VENV)/bin/pip install --quiet --upgrade pip
	$(MOTO_VENV)/bin/pip install --quiet 'moto[server]>=5.2.6'
	touch $(MOTO_STAMP)

run test bench: export ETCDLOCK_SANDBOX_MOTO_SERVER := $(CURDIR)/$(MOTO_VENV)/bin/moto_server

run: $(STAMP) $(MOTO_STAMP)
	$(BIN)/python -m etcdlock_sandbox.demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

# Two workers: most tests wait on etcd, kopf or a fault, so two overlap well on two cores. loadfile: a
# file's tests run in one worker, in order (test_etcdcluster.py takes one cluster through its life).
test: lint $(MOTO_STAMP)
	$(BIN)/pytest -n 2 --dist loadfile

bench: $(STAMP) $(MOTO_STAMP)
	$(BIN)/python bench/locks.py
	$(BIN)/python bench/failover.py
	$(BIN)/python bench/etcdcluster.py
	$(BIN)/python bench/faults.py
	$(BIN)/python bench/scale.py
	$(BIN)/python bench/pods.py
	$(BIN)/python bench/backup.py

clean:
	rm -rf $(VENV) $(MOTO_VENV) .pytest_cache .ruff_cache
