"""Errors of the operator, named for what happened. Each becomes a status condition (its ``reason``) and an
Event on the object concerned; none is a crash."""

from __future__ import annotations


class OperatorError(Exception):
    """Base class of the operator's errors; ``reason`` is the CamelCase reason of the condition it sets."""

    reason = "Error"


class InvalidSpec(OperatorError, ValueError):
    """The spec cannot be served; the message names the field."""

    reason = "InvalidSpec"


class KeyNotAllowed(InvalidSpec):
    """A DistributedLock's etcd key lies outside what its namespace may use, or touches the operator's own
    keys (its election, its epoch)."""

    reason = "KeyNotAllowed"


class KeyConflict(InvalidSpec):
    """A DistributedLock's etcd key equals, contains or lies inside the key of an older lock in the same
    etcd: the two would share contenders."""

    reason = "KeyConflict"


class ClusterNotReady(OperatorError):
    """The EtcdCluster a lock names cannot be used (yet); the message says why."""

    reason = "ClusterNotReady"


class LockNotFound(OperatorError):
    """A pod names a DistributedLock that does not exist (yet)."""

    reason = "LockNotFound"
