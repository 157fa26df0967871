"""The demo's account of a lock (``etcdlock_sandbox.handoffs``): turns read from one etcd watch, in
revision order, whoever the contenders are (the real CLI and etcdctl against a real etcd)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from etcdlock_sandbox.etcd import LocalEtcd, etcd_binary
from etcdlock_sandbox.handoffs import HOLDS, JOINED, LEFT, RELEASED, LockWatch, Turn

ETCDLOCK = str(Path(sys.executable).with_name("etcdlock"))
BOUND = 30.0


class Contenders:
    """Lock commands started for a test, each stopped (by its pid) when the test ends."""

    def __init__(self, etcd: LocalEtcd) -> None:
        self.env = {**os.environ, "ETCDLOCK_ENDPOINTS": etcd.endpoint_list}
        self.etcdctl = [etcd_binary("etcdctl"), f"--endpoints={etcd.endpoint_list}"]
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self, command: list[str]) -> subprocess.Popen[bytes]:
        quiet = subprocess.DEVNULL
        self.started.append(subprocess.Popen(command, env=self.env, stdin=quiet, stdout=quiet))
        return self.started[-1]

    def cli(self, name: str, holder: str, *options: str) -> subprocess.Popen[bytes]:
        return self.start([ETCDLOCK, "lock", name, "--holder", holder, *options])

    def stop(self) -> None:
        for process in self.started:
            if process.poll() is None:
                process.kill()
            process.wait()


@pytest.fixture
def contenders(etcd: LocalEtcd) -> Iterator[Contenders]:
    started = Contenders(etcd)
    yield started
    started.stop()


@contextlib.contextmanager
def watching(etcd: LocalEtcd, name: str, permits: int = 1) -> Iterator[LockWatch]:
    watch = LockWatch(etcd.endpoint_list, name, permits).start(BOUND)
    try:
        yield watch
    finally:
        watch.stop()


def until(watch: LockWatch, name: str, step: str) -> list[Turn]:
    """The turns up to (and with) ``name`` taking ``step``."""
    turns = [watch.next(BOUND)]
    while (turns[-1].name, turns[-1].step) != (name, step):
        turns.append(watch.next(BOUND))
    return turns


def steps(turns: list[Turn]) -> list[tuple[str, str]]:
    return [(turn.name, turn.step) for turn in turns]


def test_each_release_comes_before_the_next_holder_at_the_same_revision(
    etcd: LocalEtcd, name: str, contenders: Contenders, tmp_path: Path
) -> None:
    """etcdctl holds until the others are in line (its command waits for a file), then each is served."""
    order = ["etcdctl", "first", "second"]
    done = tmp_path / "done"
    wait = ["sh", "-c", 'until [ -e "$1" ]; do sleep 0.05; done', "sh", str(done)]
    with watching(etcd, name) as watch:
        contenders.start([*contenders.etcdctl, "lock", name, "--", *wait])
        turns = until(watch, "etcdctl", JOINED)
        for holder in order[1:]:
            contenders.cli(name, holder, "--", "true")
            turns += until(watch, holder, JOINED)
        done.touch()
        turns += until(watch, order[-1], RELEASED)
    assert [turn.name for turn in turns if turn.step == JOINED] == order
    handed = [turn for turn in turns if turn.step in (HOLDS, RELEASED)]
    assert steps(handed) == [(holder, step) for holder in order for step in (HOLDS, RELEASED)]
    tokens = [turn.token for turn in handed[::2]]
    assert tokens == sorted(set(tokens))
    holds, releases = handed[::2], handed[1::2]
    assert [turn.revision for turn in holds[1:]] == [turn.revision for turn in releases[:-1]]
    assert all(release.token == hold.token for hold, release in zip(holds, releases, strict=True))


def test_a_waiter_that_gives_up_leaves_without_holding_and_a_holder_from_before_is_reported_first(
    etcd: LocalEtcd, name: str, contenders: Contenders
) -> None:
    holder = contenders.start([*contenders.etcdctl, "lock", name])
    with watching(etcd, name) as early:
        assert steps(until(early, "etcdctl", HOLDS)) == [("etcdctl", JOINED), ("etcdctl", HOLDS)]
    with watching(etcd, name) as watch:
        assert steps(until(watch, "etcdctl", HOLDS)) == [("etcdctl", JOINED), ("etcdctl", HOLDS)]
        waiter = contenders.cli(name, "impatient", "--timeout", "1")
        assert waiter.wait(BOUND) == 2
        assert steps(until(watch, "impatient", LEFT)) == [("impatient", JOINED), ("impatient", LEFT)]
        holder.terminate()
        assert steps(until(watch, "etcdctl", RELEASED)) == [("etcdctl", RELEASED)]


def test_a_semaphore_serves_a_waiter_when_one_of_its_holders_releases(
    etcd: LocalEtcd, name: str, contenders: Contenders
) -> None:
    with watching(etcd, name, permits=2) as watch:
        started = {}
        for holder in ("one", "two", "three"):
            started[holder] = contenders.cli(name, holder, "--permits", "2")
            until(watch, holder, JOINED)
        started["one"].terminate()
        turns = until(watch, "three", HOLDS)
    assert steps(turns) == [("one", RELEASED), ("three", HOLDS)]
    assert turns[0].revision == turns[1].revision
