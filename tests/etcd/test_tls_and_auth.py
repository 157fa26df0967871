"""TLS with client certificates, and users with passwords, against a real etcd (never a mock).

The auth tests run on an etcd of their own (``auth_etcd``): authentication is enabled there, and its tokens
expire after 2 idle seconds, so a test can let a token expire and watch the client get a new one.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import trustme
from engine_support import bounded, eventually, raw_delete

from etcdlock.etcd import ConfigError, EtcdClient, EtcdConfig, EtcdDenied, Mutex, Session
from etcdlock.etcd.requests import put_op
from etcdlock_sandbox.etcd import LocalEtcd, LocalTls

ROOT = "root:rootpw"
ALICE = "alice:alicepw"  # may read and write under locks/ only

# Longer than auth_etcd's --auth-token-ttl=2: etcd drops an unused token 2 s after its last use, on a
# once-a-second sweep. Idling this long is what these tests are about, so here a sleep is the point.
TOKEN_IDLE = 4.0


def tls_config(
    etcd: LocalEtcd, tls: LocalTls, *, ca: Path | None = None, client_cert: bool = True
) -> EtcdConfig:
    return EtcdConfig.parse(
        etcd.endpoints,
        ca_file=str(ca or tls.ca_file),
        cert_file=str(tls.client_cert_file) if client_cert else None,
        key_file=str(tls.client_key_file) if client_cert else None,
    )


async def keys_under(etcd: LocalEtcd, prefix: str, *auth: str) -> list[str]:
    """Keys under ``prefix`` as etcdctl sees them (a second, independent client)."""
    done = await asyncio.to_thread(etcd.etcdctl, *auth, "get", "--prefix", "--keys-only", prefix)
    assert done.returncode == 0, done.stderr
    return [line for line in done.stdout.splitlines() if line]


async def has_keys(etcd: LocalEtcd, prefix: str, count: int, *auth: str) -> bool:
    return len(await keys_under(etcd, prefix, *auth)) == count


# TLS


async def test_client_certificate_over_tls_takes_hands_over_and_releases_a_mutex(
    tls_etcd: LocalEtcd, tls: LocalTls, name: str
) -> None:
    async with (
        EtcdClient(tls_config(tls_etcd, tls)) as client,
        Session(client, ttl=5) as first,
        Session(client, ttl=5) as second,
    ):
        holder = await bounded(Mutex(first, name).acquire(timeout=0))
        assert await keys_under(tls_etcd, name + "/") == [holder.key]
        waiter = asyncio.ensure_future(Mutex(second, name).acquire(timeout=5))
        await eventually(lambda: has_keys(tls_etcd, name + "/", 2), "the waiter's key")
        fencing_token = holder.token
        assert await holder.release()
        successor = await bounded(waiter)
        assert successor.token > fencing_token
        assert await keys_under(tls_etcd, name + "/") == [successor.key]
        assert await successor.release()
    assert await keys_under(tls_etcd, name + "/") == []


async def test_tls_without_a_client_certificate_is_refused(tls_etcd: LocalEtcd, tls: LocalTls) -> None:
    async with EtcdClient(tls_config(tls_etcd, tls, client_cert=False)) as client:
        with pytest.raises(EtcdDenied, match=r"TLS handshake failed.*client certificate"):
            await bounded(client.range(b"anything"))


async def test_tls_with_a_ca_that_did_not_sign_etcds_certificate_is_refused(
    tls_etcd: LocalEtcd, tls: LocalTls, untrusted_ca: Path
) -> None:
    async with EtcdClient(tls_config(tls_etcd, tls, ca=untrusted_ca)) as client:
        with pytest.raises(EtcdDenied, match=r"TLS handshake failed.*not signed by a trusted CA"):
            await bounded(client.range(b"anything"))


async def test_members_reached_by_address_are_checked_against_the_server_name_given(
    tmp_path: Path, name: str
) -> None:
    """``server_name``: a member whose certificate names only ``member.example`` (not its address, as an
    EtcdCluster member's names only DNS names) is reached at 127.0.0.1 with that name; a name the
    certificate does not carry is refused, saying so."""
    ca = trustme.CA()
    server, client = ca.issue_cert("member.example"), ca.issue_cert("client")
    files = {
        "ca.pem": ca.cert_pem,
        "server.pem": server.cert_chain_pems[0],
        "server-key.pem": server.private_key_pem,
        "client.pem": client.cert_chain_pems[0],
        "client-key.pem": client.private_key_pem,
    }
    for file, blob in files.items():
        blob.write_to_path(str(tmp_path / file))
    paths = [tmp_path / file for file in files]
    named = LocalTls(*paths, server_name="member.example")

    def config(etcd: LocalEtcd, server_name: str) -> EtcdConfig:
        return EtcdConfig.parse(
            f"https://127.0.0.1:{etcd.members[0].client_port}",
            ca_file=str(named.ca_file),
            cert_file=str(named.client_cert_file),
            key_file=str(named.client_key_file),
            server_name=server_name,
        )

    with LocalEtcd(size=1, tls=named) as etcd:
        async with EtcdClient(config(etcd, "member.example")) as client, Session(client, ttl=5) as session:
            holder = await bounded(Mutex(session, name).acquire(timeout=0))
            await bounded(holder.release())
        async with EtcdClient(config(etcd, "elsewhere.example")) as client:
            with pytest.raises(EtcdDenied, match=r"TLS handshake failed.*elsewhere\.example"):
                await bounded(client.range(b"anything"))
    with pytest.raises(ConfigError, match="--tls-server-name needs https"):
        EtcdConfig.parse("http://127.0.0.1:2379", server_name="member.example")


# Users and passwords


async def test_root_takes_a_mutex_when_auth_is_enabled(auth_etcd: LocalEtcd, name: str) -> None:
    async with EtcdClient(EtcdConfig.parse(auth_etcd.endpoints, user=ROOT)) as client:
        async with Session(client, ttl=5) as session, Mutex(session, name, timeout=0) as lock:
            assert await keys_under(auth_etcd, name + "/", f"--user={ROOT}") == [lock.key]
        assert await keys_under(auth_etcd, name + "/", f"--user={ROOT}") == []


async def test_a_user_locks_inside_its_permitted_prefix_and_is_denied_outside(auth_etcd: LocalEtcd) -> None:
    async with (
        EtcdClient(EtcdConfig.parse(auth_etcd.endpoints, user=ALICE)) as client,
        Session(client, ttl=5) as session,
    ):
        async with Mutex(session, "locks/nightly", timeout=0) as lock:
            assert await keys_under(auth_etcd, "locks/nightly", f"--user={ROOT}") == [lock.key]
        with pytest.raises(EtcdDenied, match="permission denied"):
            await bounded(Mutex(session, "elsewhere/nightly").acquire(timeout=0))
    assert await keys_under(auth_etcd, "elsewhere/", f"--user={ROOT}") == []


async def test_a_watch_etcd_refuses_fails_instead_of_waiting_for_ever(auth_etcd: LocalEtcd) -> None:
    """etcd answers a refused watch with "created and cancelled"; it must not pass for a live watch."""
    async with EtcdClient(EtcdConfig.parse(auth_etcd.endpoints, user=ALICE)) as client:
        with pytest.raises(EtcdDenied, match="permission denied"):
            async with client.watch_events(b"elsewhere/key", start_revision=0):
                pytest.fail("a watch outside alice's prefix was created")
        # The refusal did not break the stream for permitted watches.
        async with client.watch_events(b"locks/key", start_revision=0) as events:
            await client.txn([], [put_op(b"locks/key", b"v")])
            event = await bounded(anext(aiter(events)))
        assert event.kv.key == b"locks/key"


async def test_a_wrong_password_fails_saying_authentication_failed(auth_etcd: LocalEtcd) -> None:
    client = EtcdClient(EtcdConfig.parse(auth_etcd.endpoints, user="root:wrong"))
    with pytest.raises(EtcdDenied, match="authentication failed"):
        await bounded(client.connect())
    await client.close()


async def test_no_user_fails_saying_credentials_are_needed(auth_etcd: LocalEtcd, name: str) -> None:
    async with EtcdClient(EtcdConfig.parse(auth_etcd.endpoints)) as client:
        with pytest.raises(EtcdDenied, match=r"user name is empty.*--user NAME:PASSWORD"):
            await bounded(client.range(name.encode()))


# Expired auth tokens


async def test_after_the_token_expires_sessions_live_on_and_locks_still_hand_over(
    auth_etcd: LocalEtcd, name: str
) -> None:
    """Keepalives go on over the stream opened with the old token; the next call gets a new token, and
    watches made from then on (a waiter's, a re-established guard's) deliver their events."""
    loop = asyncio.get_running_loop()
    async with (
        EtcdClient(EtcdConfig.parse(auth_etcd.endpoints, user=ROOT)) as client,
        Session(client, ttl=3) as first,
        Session(client, ttl=3) as second,
    ):
        holder = await Mutex(first, name).acquire(timeout=0)  # its guard opens the watch stream
        old_token = client.metadata

        await asyncio.sleep(TOKEN_IDLE)
        expired_at = loop.time()

        waiter = asyncio.ensure_future(Mutex(second, name).acquire(timeout=5))
        await eventually(lambda: has_keys(auth_etcd, name + "/", 2, f"--user={ROOT}"), "the waiter's key")
        assert client.metadata != old_token, "the token never expired: the test proved nothing"

        # Deleted from outside (as etcdctl del would): the holder's guard notices, the waiter is woken.
        assert await raw_delete(client, holder.key)
        assert "deleted" in await bounded(holder.wait_lost())
        successor = await bounded(waiter)
        assert successor.token > holder.token

        for session in (first, second):

            async def renewed_after_expiry(session: Session = session) -> bool:
                # An acknowledged renewal moves the deadline to (time it was sent) + TTL.
                return session.deadline >= expired_at + session.ttl

            await eventually(renewed_after_expiry, "a keepalive acknowledged after the token expired")
            assert not session.is_lost
            assert await client.time_to_live(session.lease_id) > 0
        await successor.release()


async def test_a_watch_that_is_the_first_call_after_the_token_expired_gets_a_new_token(
    auth_etcd: LocalEtcd,
) -> None:
    async with (
        EtcdClient(EtcdConfig.parse(auth_etcd.endpoints, user=ROOT)) as client,
        EtcdClient(EtcdConfig.parse(auth_etcd.endpoints, user=ROOT)) as writer,
    ):
        async with client.watch_events(b"warm-up", start_revision=0):
            pass  # the watch stream is now open, with the first token
        old_token = client.metadata

        await asyncio.sleep(TOKEN_IDLE)

        async with client.watch_events(b"key", start_revision=0) as events:
            await writer.txn([], [put_op(b"key", b"v")])
            event = await bounded(anext(aiter(events)))
        assert event.kv.key == b"key"
        assert client.metadata != old_token
