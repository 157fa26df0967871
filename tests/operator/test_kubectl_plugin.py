"""``kubectl etcdlock``: the real kubectl runs the plugin (``kubectl-etcdlock`` on PATH, as the package
installs it) against the API emulator, with the operator serving the module's namespace as a process and
holders that are real ``etcdlock lock`` processes and pods.

What an admin sees (every lock across namespaces, one lock's queue) and what an admin's release does: a
fenced delete of exactly the contender named, done by the operator and recorded in an Event and in status;
refused (deleting nothing) for a stale token, a key that is not this lock's, a malformed request; answered
after an operator restart.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes
import pytest
from operator_support import (
    GROUP,
    PLURAL,
    VERSION,
    Operated,
    create_lock,
    event_reasons,
    events_of,
    eventually,
    status_of,
)

from etcdlock.operator.names import LOCK_ANNOTATION, STATE_ANNOTATION, TOKEN_ANNOTATION
from etcdlock.operator.releaserequest import RELEASE_ANNOTATION
from etcdlock_sandbox.etcd import LocalEtcd

KUBECTL = "/usr/bin/kubectl" if os.path.exists("/usr/bin/kubectl") else shutil.which("kubectl") or "kubectl"
BIN = Path(sys.executable).parent  # where the package installs etcdlock and kubectl-etcdlock
ETCDLOCK = str(BIN / "etcdlock")
RUN_TIMEOUT = 90.0
LINE_TIMEOUT = 60.0
EXIT_LOST = 3


@pytest.fixture(scope="module")
def plugin_env(kubeconfig: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """What a user's shell gives kubectl: PATH with the plugin on it, a HOME of its own, the kubeconfig."""
    env = {
        "PATH": f"{BIN}:/usr/bin:/bin",
        "HOME": str(tmp_path_factory.mktemp("kubectl-home")),
        "KUBECONFIG": str(kubeconfig),
    }
    if "PYTHONPATH" in os.environ:  # the package under test, when it is not installed
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return env


def plugin(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``kubectl etcdlock ARGS`` to the end (bounded)."""
    return subprocess.run(
        [KUBECTL, "etcdlock", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )


def plugin_annotate(
    env: dict[str, str], namespace: str, name: str, *args: str
) -> subprocess.CompletedProcess[str]:
    """``kubectl annotate distributedlock NAME ARGS``: what an admin (or anyone who may patch) writes."""
    return subprocess.run(
        [KUBECTL, "annotate", "distributedlock", name, "-n", namespace, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, f"exit {done.returncode}: {done.stderr}"
    return done.stdout


def user_of(kubeconfig: Path) -> str:
    """The user the kubeconfig's current context names (the emulator has no authentication to ask)."""
    config = json.loads(kubeconfig.read_text())
    current = next(c for c in config["contexts"] if c["name"] == config["current-context"])
    return str(current["context"]["user"])


class Holder:
    """``etcdlock lock KEY -- sh -c 'echo KEY TOKEN; sleep'``: a CLI holder (or waiter) that says when it
    holds; stopped by its process group at the end."""

    def __init__(self, etcd: LocalEtcd, lock_key: str, name: str) -> None:
        command = 'echo "$ETCDLOCK_KEY $ETCDLOCK_FENCING_TOKEN"; exec sleep 600'
        argv = [ETCDLOCK, "--endpoints", etcd.endpoint_list, "lock", lock_key, "--holder", name]
        self.popen = subprocess.Popen(
            [*argv, "--", "sh", "-c", command],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self._lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self._lines.put(line)

    def holds(self, timeout: float = LINE_TIMEOUT) -> tuple[str, int]:
        """The key and fencing token, once it holds."""
        try:
            key, token = self._lines.get(timeout=timeout).split()
        except queue.Empty:
            raise AssertionError(f"{self.popen.args} did not acquire within {timeout}s") from None
        return key, int(token)

    def exit_status(self, timeout: float = LINE_TIMEOUT) -> tuple[int, str]:
        code = self.popen.wait(timeout)
        assert self.popen.stderr is not None
        return code, self.popen.stderr.read()

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(10)


@pytest.fixture
def holders(etcd: LocalEtcd) -> Iterator[list[Holder]]:
    started: list[Holder] = []
    yield started
    for holder in started:
        holder.stop()


def start(holders: list[Holder], etcd: LocalEtcd, lock_key: str, name: str) -> Holder:
    holder = Holder(etcd, lock_key, name)
    holders.append(holder)
    return holder


def lock_key(namespace: str, name: str) -> str:
    return f"/etcdlock/locks/{namespace}/{name}"


def new_lock(operated: Operated, prefix: str) -> str:
    """A lock in the module's namespace, served (its status says Free)."""
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    create_lock(operated.api, operated.namespace, name, {})
    eventually(lambda: status_of(operated.api, operated.namespace, name), _phase("Free"), f"{name} served")
    return name


def _phase(expected: str) -> Any:
    return lambda status: status.get("phase") == expected


def listed(operated: Operated, name: str, key: str) -> None:
    """Wait until the lock's status lists ``key`` among its holders."""
    eventually(
        lambda: status_of(operated.api, operated.namespace, name),
        lambda status: key in [e["key"] for e in status.get("holders") or ()],
        f"{key} among the holders of {name}",
    )


def etcd_key(etcd: LocalEtcd, key: str) -> dict[str, Any] | None:
    """The key as etcd has it (create_revision, lease), or None."""
    done = etcd.etcdctl("get", key, "-w", "json")
    assert done.returncode == 0, done.stderr
    kvs = json.loads(done.stdout).get("kvs") or []
    return dict(kvs[0]) if kvs else None


def etcd_keys_under(etcd: LocalEtcd, prefix: str) -> list[tuple[str, int]]:
    done = etcd.etcdctl("get", prefix, "--prefix", "-w", "json")
    assert done.returncode == 0, done.stderr
    kvs = json.loads(done.stdout).get("kvs") or []
    return [(base64.b64decode(kv["key"]).decode(), int(kv["create_revision"])) for kv in kvs]


def lock_object(operated: Operated, name: str) -> dict[str, Any]:
    objects = kubernetes.client.CustomObjectsApi(operated.api)
    return dict(objects.get_namespaced_custom_object(GROUP, VERSION, operated.namespace, PLURAL, name))


def annotate(operated: Operated, name: str, value: str | None) -> None:
    objects = kubernetes.client.CustomObjectsApi(operated.api)
    patch = {"metadata": {"annotations": {RELEASE_ANNOTATION: value}}}
    objects.patch_namespaced_custom_object(GROUP, VERSION, operated.namespace, PLURAL, name, patch)


def answered(operated: Operated, name: str) -> dict[str, Any]:
    """status.lastAdminRelease, once the request on the lock is answered and the annotation removed."""
    lock = eventually(
        lambda: lock_object(operated, name),
        lambda lock: (
            RELEASE_ANNOTATION not in (lock["metadata"].get("annotations") or {})
            and (lock.get("status") or {}).get("lastAdminRelease")
        ),
        f"the release request on {name} answered",
    )
    return dict(lock["status"]["lastAdminRelease"])


def messages(operated: Operated, name: str, reason: str) -> list[str]:
    return [message for r, message in events_of(operated.api, operated.namespace, name) if r == reason]


# What an admin sees


def test_locks_shows_holders_and_queue_lengths_across_namespaces(
    operated: Operated, etcd: LocalEtcd, plugin_env: dict[str, str], holders: list[Holder]
) -> None:
    ns = operated.namespace
    name = new_lock(operated, "seen")
    first = start(holders, etcd, lock_key(ns, name), "nightly-report")
    key, token = first.holds()
    start(holders, etcd, lock_key(ns, name), "second")
    start(holders, etcd, lock_key(ns, name), "third")
    eventually(lambda: status_of(operated.api, ns, name), lambda s: s.get("waiterCount") == 2, "two waiters")
    other_ns = f"elsewhere-{uuid.uuid4().hex[:6]}"
    core = kubernetes.client.CoreV1Api(operated.api)
    core.create_namespace({"metadata": {"name": other_ns}})
    try:
        create_lock(operated.api, other_ns, "unserved", {})
        everywhere = ok(plugin(plugin_env, "locks", "-A")).splitlines()
        mine = ok(plugin(plugin_env, "locks", "-n", ns)).splitlines()
        as_json = json.loads(ok(plugin(plugin_env, "locks", "--namespace", ns, "-o", "json")))
    finally:
        core.delete_namespace(other_ns)

    assert everywhere[0].split()[:4] == ["NAMESPACE", "NAME", "HELD", "WAITING"]
    row = next(line.split() for line in everywhere if name in line)
    assert row[:6] == [ns, name, "1/1", "2", "nightly-report", str(token)]
    assert row[-2:] == ["True", "Held"]
    assert any(line.split()[:2] == [other_ns, "unserved"] for line in everywhere)
    assert mine[0].split()[:2] == ["NAME", "HELD"]
    assert not any("unserved" in line for line in mine)
    (entry,) = (e for e in as_json if e["name"] == name)
    assert (entry["holderCount"], entry["waiterCount"], entry["ready"]) == (1, 2, "True")
    assert entry["holders"][0]["key"] == key


def test_queue_shows_holders_then_waiters_in_arrival_order(
    operated: Operated, etcd: LocalEtcd, plugin_env: dict[str, str], holders: list[Holder]
) -> None:
    ns = operated.namespace
    name = new_lock(operated, "queue")
    start(holders, etcd, lock_key(ns, name), "first").holds()
    for who in ("second", "third"):
        start(holders, etcd, lock_key(ns, name), who)
        eventually(
            lambda: status_of(operated.api, ns, name),
            lambda s, who=who: who in [w["holder"] for w in s.get("waiters") or ()],
            f"{who} waiting",
        )

    table = ok(plugin(plugin_env, "queue", name, "-n", ns)).splitlines()
    doc = json.loads(ok(plugin(plugin_env, "queue", name, "-n", ns, "-o", "json")))

    assert table[0].split()[:5] == ["#", "STATE", "HOLDER", "KEY", "TOKEN"]
    assert [line.split()[:3] for line in table[1:]] == [
        ["1", "holding", "first"],
        ["2", "waiting", "second"],
        ["3", "waiting", "third"],
    ]
    tokens = [row["fencingToken"] for row in doc["queue"]]
    assert tokens == sorted(tokens)
    assert [row["key"] for row in doc["queue"]] == [
        k for k, _ in etcd_keys_under(etcd, lock_key(ns, name) + "/")
    ]


def test_the_kubeconfig_and_context_flags_reach_kubectl(
    operated: Operated, kubeconfig: Path, plugin_env: dict[str, str]
) -> None:
    name = new_lock(operated, "flags")
    env = {k: v for k, v in plugin_env.items() if k != "KUBECONFIG"}
    context = json.loads(kubeconfig.read_text())["current-context"]
    given = ["--kubeconfig", str(kubeconfig), "--context", context, "-n", operated.namespace]

    found = plugin(env, "locks", *given)
    wrong = plugin(env, "locks", "--kubeconfig", str(kubeconfig), "--context", "no-such-context")

    assert found.returncode == 0, found.stderr
    assert any(line.split()[:1] == [name] for line in found.stdout.splitlines())
    assert wrong.returncode == 1
    assert wrong.stderr.count("\n") == 1 and "no-such-context" in wrong.stderr


def test_a_lock_that_does_not_exist_is_one_line_from_kubectl(
    operated: Operated, plugin_env: dict[str, str]
) -> None:
    done = plugin(plugin_env, "queue", "no-such-lock", "-n", operated.namespace)
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1
    assert "not found" in done.stderr


def test_a_release_without_a_key_or_token_is_one_line(operated: Operated, plugin_env: dict[str, str]) -> None:
    done = plugin(plugin_env, "release", "any", "-n", operated.namespace)
    assert (done.returncode, done.stderr) == (
        1,
        "kubectl etcdlock: name the contender to release: --key KEY or --token N (or both)\n",
    )


@pytest.mark.parametrize(
    ("flags", "why"),
    [
        (["--wait", "nan"], "argument --wait: must be a finite number of seconds, 0 or more, not 'nan'"),
        (["--wait", "inf"], "argument --wait: must be a finite number of seconds, 0 or more, not 'inf'"),
        (["--wait", "-1"], "argument --wait: must be a finite number of seconds, 0 or more, not '-1'"),
        (["--wait", "soon"], "argument --wait: not a number of seconds: 'soon'"),
        (["--token", str(2**63)], f"argument --token: a fencing token is from 1 to {2**63 - 1}, not {2**63}"),
        (["--token", "0"], f"argument --token: a fencing token is from 1 to {2**63 - 1}, not 0"),
        (
            ["--token", "9" * 5000],
            f"argument --token: a fencing token is from 1 to {2**63 - 1}, not 5000 characters",
        ),
        (["--token", "12abc"], "argument --token: not an integer: '12abc'"),
        (["--reason", "r" * 257], "argument --reason: at most 256 characters, not 257"),
        (["--key", "a\x01b"], "argument --key: the key 'a\\x01b' has a character that is not printable"),
        (["--key", "k" * 1025], "argument --key: the key is longer than 1024 characters"),
    ],
)
def test_a_release_with_a_flag_out_of_bounds_is_one_line_and_writes_nothing(
    operated: Operated, plugin_env: dict[str, str], flags: list[str], why: str
) -> None:
    """Refused before anything is written on the lock (NaN as --wait once waited forever)."""
    ns = operated.namespace
    name = new_lock(operated, "flags")
    named = ["--key", f"{lock_key(ns, name)}/1", "--token", "5"]

    done = plugin(plugin_env, "release", name, "-n", ns, *named, "--wait", "1", *flags)

    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == f"kubectl etcdlock: {why} (see kubectl etcdlock release --help)\n"
    assert RELEASE_ANNOTATION not in (lock_object(operated, name)["metadata"].get("annotations") or {})


@pytest.mark.parametrize(
    "args",
    [
        ["queue", "Not_A_Name"],
        ["queue", "--", "--raw=/api/v1/secrets"],
        ["release", "--", "-x", "--token", "5"],
    ],
)
def test_a_name_that_is_no_locks_is_one_line_never_a_flag_of_kubectl(
    plugin_env: dict[str, str], args: list[str]
) -> None:
    done = plugin(plugin_env, *args)
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr.startswith("kubectl etcdlock: argument NAME: not the name of a DistributedLock: ")
    assert done.stderr.count("\n") == 1


def test_locks_with_an_output_format_it_has_not_is_one_line(plugin_env: dict[str, str]) -> None:
    done = plugin(plugin_env, "locks", "-A", "-o", "yaml")
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == (
        "kubectl etcdlock: argument -o/--output: invalid choice: 'yaml' (choose from 'table', 'json') "
        "(see kubectl etcdlock locks --help)\n"
    )


# Releasing


def test_an_admin_releases_a_stuck_cli_holder_and_the_next_waiter_gets_a_higher_token(
    operated: Operated,
    etcd: LocalEtcd,
    kubeconfig: Path,
    plugin_env: dict[str, str],
    holders: list[Holder],
) -> None:
    ns = operated.namespace
    name = new_lock(operated, "stuck")
    stuck = start(holders, etcd, lock_key(ns, name), "stuck-job")
    old_key, old_token = stuck.holds()
    waiter = start(holders, etcd, lock_key(ns, name), "next-job")
    listed(operated, name, old_key)
    eventually(lambda: status_of(operated.api, ns, name), lambda s: s.get("waiterCount") == 1, "a waiter")

    done = plugin(plugin_env, "release", name, "-n", ns, "--token", str(old_token), "--reason", "hung on NFS")

    user = user_of(kubeconfig)
    expected = f"{old_key} (fencing token {old_token}, holder stuck-job) released at the request of {user}"
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{expected}: hung on NFS\n"
    code, stderr = stuck.exit_status()
    assert code == EXIT_LOST and "lock lost" in stderr, stderr
    new_key, new_token = waiter.holds()
    assert new_token > old_token and new_key != old_key
    # The old holder's own fenced release, on its way out, deleted nothing of the new holder's.
    kept = etcd_key(etcd, new_key)
    assert kept is not None and int(kept["create_revision"]) == new_token
    assert waiter.popen.poll() is None
    record = status_of(operated.api, ns, name)["lastAdminRelease"]
    assert (record["outcome"], record["key"], record["fencingToken"]) == ("Released", old_key, old_token)
    assert (record["holder"], record["requestedBy"], record["reason"]) == ("stuck-job", user, "hung on NFS")
    event_reasons(operated.api, ns, name, "ReleasedByAdmin")
    assert RELEASE_ANNOTATION not in (lock_object(operated, name)["metadata"].get("annotations") or {})
    # Answered once, though the status and the queue changed (watch events carrying the request) meanwhile.
    assert messages(operated, name, "ReleasedByAdmin") == [f"{expected}: hung on NFS"]
    assert messages(operated, name, "AdminReleaseRefused") == []


def test_a_release_by_key_alone_takes_the_token_from_the_status(
    operated: Operated, etcd: LocalEtcd, plugin_env: dict[str, str], holders: list[Holder]
) -> None:
    ns = operated.namespace
    name = new_lock(operated, "bykey")
    holder = start(holders, etcd, lock_key(ns, name), "by-key")
    key, token = holder.holds()
    listed(operated, name, key)

    done = plugin(plugin_env, "release", name, "-n", ns, "--key", key)

    assert done.returncode == 0, done.stderr
    assert f"(fencing token {token}, holder by-key)" in done.stdout
    assert holder.exit_status()[0] == EXIT_LOST
    assert etcd_key(etcd, key) is None


def test_a_release_is_written_though_the_lock_changes_meanwhile(
    operated: Operated, etcd: LocalEtcd, plugin_env: dict[str, str], holders: list[Holder]
) -> None:
    """The operator writes the lock's status whenever its queue moves, between the plugin's read of the
    lock and its write of the request (pinned to the version read): the plugin reads again and writes,
    rather than failing with kubectl's conflict."""
    ns = operated.namespace
    name = new_lock(operated, "busy")
    holder = start(holders, etcd, lock_key(ns, name), "busy-holder")
    key, token = holder.holds()
    objects = kubernetes.client.CustomObjectsApi(operated.api)
    stop = threading.Event()

    def churn() -> None:
        for count in range(40):
            if stop.is_set():
                return
            patch = {"metadata": {"labels": {"churn": str(count)}}}
            objects.patch_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name, patch)
            stop.wait(0.02)

    churning = threading.Thread(target=churn)
    churning.start()
    try:
        done = plugin(plugin_env, "release", name, "-n", ns, "--key", key, "--token", str(token))
    finally:
        stop.set()
        churning.join()

    assert done.returncode == 0, done.stderr
    assert holder.exit_status()[0] == EXIT_LOST


def test_a_stale_token_is_refused_and_deletes_nothing(
    operated: Operated, etcd: LocalEtcd, plugin_env: dict[str, str], holders: list[Holder]
) -> None:
    ns = operated.namespace
    name = new_lock(operated, "stale")
    holder = start(holders, etcd, lock_key(ns, name), "current")
    key, token = holder.holds()

    done = plugin(plugin_env, "release", name, "-n", ns, "--key", key, "--token", str(token - 1))

    assert done.returncode == 1
    assert done.stderr == (
        f"kubectl etcdlock: StaleToken: release request refused: {key} has fencing token {token}, not "
        f"{token - 1} (another holder since); nothing was deleted\n"
    )
    kept = etcd_key(etcd, key)
    assert kept is not None and int(kept["create_revision"]) == token
    assert holder.popen.poll() is None
    event_reasons(operated.api, ns, name, "AdminReleaseRefused")


def test_a_key_released_already_is_refused_as_not_found(
    operated: Operated, etcd: LocalEtcd, plugin_env: dict[str, str], holders: list[Holder]
) -> None:
    ns = operated.namespace
    name = new_lock(operated, "gone")
    holder = start(holders, etcd, lock_key(ns, name), "leaving")
    key, token = holder.holds()
    holder.popen.send_signal(signal.SIGTERM)
    holder.exit_status()
    assert etcd_key(etcd, key) is None

    done = plugin(plugin_env, "release", name, "-n", ns, "--key", key, "--token", str(token))

    assert done.returncode == 1
    assert done.stderr.startswith(f"kubectl etcdlock: KeyNotFound: release request refused: {key} is not")


def test_keys_that_are_not_this_locks_contenders_are_refused_and_untouched(
    operated: Operated, etcd: LocalEtcd, plugin_env: dict[str, str], holders: list[Holder]
) -> None:
    """Another lock's holder, the same lock name in another namespace, the operator's election: whoever may
    patch this lock reaches none of them through it."""
    ns = operated.namespace
    name = new_lock(operated, "mine")
    other = new_lock(operated, "theirs")
    theirs = start(holders, etcd, lock_key(ns, other), "their-job")
    their_key, their_token = theirs.holds()
    elsewhere = start(holders, etcd, lock_key("another-namespace", name), "elsewhere")
    far_key, far_token = elsewhere.holds()
    election = etcd_keys_under(etcd, "/etcdlock/operator/leader/")
    assert election
    targets = [(their_key, their_token), (far_key, far_token), *election[:1]]

    for key, token in targets:
        done = plugin(plugin_env, "release", name, "-n", ns, "--key", key, "--token", str(token))
        assert done.returncode == 1
        assert done.stderr.startswith(
            f"kubectl etcdlock: NotThisLock: release request refused: {key!r} is not"
        )
        kept = etcd_key(etcd, key)
        assert kept is not None and int(kept["create_revision"]) == token

    assert theirs.popen.poll() is None and elsewhere.popen.poll() is None
    assert operated.operator.ready()


@pytest.mark.parametrize(
    ("annotation", "why"),
    [
        ("not json", "the request is not JSON"),
        ('{"key": "/etcdlock/locks/x/y/1"}', "fencingToken must be a positive integer, not None"),
    ],
)
def test_a_malformed_request_is_a_warning_event_not_a_crash(
    operated: Operated, annotation: str, why: str
) -> None:
    name = new_lock(operated, "malformed")

    annotate(operated, name, annotation)

    record = answered(operated, name)
    assert record["outcome"] == "InvalidRequest"
    assert record["message"] == f"release request refused: {why}; nothing was deleted"
    event_reasons(operated.api, operated.namespace, name, "AdminReleaseRefused")
    assert operated.operator.ready()


@pytest.mark.parametrize(
    ("contender", "token", "why"),
    [
        (
            "1",
            str(2**63),
            "fencingToken 9223372036854775808 is beyond etcd's revisions (at most 9223372036854775807)",
        ),
        ("1", "0", "fencingToken must be a positive integer, not 0"),
        ("1", "true", "fencingToken must be a positive integer, not True"),
        ("1", "1.5", "fencingToken must be a positive integer, not 1.5"),
        ("\\ud800", "5", "the key '{key}\\ud800' has a character that is not printable"),
        ("\\u0000", "5", "the key '{key}\\x00' has a character that is not printable"),
    ],
)
def test_a_hand_written_request_out_of_bounds_is_refused_and_removed(
    operated: Operated, plugin_env: dict[str, str], contender: str, token: str, why: str
) -> None:
    """Written with kubectl annotate, as anyone who may patch the lock can: answered InvalidRequest (a
    Warning Event, the status, the annotation removed), never an exception in the operator's handler."""
    ns = operated.namespace
    name = new_lock(operated, "handmade")
    key = lock_key(ns, name) + "/"
    annotation = f'{{"key": "{key}{contender}", "fencingToken": {token}}}'

    ok(plugin_annotate(plugin_env, ns, name, f"{RELEASE_ANNOTATION}={annotation}"))

    record = answered(operated, name)
    assert record["outcome"] == "InvalidRequest"
    assert record["message"] == f"release request refused: {why.format(key=key)}; nothing was deleted"
    event_reasons(operated.api, ns, name, "AdminReleaseRefused")
    assert operated.operator.ready()


@pytest.mark.parametrize(
    ("annotation", "why"),
    [("[" * 10_000, "nested too deeply"), ("[" * 100_000, "longer than 16384 characters")],
)
def test_a_request_nested_too_deeply_or_too_long_is_refused_and_removed(
    operated: Operated, plugin_env: dict[str, str], annotation: str, why: str
) -> None:
    ns = operated.namespace
    name = new_lock(operated, "nested")

    ok(plugin_annotate(plugin_env, ns, name, f"{RELEASE_ANNOTATION}={annotation}"))

    record = answered(operated, name)
    assert record["outcome"] == "InvalidRequest"
    assert record["message"] == f"release request refused: the request is {why}; nothing was deleted"
    event_reasons(operated.api, ns, name, "AdminReleaseRefused")
    assert operated.operator.ready()


def test_a_pending_request_is_not_overwritten_and_is_answered_after_an_operator_restart(
    operated: Operated, etcd: LocalEtcd, plugin_env: dict[str, str], holders: list[Holder]
) -> None:
    ns = operated.namespace
    name = new_lock(operated, "restart")
    holder = start(holders, etcd, lock_key(ns, name), "outlives-operator")
    key, token = holder.holds()
    listed(operated, name, key)
    operated.operator.stop()
    try:
        unanswered = plugin(plugin_env, "release", name, "-n", ns, "--token", str(token), "--wait", "1")
        again = plugin(plugin_env, "release", name, "-n", ns, "--token", str(token))
        assert holder.popen.poll() is None
    finally:
        operated.operator.start().wait("ready", 60)

    assert unanswered.returncode == 2
    assert unanswered.stderr.startswith(
        "kubectl etcdlock: the operator did not answer within 1s; the request"
    )
    assert again.returncode == 1
    assert again.stderr.startswith(f"kubectl etcdlock: {name} has a release request the operator has not")
    assert answered(operated, name)["outcome"] == "Released"
    assert holder.exit_status()[0] == EXIT_LOST
    assert etcd_key(etcd, key) is None


def test_a_request_without_waiting_is_answered_in_status(
    operated: Operated, etcd: LocalEtcd, plugin_env: dict[str, str], holders: list[Holder]
) -> None:
    ns = operated.namespace
    name = new_lock(operated, "nowait")
    holder = start(holders, etcd, lock_key(ns, name), "no-wait")
    key, token = holder.holds()

    done = plugin(plugin_env, "release", name, "-n", ns, "--key", key, "--token", str(token), "--wait", "0")

    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"release requested on {name} (request ")
    assert answered(operated, name)["outcome"] == "Released"
    assert holder.exit_status()[0] == EXIT_LOST


def test_an_admin_release_of_a_pod_holder_is_told_on_the_pod(
    operated: Operated, plugin_env: dict[str, str]
) -> None:
    ns = operated.namespace
    name = new_lock(operated, "podlock")
    core = kubernetes.client.CoreV1Api(operated.api)
    pod = f"worker-{uuid.uuid4().hex[:6]}"
    spec = {"restartPolicy": "Never", "containers": [{"name": "work", "image": "busybox:1.36"}]}
    core.create_namespaced_pod(
        ns, {"metadata": {"name": pod, "annotations": {LOCK_ANNOTATION: name}}, "spec": spec}
    )

    def annotations() -> dict[str, str]:
        return dict(core.read_namespaced_pod(pod, ns).metadata.annotations or {})

    held = eventually(annotations, lambda a: a.get(STATE_ANNOTATION) == "Held", f"{pod} holding", 30)
    token = held[TOKEN_ANNOTATION]
    queue_rows = json.loads(ok(plugin(plugin_env, "queue", name, "-n", ns, "-o", "json")))["queue"]
    assert [(row["pod"], str(row["fencingToken"])) for row in queue_rows] == [(pod, token)]

    done = plugin(plugin_env, "release", name, "-n", ns, "--token", token, "--reason", "drain")

    assert done.returncode == 0, done.stderr
    assert f"holder pod/{ns}/{pod}) released at the request of" in done.stdout
    event_reasons(operated.api, ns, pod, "ReleasedByAdmin", "LockLost")
    lost = eventually(annotations, lambda a: a.get(STATE_ANNOTATION) == "Error", f"{pod} told it lost", 30)
    assert name in lost["etcdlock.io/message"]
