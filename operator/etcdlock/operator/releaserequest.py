"""An admin's request to release one contender of a DistributedLock, as written on the lock and answered.

Whoever may ``patch`` the lock (RBAC) asks by writing the annotation :data:`RELEASE_ANNOTATION` on it: a
JSON document ``{"key", "fencingToken", "by", "reason", "requestedAt"}`` (``kubectl etcdlock release``
writes it). The leading operator replica deletes exactly that key, fenced on the token (see
:mod:`etcdlock.operator.adminrelease`), records the outcome in ``status.lastAdminRelease`` and removes the
annotation. Kept free of Kubernetes and etcd clients: the kubectl plugin reads and writes the same format.

``by`` is what the requester's kubectl says the user is; it is not proof (the API server's audit log is the
authoritative record of who patched the lock).
"""

from __future__ import annotations

import hashlib
import json
import reprlib
from dataclasses import dataclass
from typing import Any

from etcdlock.operator.names import ANNOTATION_PREFIX

RELEASE_ANNOTATION = f"{ANNOTATION_PREFIX}/release-request"
LAST_RELEASE = "lastAdminRelease"
# How the operator names the holder of a pod's key: pod/NAMESPACE/NAME (see etcdlock.operator.pods.hold).
POD_HOLDER = "pod/"
# The longest reason kept (it goes into an Event message and the status).
MAX_REASON = 256
# The longest request taken, in characters: a lock's key is at most 512, a contender's one segment more,
# and ``by`` and ``reason`` are kept to MAX_REASON; JSON may escape each character in six.
MAX_KEY = 1024
MAX_REQUEST = 16384
# The largest fencing token there can be: etcd's revisions are int64.
MAX_TOKEN = 2**63 - 1
# What stands for a character of ``by``, ``reason`` or ``requestedAt`` that is not printable.
UNPRINTABLE = "\ufffd"

# Outcomes, as status.lastAdminRelease.outcome says them.
RELEASED = "Released"
STALE_TOKEN = "StaleToken"
KEY_NOT_FOUND = "KeyNotFound"
NOT_THIS_LOCK = "NotThisLock"
INVALID = "InvalidRequest"
NOT_SERVED = "LockNotServed"


class InvalidRequest(ValueError):
    """The annotation is not a release request this lock can take; the message says why."""

    outcome = INVALID


class NotThisLock(InvalidRequest):
    """The key named is not a contender of this lock (another lock's, another namespace's, the
    operator's own): refused, whatever its token."""

    outcome = NOT_THIS_LOCK


def request_text(key: str, fencing_token: int, by: str, reason: str, requested_at: str) -> str:
    """The annotation's text of a request to release ``key`` if it still has ``fencing_token``."""
    doc = {"key": key, "fencingToken": fencing_token, "by": by, "reason": reason, "requestedAt": requested_at}
    return json.dumps(doc, separators=(",", ":"))


def request_id(raw: str) -> str:
    """The identity of a request (its annotation's text): the outcome in status names it, so that the
    requester finds the answer to its own request, and a request seen twice is carried out once."""
    return hashlib.sha256(raw.encode(errors="surrogatepass")).hexdigest()[:16]


@dataclass(frozen=True)
class ReleaseRequest:
    """A release request, checked for form (:meth:`parse`) and against the lock's key (:meth:`check`)."""

    key: str
    fencing_token: int
    by: str
    reason: str
    requested_at: str
    id: str

    @classmethod
    def parse(cls, raw: str) -> ReleaseRequest:
        """The request the annotation's text ``raw`` makes; :class:`InvalidRequest` says what is wrong
        (whatever ``raw`` holds: it is hand-written, by anyone who may patch the lock)."""
        doc = _document(raw)
        key, token = doc.get("key"), doc.get("fencingToken")
        if not isinstance(key, str) or not key:
            raise InvalidRequest('the request names no key ("key": the contender key to release)')
        check_key(key)
        if not isinstance(token, int) or isinstance(token, bool) or token < 1:
            raise InvalidRequest(f"fencingToken must be a positive integer, not {_short(token)}")
        if token > MAX_TOKEN:
            raise InvalidRequest(
                f"fencingToken {_short(token)} is beyond etcd's revisions (at most {MAX_TOKEN})"
            )
        return cls(
            key=key,
            fencing_token=token,
            by=_text(doc, "by")[:MAX_REASON] or "unknown",
            reason=_text(doc, "reason")[:MAX_REASON],
            requested_at=_text(doc, "requestedAt")[:64],
            id=request_id(raw),
        )

    def check(self, lock_key: str) -> None:
        """Raise :class:`NotThisLock` unless the key is a contender of the lock ``lock_key``: one segment
        right under ``lock_key/`` (so never a key of another lock, nested or not, nor the operator's)."""
        contender = self.key.removeprefix(lock_key + "/")
        if contender == self.key or not contender or "/" in contender:
            raise NotThisLock(f"{self.key!r} is not a contender key of this lock (under {lock_key}/)")


_SHORT = reprlib.Repr()
_SHORT.maxstring = 160
_SHORT.maxother = 40


def _document(raw: str) -> dict[str, Any]:
    """The request's JSON object; bounded, since json's parser recurses once per level of nesting."""
    if len(raw) > MAX_REQUEST:
        raise InvalidRequest(f"the request is longer than {MAX_REQUEST} characters")
    try:
        doc = json.loads(raw)
    except ValueError:
        raise InvalidRequest("the request is not JSON") from None
    except RecursionError:
        raise InvalidRequest("the request is nested too deeply") from None
    if not isinstance(doc, dict):
        raise InvalidRequest("the request must be a JSON object")
    return doc


def check_key(key: str) -> None:
    """Raise :class:`InvalidRequest` unless ``key`` is one etcd and the messages about it can carry:
    bounded, and printable (which excludes control characters such as NUL, and lone surrogates, which have
    no UTF-8 encoding)."""
    if len(key) > MAX_KEY:
        raise InvalidRequest(f"the key is longer than {MAX_KEY} characters")
    if not key.isprintable():
        raise InvalidRequest(f"the key {_short(key)} has a character that is not printable")


def _short(value: Any) -> str:
    """``value`` in a message: its repr, bounded in length and nesting, and printable (escaped)."""
    return _SHORT.repr(value).encode("ascii", "backslashreplace").decode()


def _text(doc: dict[str, Any], field: str) -> str:
    """The field if it is text, with what is not printable replaced (it goes into Events and the status)."""
    value = doc.get(field)
    if not isinstance(value, str):
        return ""
    return "".join(c if c.isprintable() else UNPRINTABLE for c in value)


def outcome_record(
    request: ReleaseRequest | None, raw: str, outcome: str, message: str, holder: str, time: str
) -> dict[str, Any]:
    """What ``status.lastAdminRelease`` says of a request answered (``request`` None: it did not parse)."""
    return {
        "requestId": request.id if request else request_id(raw),
        "key": request.key if request else "",
        "fencingToken": request.fencing_token if request else 0,
        "holder": holder,
        "requestedBy": request.by if request else "",
        "reason": request.reason if request else "",
        "outcome": outcome,
        "message": message,
        "time": time,
    }
