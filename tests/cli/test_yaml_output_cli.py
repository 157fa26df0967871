"""`-o yaml` of `status` and `list`: the very document `-o json` prints."""

from __future__ import annotations

import json
from typing import Any

import yaml
from cli_support import Cli


def without_ttls(doc: dict[str, Any]) -> dict[str, Any]:
    """A status document without the TTLs left (they count down between two commands)."""
    rows = ("holders", "waiters")
    return {k: [{**r, "ttl": None} for r in v] if k in rows else v for k, v in doc.items()}


def test_status_as_yaml_is_the_json_document(cli: Cli, name: str) -> None:
    holder = cli.etcdlock("lock", name, "--holder", "yaml-test")
    holder.readlines(2)
    cli.etcdctl("lock", name)
    cli.wait_queue(name, 1, 1)
    as_json = cli.run("status", name, "-o", "json")
    as_yaml = cli.run("status", name, "-o", "yaml")
    assert as_yaml.popen.returncode == 0 and as_yaml.stderr == "", as_yaml.describe()
    doc = yaml.safe_load(as_yaml.stdout)
    assert list(doc) == ["name", "permits", "revision", "holders", "waiters"]
    assert without_ttls(doc) == without_ttls(json.loads(as_json.stdout))
    assert doc["holders"][0]["holder"] == "yaml-test" and doc["waiters"][0]["holder"] is None
    assert all(isinstance(row["ttl"], int) for row in doc["holders"] + doc["waiters"])


def test_list_as_yaml_is_the_json_document(cli: Cli, name: str) -> None:
    holder = cli.etcdlock("lock", f"{name}/a", "--holder", "yaml-test")
    holder.readlines(2)
    as_json = cli.run("list", f"{name}/", "-o", "json")
    as_yaml = cli.run("list", f"{name}/", "-o", "yaml")
    assert as_yaml.popen.returncode == 0 and as_yaml.stderr == "", as_yaml.describe()
    doc = yaml.safe_load(as_yaml.stdout)
    assert doc == json.loads(as_json.stdout)
    assert [lock["name"] for lock in doc["locks"]] == [f"{name}/a"]
