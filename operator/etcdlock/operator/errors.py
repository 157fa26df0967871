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


class OutsideEtcdNotAllowed(InvalidSpec):
    """A DistributedLock names an etcd of its own (``spec.etcd``) where this operator allows none, or names
    the operator's own etcd that way."""

    reason = "OutsideEtcdNotAllowed"


class StoreNotReady(OperatorError):
    """The etcd a lock lives in cannot be used (yet): it is tried again soon, without waiting for an edit."""

    reason = "StoreNotReady"


class ClusterNotReady(StoreNotReady):
    """The EtcdCluster a lock names cannot be used (yet); the message says why."""

    reason = "ClusterNotReady"


class SecretNotFound(StoreNotReady):
    """The Secret a lock's ``spec.etcd.secretRef`` names does not exist (yet) in the lock's namespace."""

    reason = "SecretNotFound"


class SecretUnreadable(StoreNotReady):
    """The Secret a lock's ``spec.etcd.secretRef`` names could not be read (the API did not answer, or
    refused: the operator may not read Secrets in that namespace)."""

    reason = "SecretUnreadable"


class SecretInvalid(StoreNotReady):
    """The Secret a lock's ``spec.etcd.secretRef`` names holds nothing usable (a key without its
    certificate, a password without a user, a certificate that is no PEM...)."""

    reason = "SecretInvalid"


class EtcdNotReachable(StoreNotReady):
    """The etcd a lock's ``spec.etcd`` names does not answer (yet)."""

    reason = "EtcdUnreachable"


class EtcdAccessDenied(StoreNotReady):
    """The etcd a lock's ``spec.etcd`` names refuses the credentials of its Secret (wrong password, a
    client certificate it does not trust, no permission on the keys the operator writes there)."""

    reason = "EtcdDenied"


class LockNotFound(OperatorError):
    """A pod names a DistributedLock that does not exist (yet)."""

    reason = "LockNotFound"
