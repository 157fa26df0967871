"""The one place etcd is spoken to: a connection to every member, failover between them, typed errors.

A client talks to one member at a time (the *current* one) and moves to the next when that one fails: it
cannot be reached, it answers that it has no leader, or, with several endpoints, it does not answer a
heartbeat (a paused or hung member keeps its TCP connection open, and gRPC's own keepalive, which etcd
allows at most every 5 s, would notice only after 15 s). A request that is merely slow does not move the
client (under load that would churn every watch); the heartbeat, a status request etcd answers from the
member's memory, tells a hung member from a busy one. Moving off a member ends the watches on it (their
owners watch again, on the next member); requests in flight there end by their own deadlines, since a
channel is never closed under them (gRPC would cancel them).

Requests that give the same outcome when repeated (reads, the engine's conditional transactions, lease
grants, renewals and revocations) are retried within the request timeout, ``retry=True``: an attempt that
reached a member whose leader just died is lost (etcd forwards it to the dead leader), and only a new
attempt after etcd's election succeeds. Other requests (membership changes) get one attempt.

aetcd gives the protocol stubs and the multiplexed watch stream; everything else is here and in the
modules beside it (the transport to one member, the watch workarounds, lease streams, request builders),
so the rest of the engine never touches gRPC.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import aetcd
import aetcd.exceptions
import grpc
from aetcd import rpc

from etcdlock.etcd._transport import Member, tls_refusal
from etcdlock.etcd._watch import Watch, Watcher, WatchRefused, cancel_watch
from etcdlock.etcd.config import Endpoint, EtcdConfig
from etcdlock.etcd.errors import (
    Compacted,
    EtcdDenied,
    EtcdError,
    EtcdUnavailable,
    EtcdUnreachable,
    Fenced,
    LeaseNotFound,
    NoLeader,
    NotForLearners,
)
from etcdlock.etcd.grpc_errors import INVALID_AUTH_TOKEN, classify, refused_watch
from etcdlock.etcd.leases import LeaseStream
from etcdlock.etcd.requests import range_request

if TYPE_CHECKING:
    from etcdlock.etcd._queue import FreshGuards
    from etcdlock.etcd._ranks import Ranks

log = logging.getLogger(__name__)

# The first attempt of a retried request: ample for a member that works, and short enough that a request
# lost with a dead raft leader is sent again soon after etcd's election (about 1-2 s).
ATTEMPT_TIMEOUT = 0.5
# With several endpoints, the current member is asked for its status this often; no answer within an
# attempt moves the client on.
HEARTBEAT_INTERVAL = 1.0
_FIRST_PAUSE = 0.05
_MAX_PAUSE = 0.5

# Requests and streams sent with this metadata are refused (or cancelled) by a member that has lost its
# leader, instead of waiting or going silent (etcd's Go client: WithRequireLeader). Not on the cluster and
# maintenance services: their answers without a quorum (member list, status) are wanted.
_REQUIRE_LEADER = ("hasleader", "true")
_LEADER_SERVICES = ("KV", "Lease", "Watch")


class EtcdClient:
    """Connections to the endpoints of ``config``, and the raw KV, lease, cluster and watch calls.

    Every method raises the engine's typed errors (:mod:`etcdlock.etcd.errors`), never gRPC's. Use as
    ``async with EtcdClient(config) as client:``.
    """

    def __init__(self, config: EtcdConfig | None = None) -> None:
        self.config = config or EtcdConfig()
        self.metadata: tuple[tuple[str, str], ...] | None = None
        self._members: list[Member] = []
        self._current = 0
        self._connect_lock = asyncio.Lock()
        self._auth_lock = asyncio.Lock()
        self._background: set[asyncio.Future[Any]] = set()
        self._heartbeat: asyncio.Task[None] | None = None
        # What the engine's waiters on this client share: per queue prefix, the ranks they wait on (one watch
        # for all); the timer that starts the guards of fresh holds.
        self.ranks: dict[bytes, Ranks] = {}
        self.fresh_guards: FreshGuards | None = None

    async def __aenter__(self) -> EtcdClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def current(self) -> Endpoint:
        """The member requests go to now."""
        return self.config.endpoints[self._current]

    async def connect(self) -> None:
        """Open the channels (they connect on first use) and authenticate; safe to call from several tasks."""
        if self._members:
            return
        async with self._connect_lock:
            if self._members:
                return
            members = [Member(endpoint, self.config) for endpoint in self.config.endpoints]
            self._members = members
            try:
                if self.config.username is not None:
                    await self._authenticate()
            except BaseException:
                self._members = []
                await asyncio.gather(*(m.channel.close() for m in members), return_exceptions=True)
                raise
            if len(members) > 1:
                self._heartbeat = asyncio.create_task(self._keep_checking(), name="etcd-heartbeat")

    async def close(self) -> None:
        """Close the connections. Watch creations abandoned by cancelled callers are cancelled first, so no
        task of this client outlives it."""
        tasks = [*self._background, *([self._heartbeat] if self._heartbeat else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        members, self._members = self._members, []
        for member in members:
            if member.watcher is not None:
                await member.watcher.close(EtcdUnavailable("client closed"))
            if member.lease_stream is not None:
                member.lease_stream.end(EtcdUnavailable("client closed"))
            await member.channel.close()

    # Failover

    def move_off(self, member: Member) -> None:
        """Stop using ``member``, if it is the current one: requests go to the next endpoint from now on,
        and its watches end (their owners watch again there)."""
        if len(self._members) < 2 or self._members[self._current] is not member:
            return
        self._current = (self._current + 1) % len(self._members)
        log.debug("moving off etcd at %s to %s", member, self._members[self._current])
        self._restart_watches(member, EtcdUnavailable(f"moved off etcd at {member}"))

    def _restart_watches(self, member: Member, reason: EtcdError) -> None:
        watcher, member.watcher = member.watcher, None
        if watcher is not None:
            self._spawn(watcher.close(reason))
        if member.lease_stream is not None:
            member.lease_stream.end(reason)

    async def _keep_checking(self) -> None:
        """Ask the current member for its status every :data:`HEARTBEAT_INTERVAL` (etcd answers it from the
        member's memory, quickly, even when the cluster is busy); move off if it does not answer within
        :data:`ATTEMPT_TIMEOUT` (a hung member fails nothing on its own: its requests just never finish)
        or has no leader (cut off from the others)."""
        while True:
            await asyncio.sleep(HEARTBEAT_INTERVAL)
            member = self._members[self._current]
            try:
                status = await self._call_once(
                    member, "Maintenance", "Status", rpc.StatusRequest(), ATTEMPT_TIMEOUT
                )
            except EtcdUnavailable:
                self.move_off(member)
                continue
            except (EtcdError, _TokenExpired):
                continue  # it answered (refusing, or with an expired token): it is alive
            if not status.leader:
                self.move_off(member)

    async def failure(self, member: Member, exc: grpc.aio.AioRpcError) -> EtcdError:
        """The typed error for a failed call on ``member``. The client moves off a member it cannot reach,
        that says it has no leader, or that is a learner (it serves no other request than Status and
        serializable reads); a request that is merely slow (etcd busy, or electing a leader) does not move
        it: the heartbeat tells a hung member from a busy one."""
        error = await self._classify(member, exc)
        if isinstance(error, (EtcdUnreachable, NoLeader, NotForLearners)):
            self.move_off(member)
        return error

    async def _classify(self, member: Member, exc: grpc.aio.AioRpcError) -> EtcdError:
        code, details = exc.code(), exc.details() or ""
        if code == grpc.StatusCode.UNAVAILABLE and member.unreachable():
            if self.config.uses_tls and not member.answered:
                refusal = await tls_refusal(member.endpoint, self.config)
                if refusal is not None:
                    return EtcdDenied(f"cannot reach etcd at {member}: {refusal}", code.name)
            return EtcdUnreachable(f"cannot reach etcd at {member}: {details or code.name}", code.name)
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return EtcdUnavailable(f"etcd at {member} did not answer in time", code.name)
        return classify(code, details, str(member))

    # Unary calls

    def _metadata(self, service: str) -> tuple[tuple[str, str], ...]:
        token = self.metadata or ()
        return (*token, _REQUIRE_LEADER) if service in _LEADER_SERVICES else token

    async def _call_once(
        self, member: Member, service: str, method: str, request: Any, timeout: float
    ) -> Any:
        """One attempt on one member; a failure becomes a typed error (and moves off a failed member)."""
        call = getattr(member.stub(service), method)
        try:
            response = await call(request, timeout=timeout, metadata=self._metadata(service))
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNAUTHENTICATED and exc.details() == INVALID_AUTH_TOKEN:
                raise _TokenExpired() from None
            raise await self.failure(member, exc) from None
        member.answered = True
        return response

    async def _unary(
        self, service: str, method: str, request: Any, *, retry: bool, timeout: float | None = None
    ) -> Any:
        """``service.method(request)`` on the current member, within ``timeout`` (default: the request
        timeout). With ``retry``, transient failures are tried again, on whichever member is current then;
        the first attempt is bounded by :data:`ATTEMPT_TIMEOUT`, and each attempt that ran out of time
        doubles the next one's: a request lost with a dead raft leader is soon sent again, while a slow,
        overloaded etcd gets longer attempts rather than more of them. An expired auth token is renewed
        once."""
        await self.connect()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (timeout if timeout is not None else self.config.request_timeout)
        pause = _FIRST_PAUSE
        attempt = ATTEMPT_TIMEOUT
        renewed = False
        while True:
            remaining = max(deadline - loop.time(), 0.001)
            token = self.metadata
            try:
                member = self._members[self._current]
                limit = min(remaining, attempt) if retry else remaining
                return await self._call_once(member, service, method, request, limit)
            except _TokenExpired:
                if renewed or self.config.username is None:
                    raise EtcdDenied(f"etcd at {self.current}: the auth token was refused") from None
                renewed = True
                await self._reauthenticate(token)
            except EtcdUnavailable as exc:
                if not retry or loop.time() + pause >= deadline:
                    raise
                if exc.code == grpc.StatusCode.DEADLINE_EXCEEDED.name:
                    attempt *= 2
                await asyncio.sleep(pause)
                pause = min(pause * 2, _MAX_PAUSE)

    async def _authenticate(self) -> None:
        request = rpc.AuthenticateRequest(name=self.config.username, password=self.config.password)
        member = self._members[self._current]
        response = await self._call_once(member, "Auth", "Authenticate", request, self.config.request_timeout)
        self.metadata = (("token", response.token),)

    async def _reauthenticate(self, stale: Any) -> None:
        """Replace the auth token ``stale`` (unless another task already has) and restart the watch streams.

        etcd checks the token a watch stream was opened with each time a watch is created on it, so a
        stream opened with the old token would refuse every new watch. The watches on the old streams end
        (:class:`EtcdUnavailable`) and their owners watch again, as after a broken connection.
        """
        async with self._auth_lock:
            if self.metadata != stale:
                return
            await self._authenticate()
            for member in self._members:
                self._restart_watches(
                    member, EtcdUnavailable("watch stream restarted after re-authentication")
                )

    @contextlib.contextmanager
    def _translate_errors(self) -> Iterator[None]:
        """Turn aetcd's errors into the engine's (gRPC's are typed where they are caught)."""
        try:
            yield
        except aetcd.exceptions.RevisionCompactedError as exc:
            raise Compacted(exc.compacted_revision) from None
        except aetcd.exceptions.ClientError as exc:
            raise EtcdUnavailable(f"etcd at {self.current}: {type(exc).__name__}") from None

    # KV

    async def range(self, key: bytes, end: bytes = b"", **options: Any) -> Any:
        """A raw Range (rpc.RangeResponse); ``options`` as for :func:`range_request`."""
        return await self._unary("KV", "Range", range_request(key, end, **options), retry=True)

    async def txn(
        self,
        compare: Sequence[Any],
        success: Sequence[Any],
        failure: Sequence[Any] = (),
        *,
        retry: bool = True,
    ) -> Any:
        """A raw transaction (rpc.TxnResponse) built from the ``*_is`` compares and ``*_op`` helpers.

        ``retry`` (the default) may run it more than once: pass False unless a second run changes nothing
        (a conditional write, or a read). Every transaction of the engine is of that kind.
        """
        request = rpc.TxnRequest(compare=list(compare), success=list(success), failure=list(failure))
        return await self._unary("KV", "Txn", request, retry=retry)

    async def compact(self, revision: int, *, physical: bool = False) -> None:
        """Drop the history before ``revision`` (``physical``: wait until it is gone from the backend)."""
        request = rpc.CompactionRequest(revision=revision, physical=physical)
        await self._unary("KV", "Compact", request, retry=True)

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

    # Cluster and maintenance

    async def members(self, linearizable: bool = True) -> list[Any]:
        """The members (rpc.Member: ID, name, peerURLs, clientURLs, isLearner).

        Linearizable by default; ``linearizable=False`` answers from the member reached, without quorum.
        """
        request = rpc.MemberListRequest(linearizable=linearizable)
        response = await self._unary("Cluster", "MemberList", request, retry=True)
        return list(response.members)

    async def cluster_id(self) -> int:
        """The ID of the etcd cluster this client reaches: two clients reading the same ID reach the same
        members, whatever names or addresses each was given (a Service's, a pod's, an IP).

        Taken from the header of a member list answered by the member reached (no quorum needed, and no
        permission on any key: etcd 3.6 answers Status to root only)."""
        request = rpc.MemberListRequest(linearizable=False)
        response = await self._unary("Cluster", "MemberList", request, retry=True)
        return int(response.header.cluster_id)

    async def add_learner(self, peer_url: str) -> int:
        """Add a member as a learner (it gets no vote until promoted); returns its ID."""
        request = rpc.MemberAddRequest(peerURLs=[peer_url], isLearner=True)
        response = await self._unary("Cluster", "MemberAdd", request, retry=False)
        return int(response.member.ID)

    async def promote(self, member_id: int) -> None:
        """Make a learner a voter; :class:`LearnerNotReady` while it has not caught up with the leader."""
        await self._unary("Cluster", "MemberPromote", rpc.MemberPromoteRequest(ID=member_id), retry=False)

    async def remove_member(self, member_id: int) -> None:
        await self._unary("Cluster", "MemberRemove", rpc.MemberRemoveRequest(ID=member_id), retry=False)

    async def status(self) -> Any:
        """The status (rpc.StatusResponse: leader, raft index...) of the member this client reaches."""
        return await self._unary("Maintenance", "Status", rpc.StatusRequest(), retry=True)

    async def defragment(self) -> None:
        """Defragment the backend of the member this client reaches (it blocks that member meanwhile)."""
        await self._unary("Maintenance", "Defragment", rpc.DefragmentRequest(), retry=False)

    async def snapshot(self) -> AsyncIterator[bytes]:
        """The current member's database as etcd streams it (Maintenance.Snapshot): chunks in order, the
        last 32 bytes being the SHA-256 of the rest (etcd 3.5 appends it). Not retried: a broken stream
        raises :class:`EtcdUnavailable` and the caller starts again."""
        await self.connect()
        member = self._members[self._current]
        call = member.stub("Maintenance").Snapshot(
            rpc.SnapshotRequest(), metadata=self._metadata("Maintenance")
        )
        try:
            async for response in call:
                member.answered = True
                yield bytes(response.blob)
        except grpc.aio.AioRpcError as exc:
            raise await self.failure(member, exc) from None
        finally:
            call.cancel()

    async def move_leader(self, member_id: int) -> None:
        """Hand leadership to another voter; only the leader serves this (:class:`NotLeader` elsewhere)."""
        request = rpc.MoveLeaderRequest(targetID=member_id)
        await self._unary("Maintenance", "MoveLeader", request, retry=False)

    async def reachable(self) -> None:
        """Raise the typed error of the first endpoint if no endpoint answers a status request (which needs
        no quorum): etcd cannot be reached, or refuses this client's TLS or credentials."""
        await self.connect()
        first: EtcdError | None = None
        for member in self._members:
            try:
                await self._call_once(
                    member, "Maintenance", "Status", rpc.StatusRequest(), self.config.request_timeout
                )
                return
            except _TokenExpired:
                return
            except EtcdError as exc:
                first = first or exc
        assert first is not None
        if isinstance(first, EtcdUnreachable) and len(self._members) > 1:
            raise EtcdUnreachable(
                f"cannot reach etcd at {self.config.describe()}: no endpoint answers", first.code
            )
        raise first

    # Leases

    async def grant(self, ttl: int, lease_id: int = 0) -> tuple[int, int]:
        """Grant a lease (``lease_id``: that ID, as a restore does; 0: etcd picks one); returns (lease id,
        granted TTL). A retried grant may leave an unused lease behind, which expires after its TTL."""
        request = rpc.LeaseGrantRequest(TTL=ttl, ID=lease_id)
        response = await self._unary("Lease", "LeaseGrant", request, retry=True)
        return response.ID, response.TTL

    async def revoke(self, lease_id: int) -> bool:
        """Revoke a lease and delete its keys; False if it was already gone (or an earlier attempt of this
        call revoked it)."""
        try:
            await self._unary("Lease", "LeaseRevoke", rpc.LeaseRevokeRequest(ID=lease_id), retry=True)
        except LeaseNotFound:
            return False
        return True

    async def time_to_live(self, lease_id: int) -> int:
        """Seconds the lease has left (-1 when it does not exist)."""
        return (await self.lease_ttls(lease_id))[0]

    async def lease_ttls(self, lease_id: int) -> tuple[int, int]:
        """Seconds the lease has left (-1 when it does not exist), and the TTL it was granted with."""
        request = rpc.LeaseTimeToLiveRequest(ID=lease_id)
        response = await self._unary("Lease", "LeaseTimeToLive", request, retry=True)
        return int(response.TTL), int(response.grantedTTL)

    async def lease_stream(self) -> LeaseStream:
        """The LeaseKeepAlive stream of the current member, shared by every session and keeper of this
        client (opened again once it ended); a member that loses its leader cancels it."""
        await self.connect()
        member = self._members[self._current]
        if member.lease_stream is None or member.lease_stream.ended:
            call = member.stub("Lease").LeaseKeepAlive(metadata=self._metadata("Lease"))
            member.lease_stream = LeaseStream(self, member, call)
            self._spawn(member.lease_stream.answers())
        return member.lease_stream

    # Watches

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

        The watch is cancelled when the block ends. Compaction raises :class:`Compacted`; a broken stream,
        or the client moving off the member, raises :class:`EtcdUnavailable`.
        """
        await self.connect()
        # The creation runs shielded: the caller's cancellation takes effect at once, and the watch, once
        # created, is cancelled in the background (a watch etcd creates for nobody would live on).
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
            watch = await asyncio.shield(creating)
        except asyncio.CancelledError:
            self._keep_until_done(creating)
            creating.add_done_callback(self._cancel_abandoned_watch)
            raise
        try:
            yield self._translated(watch)
        finally:
            await cancel_watch(watch)

    def _watcher(self, member: Member) -> Watcher:
        """The member's watch stream; a new one once it has ended (the member restarted, say: with one
        endpoint the client does not move off it, and an ended stream refuses every creation)."""
        if member.watcher is None or member.watcher.ended:
            stub = member.stub("Watch")
            member.watcher = Watcher(stub, metadata=self._metadata("Watch"))
        return member.watcher

    async def _create_watch(self, key: bytes, **options: Any) -> Watch:
        """Create a watch on the current member's stream.

        A refused creation, when this client authenticates, gets a new token and stream and one more try:
        the refusal may come from the stream's token having expired (etcd 3.5 says "permission denied").
        A creation waits as long as its stream lives (no timeout of its own); a hung member's stream is
        ended when the client moves off it.
        """
        for attempt in range(2):
            member = self._members[self._current]
            token = self.metadata
            try:
                with self._translate_errors():
                    return await Watch.create(member, self._watcher(member), key, **options)
            except WatchRefused as exc:
                error = refused_watch(exc.reason, str(member))
                if attempt == 0 and self.config.username is not None:
                    await self._reauthenticate(token)
                    continue
                raise error from None
            except grpc.aio.AioRpcError as exc:
                raise await self.failure(member, exc) from None
        raise AssertionError("unreachable")

    def _spawn(self, coro: Any) -> None:
        self._keep_until_done(asyncio.ensure_future(coro))

    def _keep_until_done(self, task: asyncio.Future[Any]) -> None:
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _cancel_abandoned_watch(self, creating: asyncio.Future[Any]) -> None:
        if not creating.cancelled() and creating.exception() is None:
            self._spawn(cancel_watch(creating.result()))

    async def _translated(self, watch: Watch) -> AsyncIterator[Any]:
        try:
            with self._translate_errors():
                async for event in watch:
                    yield event
        except grpc.aio.AioRpcError as exc:
            raise await self.failure(watch.member, exc) from None
        raise EtcdUnavailable(f"watch on etcd at {watch.member} ended")


class _TokenExpired(Exception):
    """etcd did not accept the auth token (it expires after idling): authenticate again."""
