"""Errors of the lock engine, named for what happened (like etcd's ErrLocked, ErrSessionExpired)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from etcdlock.etcd.keys import Contender


class EtcdLockError(Exception):
    """Base class of every error raised by the lock engine."""


class ConfigError(EtcdLockError):
    """The client configuration (endpoints, credentials, TLS files) is unusable."""


class EtcdUnavailable(EtcdLockError):
    """etcd did not answer, or answered that it cannot serve the request (no leader, no quorum)."""


class Compacted(EtcdLockError):
    """A watch asked for history that etcd has compacted away; the caller re-reads and watches again."""

    def __init__(self, compacted_revision: int) -> None:
        super().__init__(f"revision compacted up to {compacted_revision}")
        self.compacted_revision = compacted_revision


class SessionLost(EtcdLockError):
    """The session's lease expired, was revoked, or could not be renewed before its local deadline.

    Every lock and leadership taken under the session is lost with it.
    """


class LockLost(EtcdLockError):
    """A lock or leadership that was held is no longer held (its key is gone or its session was lost)."""


class Fenced(EtcdLockError):
    """A write was refused because the fence it was made under no longer holds (for an operator replica:
    it is no longer the elected leader). Nothing was written."""


class AlreadyAcquiring(EtcdLockError):
    """This session already holds or waits for the same name.

    Two holders on one session and name would share one etcd key and both believe they hold the lock
    (etcd issue #11364), so the engine refuses the second one.
    """


class NotHeld(EtcdLockError):
    """release/proclaim/resign was called on something that is not held."""


class LockTimeout(EtcdLockError):
    """The lock was not acquired within the timeout. ``holders`` names who held it at the last look."""

    def __init__(self, message: str, holders: tuple[Contender, ...] = ()) -> None:
        super().__init__(message)
        self.holders = holders
