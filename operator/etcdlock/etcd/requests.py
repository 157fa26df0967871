"""Builders of etcd's raw KV requests and transaction compares (aetcd's protocol messages).

Building a request needs no connection, so the builders live apart from the client, as in etcd's Go client
(``clientv3.OpGet``, ``clientv3.Compare``): the engine, the operator and the sandbox build transactions
with them and hand them to :meth:`~etcdlock.etcd.client.EtcdClient.txn`. They give what aetcd's own
helpers lack: ``max_create_revision`` and sorting by create revision.
"""

from __future__ import annotations

from typing import Any

from aetcd import rpc


def range_request(
    key: bytes,
    end: bytes = b"",
    *,
    limit: int = 0,
    descending: bool = False,
    by_create: bool = False,
    max_create_revision: int = 0,
    keys_only: bool = False,
    count_only: bool = False,
    revision: int = 0,
) -> Any:
    request = rpc.RangeRequest(
        key=key,
        range_end=end,
        limit=limit,
        max_create_revision=max_create_revision,
        keys_only=keys_only,
        count_only=count_only,
        revision=revision,
    )
    if by_create:
        request.sort_target = rpc.RangeRequest.CREATE
        request.sort_order = rpc.RangeRequest.DESCEND if descending else rpc.RangeRequest.ASCEND
    return request


def range_op(key: bytes, end: bytes = b"", **options: Any) -> Any:
    return rpc.RequestOp(request_range=range_request(key, end, **options))


def put_op(key: bytes, value: bytes, lease: int = 0) -> Any:
    return rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=value, lease=lease))


def delete_op(key: bytes) -> Any:
    return rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=key))


def create_revision_is(key: bytes, revision: int) -> Any:
    """Compare: the key's create revision equals ``revision`` (0 = the key does not exist)."""
    return rpc.Compare(key=key, target=rpc.Compare.CREATE, result=rpc.Compare.EQUAL, create_revision=revision)


def value_is_less(key: bytes, value: bytes) -> Any:
    """Compare: the key exists and its value sorts before ``value`` (byte order)."""
    return rpc.Compare(key=key, target=rpc.Compare.VALUE, result=rpc.Compare.LESS, value=value)


def mod_revision_is(key: bytes, revision: int) -> Any:
    """Compare: the key's mod revision equals ``revision`` (optimistic concurrency on a whole object)."""
    return rpc.Compare(key=key, target=rpc.Compare.MOD, result=rpc.Compare.EQUAL, mod_revision=revision)


def range_is_empty(key: bytes, end: bytes) -> Any:
    """Compare: no key exists in ``[key, end)`` (every existing key has version >= 1)."""
    return rpc.Compare(
        key=key, range_end=end, target=rpc.Compare.VERSION, result=rpc.Compare.EQUAL, version=0
    )
