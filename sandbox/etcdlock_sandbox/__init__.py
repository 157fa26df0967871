"""Local stand-ins for the infrastructure etcdlock runs on (etcd processes today), for tests and demos.

A distribution of its own (etcdlock-sandbox) that depends on etcdlock; nothing in etcdlock imports it
(an import-linter contract in `make lint` holds this).
"""
