"""`etcdlock lock` and `etcdctl lock` exclude each other on the same NAME, in both directions."""

from __future__ import annotations

import signal
from pathlib import Path

from cli_support import Cli, queue_keys


def test_etcdlock_try_lock_fails_while_etcdctl_holds(cli: Cli, name: str) -> None:
    etcdctl = cli.etcdctl("lock", name)
    etcdctl_key = etcdctl.readline()
    assert etcdctl_key.startswith(name + "/")

    attempt = cli.run("lock", name, "--timeout", "0")
    assert attempt.popen.returncode == 2, attempt.describe()
    lines = attempt.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("etcdlock:"), attempt.stderr
    assert etcdctl_key in lines[0]
    assert queue_keys(cli.status(name)) == [etcdctl_key]

    etcdctl.signal(signal.SIGINT)  # etcdctl unlocks on SIGINT (SIGTERM would leave the key to expire)
    assert etcdctl.wait() == 0, etcdctl.describe()
    assert queue_keys(cli.status(name)) == []


def test_etcdctl_waits_while_etcdlock_holds_and_gets_the_lock_after_sigterm(cli: Cli, name: str) -> None:
    holder = cli.etcdlock("lock", name)
    holder_key, _ = holder.readlines(2)

    etcdctl = cli.etcdctl("lock", name)
    doc = cli.wait_queue(name, holders=1, waiters=1)
    etcdctl_key = doc["waiters"][0]["key"]
    assert doc["holders"][0]["key"] == holder_key
    etcdctl.assert_waiting()

    holder.signal(signal.SIGTERM)
    assert holder.wait() == 0, holder.describe()
    assert etcdctl.readline() == etcdctl_key
    assert queue_keys(cli.status(name)) == [etcdctl_key]

    etcdctl.signal(signal.SIGINT)
    assert etcdctl.wait() == 0, etcdctl.describe()


def test_etcdlock_waits_while_etcdctl_holds(cli: Cli, name: str) -> None:
    etcdctl = cli.etcdctl("lock", name)
    etcdctl_key = etcdctl.readline()
    waiter = cli.etcdlock("lock", name, "--timeout", "30")
    cli.wait_queue(name, holders=1, waiters=1)
    waiter.assert_waiting()

    etcdctl.signal(signal.SIGINT)
    assert etcdctl.wait() == 0, etcdctl.describe()
    key, _ = waiter.readlines(2)
    assert key != etcdctl_key
    assert queue_keys(cli.status(name)) == [key]
    waiter.signal(signal.SIGTERM)
    assert waiter.wait() == 0, waiter.describe()


def test_etcdlock_and_etcdctl_commands_never_overlap(cli: Cli, name: str, tmp_path: Path) -> None:
    journal = tmp_path / "journal"
    critical = f"echo start $$ >> {journal}; sleep 0.2; echo end $$ >> {journal}"
    procs = []
    for _ in range(3):
        procs.append(cli.etcdlock("lock", name, "--", "sh", "-c", critical))
        procs.append(cli.etcdctl("lock", name, "--", "sh", "-c", critical))
    for proc in procs:
        assert proc.wait(30) == 0, proc.describe()

    entries = [line.split() for line in journal.read_text().splitlines()]
    assert len(entries) == 2 * len(procs)
    for start, end in zip(entries[::2], entries[1::2], strict=True):
        assert start[0] == "start" and end == ["end", start[1]], entries
    assert len({start[1] for start in entries[::2]}) == len(procs)
    assert queue_keys(cli.status(name)) == []
