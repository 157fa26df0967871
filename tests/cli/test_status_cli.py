"""`etcdlock status`: holders and waiters in queue order, whoever wrote the keys (etcdlock or etcdctl)."""

from __future__ import annotations

import signal

from cli_support import Cli, queue_keys

ROW_FIELDS = {"key", "holder", "host", "pid", "acquired", "fencingToken", "lease", "ttl"}


def _table_rows(output: str) -> list[list[str]]:
    """The table's data rows (after the summary line and the header), split into cells."""
    lines = output.splitlines()
    assert lines[1].split() == ["ROLE", "KEY", "HOLDER", "TOKEN", "LEASE", "TTL"], output
    return [line.split() for line in lines[2:]]


def test_status_of_a_free_lock(cli: Cli, name: str) -> None:
    doc = cli.status(name)
    assert doc["name"] == name and doc["permits"] == 1 and doc["revision"] > 0
    assert doc["holders"] == [] and doc["waiters"] == []
    table = cli.run("status", name)
    assert table.popen.returncode == 0, table.describe()
    assert table.stdout.splitlines() == [f"{name}: 0/1 held, 0 waiting (revision {doc['revision']})"]


def test_status_shows_an_etcdlock_holder_and_waiters_in_queue_order(cli: Cli, name: str) -> None:
    holder = cli.etcdlock("lock", name, "--holder", "batch-job", "--ttl", "30")
    key, token = holder.readlines(2)
    etcdlock_waiter = cli.etcdlock("lock", name, "--holder", "second")
    cli.wait_queue(name, holders=1, waiters=1)
    etcdctl_waiter = cli.etcdctl("lock", name)
    cli.wait_queue(name, holders=1, waiters=2)
    last_waiter = cli.etcdlock("lock", name, "--holder", "fourth")
    doc = cli.wait_queue(name, holders=1, waiters=3)

    (held,) = doc["holders"]
    assert set(held) == ROW_FIELDS
    assert held["key"] == key and held["fencingToken"] == int(token) and held["holder"] == "batch-job"
    assert held["pid"] == holder.pid and held["host"] and held["acquired"]
    assert held["lease"] == key.rsplit("/", 1)[1]
    assert 0 < held["ttl"] <= 30
    assert [w["holder"] for w in doc["waiters"]] == ["second", None, "fourth"]
    assert [w["pid"] for w in doc["waiters"]] == [etcdlock_waiter.pid, None, last_waiter.pid]
    tokens = [w["fencingToken"] for w in doc["waiters"]]
    assert int(token) < tokens[0] < tokens[1] < tokens[2]
    for waiter in (etcdlock_waiter, etcdctl_waiter, last_waiter):
        waiter.assert_waiting()

    table = cli.run("status", name)
    assert table.popen.returncode == 0, table.describe()
    assert table.stdout.splitlines()[0].startswith(f"{name}: 1/1 held, 3 waiting (revision ")
    rows = _table_rows(table.stdout)
    assert [row[:4] for row in rows] == [
        ["holder", key, "batch-job", token],
        *(["waiter", w["key"], w["holder"] or "-", str(w["fencingToken"])] for w in doc["waiters"]),
    ]

    holder.signal(signal.SIGTERM)
    assert holder.wait() == 0, holder.describe()
    doc = cli.wait_queue(name, holders=1, waiters=2)
    assert doc["holders"][0]["holder"] == "second"


def test_status_shows_an_etcdctl_holder_with_no_holder_identity(cli: Cli, name: str) -> None:
    etcdctl = cli.etcdctl("lock", name)
    key = etcdctl.readline()

    doc = cli.status(name)
    (held,) = doc["holders"]
    assert held["key"] == key and held["lease"] == key.rsplit("/", 1)[1]
    assert held["holder"] is None and held["host"] is None and held["pid"] is None
    assert held["acquired"] is None
    assert held["fencingToken"] > 0 and held["ttl"] > 0

    table = cli.run("status", name)
    assert table.popen.returncode == 0 and table.stderr == "", table.describe()
    assert [row[:5] for row in _table_rows(table.stdout)] == [
        ["holder", key, "-", str(held["fencingToken"]), held["lease"]]
    ]
    etcdctl.signal(signal.SIGINT)
    assert etcdctl.wait() == 0, etcdctl.describe()


def test_status_counts_permits_of_a_semaphore(cli: Cli, name: str) -> None:
    holders = [cli.etcdlock("lock", name, "--permits", "2") for _ in range(2)]
    keys = [holder.readlines(2)[0] for holder in holders]
    waiter = cli.etcdlock("lock", name, "--permits", "2")
    doc = cli.wait_queue(name, holders=2, waiters=1)
    assert doc["permits"] == 2 and sorted(h["key"] for h in doc["holders"]) == sorted(keys)
    waiter.assert_waiting()

    table = cli.run("status", name)
    assert table.stdout.splitlines()[0].startswith(f"{name}: 2/2 held, 1 waiting")
    assert [row[0] for row in _table_rows(table.stdout)] == ["holder", "holder", "waiter"]

    # An explicit --permits overrides what the holders wrote.
    wide = cli.run("status", name, "--permits", "3", "-o", "json")
    assert wide.popen.returncode == 0, wide.describe()
    assert '"permits": 3' in wide.stdout

    # A waiter interrupted by SIGTERM gives up (exit 1) and takes its key out of the queue.
    waiter.signal(signal.SIGTERM)
    assert waiter.wait() == 1, waiter.describe()
    *waiting, last = waiter.stderr.splitlines()  # to a pipe, one line per change ahead, then the error
    assert last.startswith("etcdlock: interrupted while waiting"), waiter.stderr
    assert waiting and all(line.startswith(f"waiting for {name}: ") for line in waiting), waiter.stderr
    assert sorted(queue_keys(cli.status(name))) == sorted(keys)
    for holder in holders:
        holder.signal(signal.SIGTERM)
        assert holder.wait() == 0, holder.describe()
    assert queue_keys(cli.status(name)) == []
