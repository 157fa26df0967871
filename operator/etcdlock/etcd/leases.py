"""Lease keepalive streams: a session's (or a keeper's) renewals, on one member.

A stream is an object of its own, living as long as its owner renews through it, unlike the client's
one-shot lease calls (grant, revoke, time to live). The client opens it (``EtcdClient.lease_stream``) and
is told when its member fails, so that the next stream goes to another member.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import grpc
from aetcd import rpc

from etcdlock.etcd.errors import EtcdUnavailable

if TYPE_CHECKING:
    from etcdlock.etcd._transport import Member
    from etcdlock.etcd.client import EtcdClient


class LeaseStream:
    """A LeaseKeepAlive stream on one member, for one :class:`~etcdlock.etcd.session.Session`.

    A member that does not answer a renewal in time, or breaks the stream, is moved off, so the next
    stream goes to another member well before the lease's TTL runs out.
    """

    def __init__(self, client: EtcdClient, member: Member, call: Any) -> None:
        self._client = client
        self._member = member
        self._call = call

    async def renew(self, lease_id: int, timeout: float) -> int:
        """Renew the lease once; its TTL as etcd granted it (0 or less: the lease is gone).

        Raises :class:`EtcdUnavailable` if the member did not answer within ``timeout`` or the stream broke.
        """
        try:
            async with asyncio.timeout(timeout):
                await self._call.write(rpc.LeaseKeepAliveRequest(ID=lease_id))
                response = await self._call.read()
        except TimeoutError:
            why = f"etcd at {self._member} did not renew the lease within {timeout:.1f}s"
            raise EtcdUnavailable(why) from None
        except grpc.aio.AioRpcError as exc:
            raise await self._client.failure(self._member, exc) from None
        except asyncio.InvalidStateError:
            # The stream had already ended (the member closed it) when the renewal was written.
            code = await self._call.code()
            raise EtcdUnavailable(
                f"etcd at {self._member} ended the keepalive stream ({code.name})"
            ) from None
        if response is grpc.aio.EOF:
            raise EtcdUnavailable(f"etcd at {self._member} closed the keepalive stream")
        return int(response.TTL)

    async def renew_all(self, lease_ids: list[int], timeout: float) -> dict[int, int]:
        """Renew several leases at once: each lease's TTL as etcd granted it (0 or less: gone)."""
        ttls: dict[int, int] = {}
        try:
            async with asyncio.timeout(timeout):
                for lease_id in lease_ids:
                    await self._call.write(rpc.LeaseKeepAliveRequest(ID=lease_id))
                while len(ttls) < len(set(lease_ids)):
                    response = await self._call.read()
                    if response is grpc.aio.EOF:
                        raise EtcdUnavailable(f"etcd at {self._member} closed the keepalive stream")
                    ttls[int(response.ID)] = int(response.TTL)
        except TimeoutError:
            raise EtcdUnavailable(
                f"etcd at {self._member} did not renew leases within {timeout:.1f}s"
            ) from None
        except grpc.aio.AioRpcError as exc:
            raise await self._client.failure(self._member, exc) from None
        except asyncio.InvalidStateError:
            raise EtcdUnavailable(f"etcd at {self._member} ended the keepalive stream") from None
        return ttls

    def close(self) -> None:
        self._call.cancel()
