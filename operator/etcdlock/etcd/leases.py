"""Lease keepalive streams: one per member, shared by every session and keeper of a client.

etcd's Go client carries all the leases of a client on one LeaseKeepAlive stream; so does this one, so a
thousand sessions cost one stream, not a thousand. Renewals are written in turn; each answer carries its
lease's ID and goes to the renewal that waits for it. A stream that breaks, or goes silent (a renewal
not answered in time while no other answer came either), ends for every lease on it: their owners renew
again on the client's next stream (on another member if the client moved off this one), well before
their TTLs run out. A renewal that is merely late on a stream that still answers fails alone, so a
keeper renewing a thousand leases at once does not end the stream of every session beside it. The
client opens the stream (``EtcdClient.lease_stream``) and ends it when it moves off the member or closes.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import grpc
from aetcd import rpc

from etcdlock.etcd.errors import EtcdError, EtcdUnavailable

if TYPE_CHECKING:
    from etcdlock.etcd._transport import Member
    from etcdlock.etcd.client import EtcdClient


class LeaseStream:
    """The LeaseKeepAlive stream of one member; :meth:`answers` (run by the client) reads it."""

    def __init__(self, client: EtcdClient, member: Member, call: Any) -> None:
        self._client = client
        self._member = member
        self._call = call
        self._writing = asyncio.Lock()
        self._waiting: dict[int, list[asyncio.Future[int]]] = {}
        self._ended: EtcdError | None = None
        self._answered_at = 0.0  # event-loop time of the last answer read

    @property
    def ended(self) -> bool:
        return self._ended is not None

    async def renew(self, lease_id: int, timeout: float) -> int:
        """Renew the lease once; its TTL as etcd granted it (0 or less: the lease is gone).

        Raises :class:`EtcdUnavailable` (or the stream's error) if the member did not answer within
        ``timeout`` or the stream broke.
        """
        return (await self.renew_all([lease_id], timeout))[lease_id]

    async def renew_all(self, lease_ids: list[int], timeout: float) -> dict[int, int]:
        """Renew several leases at once: each lease's TTL as etcd granted it (0 or less: gone)."""
        answers: dict[int, asyncio.Future[int]] = {}
        sent = asyncio.get_running_loop().time()
        try:
            async with asyncio.timeout(timeout):
                async with self._writing:
                    for lease_id in sorted(set(lease_ids)):
                        answers[lease_id] = await self._send(lease_id)
                return {lease_id: await answer for lease_id, answer in answers.items()}
        except TimeoutError:
            late = EtcdUnavailable(f"etcd at {self._member} did not renew leases within {timeout:.1f}s")
            if self._answered_at < sent:
                self.end(late)  # silent since the renewal was sent: the stream (or its member) hangs
            raise late from None
        finally:
            for answer in answers.values():
                self._forget(answer)

    async def answers(self) -> None:
        """Read the stream until it ends, handing each answer to the renewal of its lease."""
        try:
            while (response := await self._call.read()) is not grpc.aio.EOF:
                self._answered_at = asyncio.get_running_loop().time()
                waiting = self._waiting.get(int(response.ID))
                if waiting:
                    answer = waiting.pop(0)
                    if not answer.done():
                        answer.set_result(int(response.TTL))
            self.end(EtcdUnavailable(f"etcd at {self._member} closed the keepalive stream"))
        except grpc.aio.AioRpcError as exc:
            self.end(await self._client.failure(self._member, exc))
        except asyncio.InvalidStateError:
            self.end(EtcdUnavailable(f"etcd at {self._member} ended the keepalive stream"))

    def end(self, error: EtcdError) -> None:
        """End the stream: every renewal waiting on it fails with ``error``."""
        if self._ended is not None:
            return
        self._ended = error
        self._call.cancel()
        for waiting in self._waiting.values():
            for answer in waiting:
                if not answer.done():
                    answer.set_exception(error)
        self._waiting.clear()

    def _forget(self, answer: asyncio.Future[int]) -> None:
        """Stop waiting for ``answer``. A late one stays in its lease's line: etcd answers each lease's
        renewals in order, and the late answer must not be taken for a later renewal's (whose deadline
        would then count from the later send, after the server's)."""
        if not answer.done():
            answer.cancel()
        elif not answer.cancelled():
            answer.exception()  # retrieved: an answer nobody awaits any more is not an error to report

    async def _send(self, lease_id: int) -> asyncio.Future[int]:
        """Write one renewal; the future its answer will be handed to (in line before the write, so the
        answer cannot come first)."""
        if self._ended is not None:
            raise self._ended
        answer: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(lease_id, []).append(answer)
        try:
            await self._call.write(rpc.LeaseKeepAliveRequest(ID=lease_id))
        except grpc.aio.AioRpcError as exc:
            self._unsent(answer, await self._client.failure(self._member, exc))
            raise self._ended from None  # type: ignore[misc]
        except asyncio.InvalidStateError:
            self._unsent(answer, EtcdUnavailable(f"etcd at {self._member} ended the keepalive stream"))
            raise self._ended from None  # type: ignore[misc]
        except BaseException:  # interrupted: a timeout, or its owner cancelled
            self._unsent(answer, EtcdUnavailable(f"a renewal on etcd at {self._member} was interrupted"))
            raise
        return answer

    def _unsent(self, answer: asyncio.Future[int], error: EtcdError) -> None:
        """A renewal whose write failed or was interrupted: whether it went out is unknown, so the line of
        answers of its lease can no longer be trusted, and the stream ends."""
        self.end(error)
        self._forget(answer)
