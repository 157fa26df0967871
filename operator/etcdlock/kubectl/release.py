"""``kubectl etcdlock release``: ask the operator for a fenced release of one contender, and wait for its
answer.

The plugin cannot reach etcd; it writes the request on the lock (the annotation
:data:`~etcdlock.operator.releaserequest.RELEASE_ANNOTATION`, in a patch pinned to the version it read, so
that it never overwrites a request made meanwhile) and the leading operator replica answers it in
``status.lastAdminRelease``. The key and the fencing token name one contender exactly: whichever of the two
is not given is taken from the lock's status, as the admin saw it; if the key has another token by the time
the operator looks (another holder), nothing is deleted.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from etcdlock import clock
from etcdlock.kubectl.client import Kubectl
from etcdlock.kubectl.errors import (
    KubectlFailed,
    LockKeptChanging,
    NoAnswer,
    NoSuchContender,
    Refused,
    RequestPending,
)
from etcdlock.operator.releaserequest import (
    LAST_RELEASE,
    RELEASE_ANNOTATION,
    RELEASED,
    request_id,
    request_text,
)

# How often the lock is read again while waiting for the operator's answer.
POLL_INTERVAL = 0.5
# How long the request is written again, each time on the lock read again, while the lock keeps changing
# (the operator writes a busy lock's status as often as its queue moves).
WRITE_FOR = 10.0


@dataclass(frozen=True)
class Contender:
    key: str
    fencing_token: int


def contender(lock: Mapping[str, Any], key: str | None, token: int | None) -> Contender:
    """The contender the admin names: both given, as given; one given, the other from the lock's status."""
    if key is not None and token is not None:
        return Contender(key, token)
    status = lock.get("status") or {}
    for entry in [*(status.get("holders") or ()), *(status.get("waiters") or ())]:
        if (key is not None and entry.get("key") == key) or (
            token is not None and entry.get("fencingToken") == token
        ):
            return Contender(str(entry.get("key")), int(entry.get("fencingToken") or 0))
    what = f"key {key}" if key is not None else f"fencing token {token}"
    name = (lock.get("metadata") or {}).get("name")
    raise NoSuchContender(f"{name} lists no contender with {what} (kubectl etcdlock queue {name} lists them)")


def request(kubectl: Kubectl, name: str, key: str | None, token: int | None, reason: str) -> str:
    """Write the request on the lock; its identity (the answer in status names it). The write is pinned to
    the version read, and the operator writes the lock's status whenever its queue moves: if the write
    fails and the lock has changed since, it is read and checked again (a request written meanwhile is
    then found pending); if the lock has not changed, the failure was not a conflict and is the answer."""
    by = kubectl.user()
    lock = kubectl.lock(name)
    deadline = time.monotonic() + WRITE_FOR
    while time.monotonic() < deadline:
        version = (lock.get("metadata") or {}).get("resourceVersion")
        raw = _request_text(lock, name, key, token, by, reason)
        patch = {"metadata": {"resourceVersion": version, "annotations": {RELEASE_ANNOTATION: raw}}}
        try:
            kubectl.merge_patch(name, patch)
            return request_id(raw)
        except KubectlFailed:
            lock = kubectl.lock(name)
            meta = lock.get("metadata") or {}
            if (meta.get("annotations") or {}).get(RELEASE_ANNOTATION) == raw:
                return request_id(raw)  # written, though kubectl did not hear the answer
            if meta.get("resourceVersion") == version:
                raise
    raise LockKeptChanging(
        f"{name} kept changing for {WRITE_FOR:g}s, under each write of the request; nothing was written"
    )


def _request_text(
    lock: Mapping[str, Any], name: str, key: str | None, token: int | None, by: str, reason: str
) -> str:
    """The request's text for the lock as read; :class:`RequestPending` if it carries one already."""
    pending = ((lock.get("metadata") or {}).get("annotations") or {}).get(RELEASE_ANNOTATION)
    if pending is not None:
        raise RequestPending(
            f"{name} has a release request the operator has not answered yet ({pending}); wait for it, or "
            f"withdraw it: kubectl annotate distributedlock {name} {RELEASE_ANNOTATION}-"
        )
    target = contender(lock, key, token)
    return request_text(target.key, target.fencing_token, by, reason, clock.now())


def answer(kubectl: Kubectl, name: str, request: str, wait: float) -> str:
    """The operator's message on the request; :class:`Refused` if it refused, :class:`NoAnswer` if it did
    not answer within ``wait`` seconds."""
    deadline = time.monotonic() + wait
    while True:
        last = (kubectl.lock(name).get("status") or {}).get(LAST_RELEASE) or {}
        if last.get("requestId") == request:
            if last.get("outcome") != RELEASED:
                raise Refused(f"{last.get('outcome')}: {last.get('message')}")
            return str(last.get("message"))
        if time.monotonic() >= deadline:
            raise NoAnswer(
                f"the operator did not answer within {wait:g}s; the request stays on {name} "
                f"(annotation {RELEASE_ANNOTATION}) and is answered when the operator runs"
            )
        time.sleep(min(POLL_INTERVAL, max(deadline - time.monotonic(), 0)))
