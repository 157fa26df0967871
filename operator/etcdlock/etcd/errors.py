"""Errors of the lock engine, named for what happened (like etcd's ErrLocked, ErrSessionExpired).

Errors etcd reports keep their kind as a type, as etcd's own ``rpctypes`` do, so that callers branch on
the type and never on a message's text:

- :class:`EtcdUnavailable` is transient (no connection, no leader, a timeout): retry it;
- :class:`EtcdDenied` will not change by retrying (permission denied, wrong password, a TLS handshake
  refused): stop and tell the user;
- :class:`EtcdRefused` is etcd understanding the request and declining it; its subclasses name the
  refusals callers act on (:class:`LeaseNotFound`, :class:`LearnerNotReady`, ...).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from etcdlock.etcd.keys import Contender


class EtcdLockError(Exception):
    """Base class of every error raised by the lock engine."""


class ConfigError(EtcdLockError):
    """The client configuration (endpoints, credentials, TLS files) is unusable."""


class EtcdError(EtcdLockError):
    """etcd, or the connection to it, answered a request with an error.

    ``code`` is the gRPC status code's name (``"UNAVAILABLE"``, ``"NOT_FOUND"``, ...), or ``""`` when the
    error was found on this side (a request that ran out of time, a stream that ended).
    """

    def __init__(self, message: str, code: str = "") -> None:
        super().__init__(message)
        self.code = code


class EtcdUnavailable(EtcdError):
    """Transient: etcd did not answer, or cannot serve the request now (no leader, no quorum, a member
    restarting). The same request may succeed later, on this member or another."""


class NoLeader(EtcdUnavailable):
    """The member answering has no leader (an election is on, or it is cut off from the others)."""


class NotForLearners(EtcdUnavailable):
    """The member answering is a learner, which serves only Status and serializable reads: another member
    serves the request."""


class EtcdUnreachable(EtcdUnavailable):
    """No connection to etcd at all (refused, no route, a name that does not resolve): transient too, but
    at start-up it more likely means a wrong endpoint than an outage."""


class EtcdDenied(EtcdError):
    """etcd refuses this client: permission denied, authentication failed, no credentials where they are
    needed, or a TLS handshake it (or we) refused. Retrying does not help; the user must act."""


class EtcdRefused(EtcdError):
    """etcd understood the request and declines it (a precondition, an argument or a limit)."""


class LeaseNotFound(EtcdRefused):
    """The lease does not exist (it expired or was revoked)."""


class LearnerNotReady(EtcdRefused):
    """A learner cannot be promoted before it has caught up with the leader."""


class UnhealthyCluster(EtcdRefused):
    """A membership change was declined because the cluster is not healthy enough for it now (etcd's
    strict reconfiguration check: members not all connected recently)."""


class NotEnoughStarted(EtcdRefused):
    """A membership change was declined because too few members have started."""


class MemberNotFound(EtcdRefused):
    """The member ID is not (or no longer) in the cluster."""


class NotLeader(EtcdRefused):
    """The request (MoveLeader) must be served by the raft leader, and this member is not it."""


class NoSpace(EtcdRefused):
    """etcd's database is full (a NOSPACE alarm): writes are refused until an admin frees space."""


class Compacted(EtcdRefused):
    """A watch or read asked for history that etcd has compacted away; the caller re-reads and watches
    again."""

    def __init__(self, compacted_revision: int) -> None:
        super().__init__(f"revision compacted up to {compacted_revision}", "OUT_OF_RANGE")
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
    """The lock was not acquired within the timeout. ``holders`` names who held it at the last look;
    ``seen`` is False when etcd did not answer that look (then nobody can tell who holds it)."""

    def __init__(self, message: str, holders: tuple[Contender, ...] = (), *, seen: bool = True) -> None:
        super().__init__(message)
        self.holders = holders
        self.seen = seen

    @classmethod
    def naming(cls, what: str, holders: tuple[Contender, ...] | None) -> LockTimeout:
        """``what`` happened (``"jobs not acquired within 5s"``), and who holds the lock: ``holders`` as
        last read, None when etcd did not answer."""
        if holders is None:
            return cls(f"{what}; holders unknown (etcd did not answer)", seen=False)
        names = ", ".join(h.describe() for h in holders) or "nobody"
        return cls(f"{what}; held by {names}", holders)
