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
from etcdlock.kubectl.errors import NoAnswer, NoSuchContender, Refused, RequestPending
from etcdlock.operator.releaserequest import (
    LAST_RELEASE,
    RELEASE_ANNOTATION,
    RELEASED,
    request_id,
    request_text,
)

# How often the lock is read again while waiting for the operator's answer.
POLL_INTERVAL = 0.5


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
    """Write the request on the lock; its identity (the answer in status names it)."""
    lock = kubectl.lock(name)
    meta = lock.get("metadata") or {}
    pending = (meta.get("annotations") or {}).get(RELEASE_ANNOTATION)
    if pending is not None:
        raise RequestPending(
            f"{name} has a release request the operator has not answered yet ({pending}); wait for it, or "
            f"withdraw it: kubectl annotate distributedlock {name} {RELEASE_ANNOTATION}-"
        )
    target = contender(lock, key, token)
    raw = request_text(target.key, target.fencing_token, kubectl.user(), reason, clock.now())
    patch = {
        "metadata": {"resourceVersion": meta.get("resourceVersion"), "annotations": {RELEASE_ANNOTATION: raw}}
    }
    kubectl.merge_patch(name, patch)
    return request_id(raw)


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
