"""etcd's gRPC answers as the engine's typed errors (see :mod:`etcdlock.etcd.errors`).

etcd names each of its errors by an exact description (its ``rpctypes`` package maps them the same way,
by exact string). Those that callers act on get a type of their own; every other answer is classified by
its gRPC status code alone: transient codes become :class:`EtcdUnavailable`, authorisation codes
:class:`EtcdDenied`, the rest :class:`EtcdRefused`.
"""

from __future__ import annotations

import grpc

from etcdlock.etcd.errors import (
    EtcdDenied,
    EtcdError,
    EtcdRefused,
    EtcdUnavailable,
    LearnerNotReady,
    LeaseNotFound,
    MemberNotFound,
    NoLeader,
    NoSpace,
    NotEnoughStarted,
    NotForLearners,
    NotLeader,
    UnhealthyCluster,
)

USER_EMPTY = "etcdserver: user name is empty"
INVALID_AUTH_TOKEN = "etcdserver: invalid auth token"

# etcd's own descriptions (api/v3rpc/rpctypes) of the answers that get a type, and a hint for the user.
_DESCRIBED: dict[str, tuple[type[EtcdError], str]] = {
    "etcdserver: requested lease not found": (LeaseNotFound, ""),
    "etcdserver: can only promote a learner member which is in sync with leader": (LearnerNotReady, ""),
    "etcdserver: unhealthy cluster": (UnhealthyCluster, ""),
    "etcdserver: re-configuration failed due to not enough started members": (NotEnoughStarted, ""),
    "etcdserver: member not found": (MemberNotFound, ""),
    "etcdserver: not leader": (NotLeader, ""),
    "etcdserver: mvcc: database space exceeded": (NoSpace, " (etcd's NOSPACE alarm: compact and defragment)"),
    "etcdserver: permission denied": (EtcdDenied, ""),
    "etcdserver: authentication failed, invalid user ID or password": (EtcdDenied, ""),
    USER_EMPTY: (EtcdDenied, " (etcd has authentication enabled: give --user NAME:PASSWORD)"),
    INVALID_AUTH_TOKEN: (EtcdDenied, ""),
    "etcdserver: too many requests": (EtcdUnavailable, ""),
    "etcdserver: no leader": (NoLeader, ""),
    "etcdserver: rpc not supported for learner": (NotForLearners, ""),
}

# The reason etcd gives when it creates a watch and cancels it at once because the user may not read there.
WATCH_PERMISSION_DENIED = "rpc error: code = PermissionDenied desc = etcdserver: permission denied"

_TRANSIENT = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.INTERNAL,
}
_DENIED = {grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED}


def classify(code: grpc.StatusCode, description: str, where: str) -> EtcdError:
    """The typed error for etcd's answer ``code``/``description`` from ``where`` (the endpoint)."""
    kind, hint = _DESCRIBED.get(description, (None, ""))
    if kind is None:
        if code in _TRANSIENT:
            kind = EtcdUnavailable
        elif code in _DENIED:
            kind = EtcdDenied
        else:
            kind = EtcdRefused
    return kind(f"etcd at {where}: {description or code.name}{hint}", code.name)


def refused_watch(reason: str, where: str) -> EtcdError:
    """The error for a watch etcd created and cancelled at once, giving ``reason``."""
    if reason == WATCH_PERMISSION_DENIED:
        return EtcdDenied(f"etcd at {where} refused a watch: permission denied", "PERMISSION_DENIED")
    return EtcdUnavailable(f"etcd at {where} cancelled a watch: {reason or 'no reason given'}")
