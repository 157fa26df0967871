# All setup happens here: a fresh clone with Python 3.11 needs nothing else.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# moto's S3 server (the backup tests' object store) lives in a venv of its own: botocore requires
# python-dateutil<3, kubernetes >=3. Built once; the sandbox finds it through ETCDLOCK_SANDBOX_MOTO_SERVER.
MOTO_VENV := .venv-moto
MOTO_STAMP := $(MOTO_VENV)/.installed
# Programs from Debian's packages, unpacked here (no root, no services started): etcd 3.4.23 (etcd-server),
# which the sandbox runs for etcd images of the 3.4 minor, and promtool (prometheus), which checks the
# alerting rules. apt-get download needs only the package lists (refreshed once if they are missing).
DEBIAN_PACKAGES := etcd-server prometheus
TOOLS := .tools
TOOLS_STAMP := $(TOOLS)/.installed

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

$(TOOLS_STAMP):
	rm -rf $(TOOLS) && mkdir -p $(TOOLS)/debs
	cd $(TOOLS)/debs && { apt-get download $(DEBIAN_PACKAGES) || { apt-get update && apt-get download $(DEBIAN_PACKAGES); }; }
	for deb in $(TOOLS)/debs/*.deb; do dpkg-deb -x "$$deb" $(TOOLS)/root; done
	rm -rf $(TOOLS)/debs
	touch $(TOOLS_STAMP)

run test bench: export ETCDLOCK_SANDBOX_MOTO_SERVER := $(CURDIR)/$(MOTO_VENV)/bin/moto_server
run test bench: export ETCDLOCK_SANDBOX_ETCD_3_4 := $(CURDIR)/$(TOOLS)/root/usr/bin/etcd
run test bench: export ETCDLOCK_SANDBOX_PROMTOOL := $(CURDIR)/$(TOOLS)/root/usr/bin/promtool

run: $(STAMP) $(MOTO_STAMP) $(TOOLS_STAMP)
	$(BIN)/python -m etcdlock_sandbox.demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

# Three workers on two cores: most tests wait on etcd, kopf, a timer or a fault, so three overlap well
# (measured on 2 cores: 537 s with two, 382 s with three). loadfile: a file's tests run in one worker, in
# order (test_etcdcluster.py takes one cluster through its life).
test: lint $(MOTO_STAMP) $(TOOLS_STAMP)
	$(BIN)/pytest -n 3 --dist loadfile

bench: $(STAMP) $(MOTO_STAMP) $(TOOLS_STAMP)
	$(BIN)/python bench/locks.py
	$(BIN)/python bench/failover.py
	$(BIN)/python bench/etcdcluster.py
	$(BIN)/python bench/faults.py
	$(BIN)/python bench/scale.py
	$(BIN)/python bench/pods.py
	$(BIN)/python bench/backup.py
	$(BIN)/python bench/tls.py

clean:
	rm -rf $(VENV) $(MOTO_VENV) $(TOOLS) .pytest_cache .ruff_cache
