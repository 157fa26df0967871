"""`etcdlock lock` while it waits: on stderr, whom it waits behind and how many are ahead, live.

To a pipe: one plain line per change of the queue ahead. On a terminal (a real pty here): one line
rewritten in place and erased once the lock is acquired. Nothing for a lock that is free at once, nor with
--quiet.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import signal
import struct
import subprocess
import termios
import threading
import uuid
from collections.abc import Callable, Iterator

import pytest
from cli_support import ETCDLOCK, LINE_TIMEOUT, Cli, Proc, clean_env

AGE = r" for \d+s"


def held(cli: Cli, name: str, *args: str) -> tuple[Proc, str, str]:
    """A holder of NAME (etcdlock lock NAME ARGS), once it holds: the process, its key and its token."""
    proc = cli.etcdlock("lock", name, *args)
    key, token = proc.readlines(2)
    return proc, key, token


def etcdctl_queued(cli: Cli, name: str) -> tuple[Proc, str, int]:
    """etcdctl lock NAME behind the one holder, once queued: the process, its key and token (its key's
    value is empty: it names nobody)."""
    proc = cli.etcdctl("lock", name)
    (row,) = cli.wait_queue(name, 1, 1)["waiters"]
    return proc, row["key"], int(row["fencingToken"])


def release(proc: Proc) -> None:
    proc.signal(signal.SIGINT)
    assert proc.wait() == 0, proc.describe()


def test_to_a_pipe_each_change_ahead_is_one_line_naming_the_holder(cli: Cli, name: str) -> None:
    alice, alice_key, alice_token = held(cli, name, "--holder", "alice")
    etcdctl, etcdctl_key, etcdctl_token = etcdctl_queued(cli, name)
    waiter = cli.etcdlock("lock", name)
    first = waiter.stderr_lines(1)[0]
    assert re.fullmatch(
        re.escape(
            f"waiting for {name}: 2 ahead; held by alice (key {alice_key}, fencing token {alice_token})"
        )
        + AGE,
        first,
    ), first

    # A newcomer behind changes nothing ahead: no line. The holder leaving is one line: etcdctl's key names
    # nobody, so the key stands for the holder, with no age (etcdctl writes no time).
    behind = cli.etcdlock("lock", name)
    cli.wait_queue(name, 1, 3)
    release(alice)
    second = waiter.stderr_lines(2)[1]
    assert second == f"waiting for {name}: 1 ahead; held by {etcdctl_key} (fencing token {etcdctl_token})"

    etcdctl.readline()
    release(etcdctl)
    waiter.readlines(2)  # acquired: key and token on stdout
    release(waiter)
    assert waiter.stderr.splitlines() == [first, second], waiter.describe()
    behind.readlines(2)
    release(behind)
    # The first holder found the lock free: it said nothing at all.
    assert alice.stderr == ""


def test_a_semaphore_waiter_names_the_holders_over_the_permits(cli: Cli, name: str) -> None:
    one, one_key, one_token = held(cli, name, "--permits", "2", "--holder", "one")
    two, two_key, two_token = held(cli, name, "--permits", "2", "--holder", "two")
    waiter = cli.etcdlock("lock", name, "--permits", "2")
    line = waiter.stderr_lines(1)[0]
    expected = (
        re.escape(
            f"waiting for {name}: 2 ahead; 2/2 permits held by one (key {one_key}, fencing token {one_token})"
        )
        + AGE
        + re.escape(f", two (key {two_key}, fencing token {two_token})")
        + AGE
    )
    assert re.fullmatch(expected, line), line
    release(one)
    waiter.readlines(2)
    release(waiter)
    release(two)


def test_quiet_says_nothing_while_waiting(cli: Cli, name: str) -> None:
    holder, _, _ = held(cli, name)
    waiter = cli.etcdlock("lock", name, "--quiet")
    cli.wait_queue(name, 1, 1)
    release(holder)
    waiter.readlines(2)
    release(waiter)
    assert waiter.stderr == "", waiter.describe()


class PtyProc:
    """`etcdlock` with its stderr on a real terminal (a pty ``columns`` wide); stdout is a pipe."""

    def __init__(self, argv: list[str], columns: int) -> None:
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
        self._master = master
        self.popen = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=slave,
            env=clean_env(),
            text=True,
            start_new_session=True,
        )
        os.close(slave)
        self._screen = b""
        self._grew = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self._master, 4096)
            except OSError:  # EIO: every writer of the terminal is gone
                chunk = b""
            with self._grew:
                if not chunk:
                    self._grew.notify_all()
                    return
                self._screen += chunk
                self._grew.notify_all()

    def written(self, predicate: Callable[[bytes], bool], timeout: float = LINE_TIMEOUT) -> bytes:
        """Everything written to the terminal, once ``predicate`` holds of it."""
        with self._grew:
            if not self._grew.wait_for(lambda: predicate(self._screen), timeout):
                raise AssertionError(f"the terminal never showed what was expected: {self._screen[-2000:]!r}")
            return self._screen

    def readline(self) -> str:
        """The next stdout line (or "" once stdout closed): call it once the line is known to be due."""
        assert self.popen.stdout is not None
        return self.popen.stdout.readline().rstrip("\n")

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(5)
        self._reader.join(5)
        os.close(self._master)


@pytest.fixture
def on_terminal(cli: Cli) -> Iterator[Callable[..., PtyProc]]:
    started: list[PtyProc] = []

    def start(*args: str, columns: int = 200) -> PtyProc:
        proc = PtyProc([ETCDLOCK, "--endpoints", cli.endpoints, *args], columns)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()


def frames(screen: bytes) -> list[str]:
    """The line's successive states: each drawn as carriage return, text, clear to the end of the line."""
    return [frame.removesuffix("\x1b[K") for frame in screen.decode().split("\r")[1:]]


def test_on_a_terminal_one_line_is_rewritten_as_the_queue_moves_and_erased_once_acquired(
    cli: Cli, on_terminal: Callable[..., PtyProc]
) -> None:
    name = f"tty/{uuid.uuid4().hex[:8]}"  # short: the whole line fits the terminal's 200 columns
    alice, alice_key, alice_token = held(cli, name, "--holder", "alice")
    etcdctl, etcdctl_key, etcdctl_token = etcdctl_queued(cli, name)
    waiter = on_terminal("lock", name)
    first = f"waiting for {name}: 2 ahead; held by alice (key {alice_key}, fencing token {alice_token})"
    waiter.written(lambda screen: first.encode() in screen)

    release(alice)
    second = f"waiting for {name}: 1 ahead; held by {etcdctl_key} (fencing token {etcdctl_token})"
    waiter.written(lambda screen: second.encode() in screen)

    etcdctl.readline()
    release(etcdctl)
    screen = waiter.written(lambda screen: screen.endswith(b"\r\x1b[K"))
    assert waiter.readline().startswith(f"{name}/")  # acquired (stdout is printed after the erase)
    # One line all along: never a newline, every state drawn over the last, the last one erased.
    assert b"\n" not in screen, screen
    states = frames(screen)
    assert states[-1] == "", states
    assert {re.sub(AGE, "", state) for state in states[:-1]} == {first, second}, states


def test_on_a_narrow_terminal_the_line_is_cut_to_its_width(
    cli: Cli, name: str, on_terminal: Callable[..., PtyProc]
) -> None:
    """A line longer than the terminal would wrap, and a carriage return could not rewrite it."""
    holder, _, _ = held(cli, name, "--holder", "alice")
    waiter = on_terminal("lock", name, columns=40)
    start = f"waiting for {name}"[:39]
    cut = f"\r{start}\x1b[K".encode()  # exactly the line's first 39 characters, drawn
    waiter.written(lambda screen: cut in screen)
    release(holder)
    waiter.written(lambda screen: screen.endswith(b"\r\x1b[K"))
    assert waiter.readline().startswith(f"{name}/")
