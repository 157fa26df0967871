"""The one place etcd clients are built, and the few raw etcd calls the engine needs.

aetcd gives the connection, authentication, stubs and a multiplexed watch stream. It lacks several
endpoints with failover, TLS, range options such as ``max_create_revision``, and transactions that return
the raw response; those are added here, so the rest of the code never touches gRPC.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import aetcd
import aetcd.exceptions
import aetcd.watcher
import grpc
from aetcd import rpc

from etcdlock.etcd.config import Endpoint, EtcdConfig
from etcdlock.etcd.errors import Compacted, ConfigError, EtcdUnavailable, Fenced

# Dead connections are found by HTTP/2 pings (etcd allows one every 5 s); a restarted member is reconnected
# within about a second instead of gRPC's default backoff of up to two minutes.
_CHANNEL_OPTIONS: dict[str, Any] = {
    "grpc.keepalive_time_ms": 10_000,
    "grpc.keepalive_timeout_ms": 5_000,
    "grpc.keepalive_permit_without_calls": 1,
    "grpc.http2.max_pings_without_data": 0,
    "grpc.initial_reconnect_backoff_ms": 100,
    "grpc.min_reconnect_backoff_ms": 100,
    "grpc.max_reconnect_backoff_ms": 1_000,
}

# Streams (watches, lease keepalives) opened with this metadata are cancelled by an etcd member that has
# lost its leader, instead of silently delivering nothing (as etcd's Go client does with WithRequireLeader).
_REQUIRE_LEADER = ("hasleader", "true")


def _ip_target(endpoints: Sequence[Endpoint]) -> str:
    """A gRPC static address list, so the channel fails over between members by itself (pick-first)."""
    addresses: list[tuple[int, str, int]] = []
    for endpoint in endpoints:
        try:
            infos = socket.getaddrinfo(endpoint.host, endpoint.port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise EtcdUnavailable(f"cannot resolve etcd endpoint {endpoint}: {exc.strerror}") from None
        family, _, _, _, sockaddr = infos[0]
        addresses.append((family, str(sockaddr[0]), endpoint.port))
    if all(family == socket.AF_INET for family, _, _ in addresses):
        return "ipv4:" + ",".join(f"{ip}:{port}" for _, ip, port in addresses)
    mapped = (ip if family == socket.AF_INET6 else f"::ffff:{ip}" for family, ip, _ in addresses)
    return "ipv6:" + ",".join(f"[{ip}]:{port}" for ip, (_, _, port) in zip(mapped, addresses, strict=True))


class _WatchRefused(Exception):
    """etcd answered a watch creation with "created and cancelled" (the text is etcd's reason)."""


class _Watcher(aetcd.watcher.Watcher):
    """aetcd's multiplexed watch stream, except that a watch etcd refuses to create fails instead of hanging.

    etcd refuses a watch (permission denied, or a stream whose auth token has expired) by answering
    ``created`` and ``canceled`` at once; aetcd would register that as a live watch that never delivers.
    """

    async def _handle_response(self, response: Any) -> None:
        if response.created and response.canceled:
            async with self._lock:
                if self._new_callback is not None:
                    self._new_callback.error = _WatchRefused(response.cancel_reason or "watch refused")
                    self._new_callback_ready.notify_all()
            return
        await super()._handle_response(response)

    async def close(self, reason: Exception) -> None:
        """End the stream: pending creations and every watch on it fail with ``reason``."""
        await self._terminate_stream(reason)


class _Watch:
    """One watch and the stream it lives on: its events, or the error that ended it, come through a queue.

    aetcd's own watch objects cancel on whatever stream the client has at that moment, which after a
    restart may carry another watch with the same id.
    """

    def __init__(self, watcher: _Watcher, watch_id: int, events: asyncio.Queue[Any]) -> None:
        self._watcher = watcher
        self._watch_id = watch_id
        self._events = events

    @classmethod
    async def create(cls, watcher: _Watcher, key: bytes, **options: Any) -> _Watch:
        events: asyncio.Queue[Any] = asyncio.Queue()
        callback = await watcher.add_callback(key, events.put, **options)
        return cls(watcher, callback.watch_id, events)

    async def __aiter__(self) -> AsyncIterator[Any]:
        while (item := await self._events.get()) is not None:
            if isinstance(item, Exception):
                raise item
            yield item

    async def cancel(self) -> None:
        await self._watcher.cancel(self._watch_id)


class EtcdClient(aetcd.Client):
    """aetcd's client with endpoint failover, TLS, and the raw KV/lease/watch calls the engine uses.

    Every method raises :class:`EtcdUnavailable` (or :class:`Compacted`) instead of gRPC errors.
    """

    _connected: asyncio.Event
    _is_connecting: bool

    def __init__(self, config: EtcdConfig | None = None) -> None:
        self.config = config or EtcdConfig()
        self._abandoned_watches: set[asyncio.Future[Any]] = set()
        self._auth_lock = asyncio.Lock()
        first = self.config.endpoints[0]
        super().__init__(
            host=first.host,
            port=first.port,
            username=self.config.username,
            password=self.config.password,
            timeout=None,
            options=_CHANNEL_OPTIONS,
        )

    def _make_channel(self) -> grpc.aio.Channel:
        endpoints = self.config.endpoints
        options = dict(self._options)
        if len(endpoints) == 1:
            target = f"{endpoints[0].host}:{endpoints[0].port}"
        else:
            target = _ip_target(endpoints)
            options["grpc.default_authority"] = f"{endpoints[0].host}:{endpoints[0].port}"
        if not self.config.uses_tls:
            return grpc.aio.insecure_channel(target, options=list(options.items()))
        if len(endpoints) > 1:
            options["grpc.ssl_target_name_override"] = endpoints[0].host
        credentials = grpc.ssl_channel_credentials(
            root_certificates=_read(self.config.ca_file),
            private_key=_read(self.config.key_file),
            certificate_chain=_read(self.config.cert_file),
        )
        return grpc.aio.secure_channel(target, credentials, options=list(options.items()))

    async def connect(self) -> None:
        """Open the channel (and authenticate); safe to call from several tasks."""
        if self._connected.is_set():
            return
        if self._is_connecting:
            await asyncio.wait_for(self._connected.wait(), self._connect_wait_timeout)
            return
        self._is_connecting = True
        try:
            self.channel = self._make_channel()
            self.kvstub = rpc.KVStub(self.channel)
            self.clusterstub = rpc.ClusterStub(self.channel)
            self.leasestub = rpc.LeaseStub(self.channel)
            self.maintenancestub = rpc.MaintenanceStub(self.channel)
            self.auth_stub = rpc.AuthStub(self.channel)
            if self.config.username is not None:
                await self._authenticate()
            self._watcher = self._new_watcher()
            self._connected.set()
        except BaseException:
            if self.channel is not None:
                await self.channel.close()
            self._init_channel_attrs()
            raise
        finally:
            self._is_connecting = False

    async def close(self) -> None:
        """Close the connection; watch creations abandoned by cancelled callers are cancelled first, so
        no task of this client outlives it."""
        pending = list(self._abandoned_watches)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        await super().close()

    async def _authenticate(self) -> None:
        request = rpc.AuthenticateRequest(name=self.config.username, password=self.config.password)
        with self.translate_errors():
            response = await self.auth_stub.Authenticate(request, timeout=self.config.request_timeout)
        self.metadata = (("token", response.token),)

    async def _reauthenticate(self, stale: Any) -> None:
        """Replace the auth token ``stale`` (unless another task already has) and restart the watch stream.

        etcd checks the token a watch stream was opened with each time a watch is created on it, so a
        stream opened with the old token would refuse every new watch. The watches on the old stream end
        (:class:`EtcdUnavailable`) and their owners watch again, as after a broken connection.
        """
        async with self._auth_lock:
            if self.metadata != stale:
                return
            await self._authenticate()
            old, self._watcher = self._watcher, self._new_watcher()
            if old is not None:
                await old.close(EtcdUnavailable("watch stream restarted after re-authentication"))

    def _new_watcher(self) -> _Watcher:
        stub = rpc.WatchStub(self.channel)
        return _Watcher(stub, timeout=self.config.request_timeout, metadata=self._streams_metadata())

    def _streams_metadata(self) -> tuple[tuple[str, str], ...]:
        return (*(self.metadata or ()), _REQUIRE_LEADER)

    @contextlib.contextmanager
    def translate_errors(self) -> Iterator[None]:
        """Turn gRPC and aetcd errors into the engine's errors, naming the endpoints."""
        try:
            yield
        except grpc.aio.AioRpcError as exc:
            raise self._unavailable(exc.details() or exc.code().name) from None
        except aetcd.exceptions.RevisionCompactedError as exc:
            raise Compacted(exc.compacted_revision) from None
        except aetcd.exceptions.ClientError as exc:
            cause = exc.__cause__
            detail = cause.details() if isinstance(cause, grpc.aio.AioRpcError) else str(exc)
            raise self._unavailable(detail or type(exc).__name__) from None

    def _unavailable(self, detail: str) -> EtcdUnavailable:
        if "connection refused" in detail.lower():
            detail = "connection refused"
        lowered = detail.lower()
        if "handshake failed" in lowered:
            return EtcdUnavailable(f"cannot reach etcd at {self.config.describe()}: {_tls_failure(detail)}")
        if "user name is empty" in lowered:
            detail += " (etcd has authentication enabled: give --user NAME:PASSWORD)"
        if "connect" in lowered or "unavailable" in lowered or "dns" in lowered:
            return EtcdUnavailable(f"cannot reach etcd at {self.config.describe()}: {detail}")
        return EtcdUnavailable(f"etcd at {self.config.describe()}: {detail}")

    async def _unary(self, stub: str, method: str, request: Any) -> Any:
        """One unary call (``stub.method``, looked up once connected) with the request timeout.

        Re-authenticates once if the auth token expired.
        """
        await self.connect()
        for attempt in range(2):
            call = getattr(getattr(self, stub), method)
            token = self.metadata
            try:
                return await call(request, timeout=self.config.request_timeout, metadata=token)
            except grpc.aio.AioRpcError as exc:
                expired = exc.code() == grpc.StatusCode.UNAUTHENTICATED and "token" in (exc.details() or "")
                if attempt == 0 and expired and self.config.username is not None:
                    await self._reauthenticate(token)
                    continue
                with self.translate_errors():
                    raise
        raise AssertionError("unreachable")

    async def range(self, key: bytes, end: bytes = b"", **options: Any) -> Any:
        """A raw Range (rpc.RangeResponse); ``options`` as for :func:`range_request`."""
        return await self._unary("kvstub", "Range", range_request(key, end, **options))

    async def txn(self, compare: Sequence[Any], success: Sequence[Any], failure: Sequence[Any] = ()) -> Any:
        """A raw transaction (rpc.TxnResponse) built from :func:`compare_*` and ``*_op`` helpers."""
        request = rpc.TxnRequest(compare=list(compare), success=list(success), failure=list(failure))
        return await self._unary("kvstub", "Txn", request)

    async def guarded_txn(
        self,
        guard: Sequence[Any],
        compare: Sequence[Any],
        success: Sequence[Any],
        failure: Sequence[Any] = (),
    ) -> Any:
        """The transaction (compare, success, failure), run only if every ``guard`` compare holds.

        One round trip: an outer transaction checks the guard and runs the inner one as a nested
        transaction. Returns the inner response (with the outer header); raises :class:`Fenced`, having
        written nothing, if the guard fails.
        """
        inner = rpc.TxnRequest(compare=list(compare), success=list(success), failure=list(failure))
        outer = await self.txn(guard, [rpc.RequestOp(request_txn=inner)])
        if not outer.succeeded:
            raise Fenced("the write's fence no longer holds (not the leader any more); nothing was written")
        response = outer.responses[0].response_txn
        response.header.CopyFrom(outer.header)
        return response

    async def members(self, linearizable: bool = True) -> list[Any]:
        """The members (rpc.Member: ID, name, peerURLs, clientURLs, isLearner).

        Linearizable by default; ``linearizable=False`` answers from the member reached, without quorum.
        """
        request = rpc.MemberListRequest(linearizable=linearizable)
        response = await self._unary("clusterstub", "MemberList", request)
        return list(response.members)

    async def add_learner(self, peer_url: str) -> int:
        """Add a member as a learner (it gets no vote until promoted); returns its ID."""
        request = rpc.MemberAddRequest(peerURLs=[peer_url], isLearner=True)
        response = await self._unary("clusterstub", "MemberAdd", request)
        return int(response.member.ID)

    async def promote(self, member_id: int) -> None:
        """Make a learner a voter; etcd refuses while it has not caught up with the leader."""
        await self._unary("clusterstub", "MemberPromote", rpc.MemberPromoteRequest(ID=member_id))

    async def remove_member(self, member_id: int) -> None:
        await self._unary("clusterstub", "MemberRemove", rpc.MemberRemoveRequest(ID=member_id))

    async def status(self) -> Any:
        """The status (rpc.StatusResponse: leader, raft index...) of the member this client reaches."""
        return await self._unary("maintenancestub", "Status", rpc.StatusRequest())

    async def defragment(self) -> None:
        """Defragment the backend of the member this client reaches (it blocks that member meanwhile)."""
        await self._unary("maintenancestub", "Defragment", rpc.DefragmentRequest())

    async def move_leader(self, member_id: int) -> None:
        """Hand leadership to another voter; only the leader serves this (connect to it)."""
        await self._unary("maintenancestub", "MoveLeader", rpc.MoveLeaderRequest(targetID=member_id))

    async def grant(self, ttl: int) -> tuple[int, int]:
        """Grant a lease; returns (lease id, granted TTL)."""
        response = await self._unary("leasestub", "LeaseGrant", rpc.LeaseGrantRequest(TTL=ttl))
        if response.error:
            raise EtcdUnavailable(f"etcd refused a lease of {ttl}s: {response.error}")
        return response.ID, response.TTL

    async def revoke(self, lease_id: int) -> bool:
        """Revoke a lease and delete its keys; False if it was already gone."""
        try:
            await self._unary("leasestub", "LeaseRevoke", rpc.LeaseRevokeRequest(ID=lease_id))
        except EtcdUnavailable as exc:
            if "lease not found" in str(exc):
                return False
            raise
        return True

    async def time_to_live(self, lease_id: int) -> int:
        """Seconds the lease has left (-1 when it does not exist)."""
        response = await self._unary("leasestub", "LeaseTimeToLive", rpc.LeaseTimeToLiveRequest(ID=lease_id))
        return int(response.TTL)

    async def keepalive_stream(self) -> Any:
        """A LeaseKeepAlive stream (write, read), cancelled by a member that loses its leader."""
        await self.connect()
        return self.leasestub.LeaseKeepAlive(metadata=self._streams_metadata())

    @contextlib.asynccontextmanager
    async def watch_events(
        self,
        key: bytes,
        end: bytes | None = None,
        *,
        start_revision: int,
        deletes_only: bool = False,
        prev_kv: bool = False,
    ) -> AsyncIterator[AsyncIterator[Any]]:
        """Watch a key (or ``[key, end)``) from ``start_revision``; yields an iterator of aetcd events.

        The watch is cancelled when the block ends. Compaction raises :class:`Compacted`; a broken stream
        raises :class:`EtcdUnavailable`.
        """
        await self.connect()
        # aetcd pairs each "watch created" answer with the oldest pending request, so a creation abandoned
        # half-way would hand its watch (another key's events) to the next one; and on Python 3.11 its
        # asyncio.wait_for drops a cancellation that arrives just as the watch is created. So the creation
        # runs shielded: the caller's cancellation takes effect at once, and the watch, once created, is
        # cancelled in the background.
        creating = asyncio.ensure_future(
            self._create_watch(
                key,
                range_end=end,
                start_revision=start_revision,
                kind=aetcd.EventKind.DELETE if deletes_only else None,
                prev_kv=prev_kv,
            )
        )
        try:
            with self.translate_errors():
                watch = await asyncio.shield(creating)
        except asyncio.CancelledError:
            self._keep_until_done(creating)
            creating.add_done_callback(self._cancel_abandoned_watch)
            raise
        try:
            yield self._translated(watch)
        finally:
            await _cancel_watch(watch)

    async def _create_watch(self, key: bytes, **options: Any) -> _Watch:
        """Create a watch on the current stream.

        A refused creation, when this client authenticates, gets a new token and stream and one more try:
        the refusal may come from the stream's token having expired (etcd 3.5 says "permission denied").
        """
        for attempt in range(2):
            token = self.metadata
            try:
                return await _Watch.create(self._watcher, key, **options)
            except _WatchRefused as exc:
                if attempt == 0 and self.config.username is not None:
                    await self._reauthenticate(token)
                    continue
                raise self._unavailable(f"watch refused: {exc}") from None
        raise AssertionError("unreachable")

    def _keep_until_done(self, task: asyncio.Future[Any]) -> None:
        self._abandoned_watches.add(task)
        task.add_done_callback(self._abandoned_watches.discard)

    def _cancel_abandoned_watch(self, creating: asyncio.Future[Any]) -> None:
        if not creating.cancelled() and creating.exception() is None:
            self._keep_until_done(asyncio.ensure_future(_cancel_watch(creating.result())))

    async def _translated(self, watch: Any) -> AsyncIterator[Any]:
        with self.translate_errors():
            async for event in watch:
                yield event
        raise EtcdUnavailable(f"watch on etcd at {self.config.describe()} ended")


async def _cancel_watch(watch: Any) -> None:
    with contextlib.suppress(Exception):
        await watch.cancel()


# What the TLS library's reason for a failed handshake means for the user.
_TLS_REASONS = {
    "CERTIFICATE_VERIFY_FAILED": "etcd's certificate is not signed by a trusted CA (see --cacert)",
    "SSLV3_ALERT_BAD_CERTIFICATE": "etcd rejected the client certificate (give --cert and --key signed by a "
    "CA that etcd trusts)",
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "etcd requires a client certificate (--cert and --key)",
}


def _tls_failure(detail: str) -> str:
    match = re.search(r"OPENSSL_internal:([A-Z0-9_]+)", detail)
    if match is None:
        return f"TLS handshake failed: {detail}"
    reason = match.group(1)
    meaning = _TLS_REASONS.get(reason)
    return f"TLS handshake failed ({reason})" + (f": {meaning}" if meaning else "")


def _read(path: str | None) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read TLS file {path}: {exc.strerror}") from None


def keepalive_request(lease_id: int) -> Any:
    return rpc.LeaseKeepAliveRequest(ID=lease_id)


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
