"""`etcdlock list [PREFIX]`: every lock under a prefix from one range read, whoever wrote its keys."""

from __future__ import annotations

import json
import re
import signal
from typing import Any

from cli_support import Cli, Proc, assert_one_line_error

UNREACHABLE = "http://127.0.0.1:1"
HEADER = ["NAME", "HOLDERS", "WAITING", "HOLDER", "HELD"]


def _rows(proc: Proc) -> list[list[str]]:
    """The table's rows under its header, split into cells (the test's lock names have no spaces)."""
    assert proc.wait() == 0, proc.describe()
    lines = proc.stdout.splitlines()
    assert lines[0].split() == HEADER, proc.stdout
    return [line.split() for line in lines[1:]]


def _listing(cli: Cli, *args: str) -> dict[str, Any]:
    proc = cli.run("list", *args, "-o", "json")
    assert proc.popen.returncode == 0, proc.describe()
    doc: dict[str, Any] = json.loads(proc.stdout)
    return doc


def _hold(cli: Cli, name: str, *args: str) -> tuple[Proc, str]:
    """An `etcdlock lock NAME ARGS` that holds: the process and its key."""
    proc = cli.etcdlock("lock", name, *args)
    key, _token = proc.readlines(2)
    return proc, key


def test_list_shows_etcdctl_and_etcdlock_locks_and_semaphores_sorted_by_name(cli: Cli, name: str) -> None:
    prefix = f"{name}/"
    mutex, etcdctl_lock, semaphore = f"{prefix}b-mutex", f"{prefix}a-etcdctl", f"{prefix}c-sem"
    etcdctl_holder = cli.etcdctl("lock", etcdctl_lock)
    etcdctl_key = etcdctl_holder.readline()
    _holder, mutex_key = _hold(cli, mutex, "--holder", "batch-job")
    cli.etcdctl("lock", mutex)
    cli.etcdlock("lock", mutex, "--holder", "third")
    cli.wait_queue(mutex, holders=1, waiters=2)
    _first, sem_key = _hold(cli, semaphore, "--permits", "2", "--holder", "first")
    _hold(cli, semaphore, "--permits", "2", "--holder", "second")
    cli.etcdlock("lock", semaphore, "--permits", "2")
    sem_status = cli.wait_queue(semaphore, holders=2, waiters=1)
    # Keys under the prefix that are no lock's: no lease, or a lease whose id is not the key's tail.
    for key in (f"{prefix}config/cafe", f"{prefix}plain"):
        assert cli.run_etcdctl("put", key, "x").popen.returncode == 0
    lease_line = cli.run_etcdctl("lease", "grant", "60").stdout
    lease = re.search(r"lease ([0-9a-f]+) granted", lease_line)
    assert lease, lease_line
    assert cli.run_etcdctl("put", f"{prefix}other/1", "x", f"--lease={lease[1]}").popen.returncode == 0

    rows = _rows(cli.run("list", prefix))
    assert [row[:4] for row in rows] == [
        [etcdctl_lock, "1/1", "0", "-"],
        [mutex, "1/1", "2", "batch-job"],
        [semaphore, "2/2", "1", "first"],
    ]
    assert rows[0][4] == "-"  # etcdctl writes no time
    assert all(re.fullmatch(r"\d+[smhd]", row[4]) for row in rows[1:]), rows

    doc = _listing(cli, prefix)
    assert doc["prefix"] == prefix and doc["complete"] is True and doc["revision"] > 0
    by_name = {lock["name"]: lock for lock in doc["locks"]}
    assert list(by_name) == [etcdctl_lock, mutex, semaphore]
    assert by_name[etcdctl_lock]["oldestHolder"]["key"] == etcdctl_key
    assert by_name[etcdctl_lock]["oldestHolder"]["holder"] is None
    assert by_name[mutex]["oldestHolder"]["key"] == mutex_key
    assert (by_name[mutex]["holderCount"], by_name[mutex]["waiterCount"]) == (1, 2)
    sem = by_name[semaphore]
    assert (sem["permits"], sem["holderCount"], sem["waiterCount"]) == (2, 2, 1)
    assert sem["oldestHolder"]["key"] == sem_key
    assert sem["oldestHolder"]["fencingToken"] == sem_status["holders"][0]["fencingToken"]
    assert sem["oldestHolder"]["lease"] == sem_key.rsplit("/", 1)[1]

    etcdctl_holder.signal(signal.SIGINT)
    assert etcdctl_holder.wait() == 0, etcdctl_holder.describe()
    assert [row[0] for row in _rows(cli.run("list", prefix))] == [mutex, semaphore]


def test_list_without_a_prefix_reads_every_key(cli: Cli, name: str) -> None:
    holder = cli.etcdctl("lock", name)
    holder.readline()
    rows = _rows(cli.run("list", "--max-keys", "1000000"))  # the shared etcd holds every test's keys
    assert [name, "1/1", "0", "-", "-"] in rows


def test_list_of_a_prefix_with_no_lock_prints_nothing_and_a_note(cli: Cli, name: str) -> None:
    assert cli.run_etcdctl("put", f"{name}/plain", "x").popen.returncode == 0
    table = cli.run("list", f"{name}/")
    assert table.popen.returncode == 0, table.describe()
    assert table.stdout == ""
    assert table.stderr.splitlines() == [
        f"etcdlock: no lock under {name}/ in etcd (a lock's keys are NAME/<lease id in hex>)"
    ]

    doc = _listing(cli, f"{name}/")
    assert doc["locks"] == [] and doc["complete"] is True


def test_list_past_max_keys_leaves_out_locks_it_may_have_cut_and_says_so(cli: Cli, name: str) -> None:
    first, cut, unread = f"{name}/a", f"{name}/b", f"{name}/c"
    _hold(cli, first)
    _hold(cli, cut)
    cli.etcdlock("lock", cut)
    cli.wait_queue(cut, holders=1, waiters=1)
    _hold(cli, unread)

    proc = cli.run("list", f"{name}/", "--max-keys", "3")
    assert [row[0] for row in _rows(proc)] == [first]
    assert proc.stderr.splitlines() == [
        f"etcdlock: read the first 3 of 4 keys under {name}/ (--max-keys): locks past them are not listed"
    ]
    doc = _listing(cli, f"{name}/", "--max-keys", "3")
    assert doc["complete"] is False and [lock["name"] for lock in doc["locks"]] == [first]

    everything = cli.run("list", f"{name}/", "--max-keys", "4")
    assert [row[0] for row in _rows(everything)] == [first, cut, unread]
    assert everything.stderr == ""


def test_list_errors_are_one_line_and_exit_1(cli: Cli) -> None:
    line = assert_one_line_error(cli.etcdlock_raw("--endpoints", UNREACHABLE, "list"))
    assert line.startswith(f"etcdlock: cannot reach etcd at {UNREACHABLE}")
    line = assert_one_line_error(cli.etcdlock_raw("--endpoints", cli.endpoints, "list", "--max-keys", "0"))
    assert "--max-keys" in line and "must be at least 1" in line
