"""Key layout and values shared with etcdctl, and the client configuration (parsing errors, failover)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from engine_support import bounded, etcdctl, eventually, queue_keys, wait_for_key

from etcdlock.etcd import (
    ConfigError,
    Contender,
    EtcdClient,
    EtcdConfig,
    HolderInfo,
    LockTimeout,
    Mutex,
    Session,
    read_contenders,
)
from etcdlock.etcd.keys import contender_key, prefix, range_end
from etcdlock_sandbox.etcd import LocalEtcd, LocalTls, free_port

# --- key layout -------------------------------------------------------------------------------------------


def test_contender_key_is_name_slash_lowercase_unpadded_hex_lease() -> None:
    assert contender_key("jobs/nightly", 0x694DA210108A6B05) == b"jobs/nightly/694da210108a6b05"
    assert contender_key("x", 0xFF) == b"x/ff"
    assert prefix("x") == b"x/"
    assert range_end(b"x/") == b"x0"
    with pytest.raises(ValueError):
        prefix("")


def test_a_name_that_is_not_utf8_is_a_plain_value_error_naming_its_bytes() -> None:
    with pytest.raises(ValueError) as caught:
        prefix(os.fsdecode(b"jobs/\xff"))  # how Python hands over an argument that is not UTF-8
    assert type(caught.value) is ValueError
    assert str(caught.value) == r"a lock name must be valid UTF-8, not b'jobs/\xff'"


async def test_lock_key_in_etcd_is_name_slash_lease_hex_bound_to_the_lease(
    client: EtcdClient, session: Session, name: str
) -> None:
    async with Mutex(session, name, timeout=0) as lock:
        assert lock.key == f"{name}/{session.lease_id:x}"
        response = await client.range(lock.key.encode())
        (kv,) = response.kvs
        assert kv.lease == session.lease_id
        assert kv.create_revision == lock.token


async def test_lock_value_is_json_naming_holder_host_pid_and_time(
    client: EtcdClient, session: Session, name: str
) -> None:
    async with Mutex(session, name, holder="nightly-backup", timeout=0) as lock:
        response = await client.range(lock.key.encode())
        doc = json.loads(response.kvs[0].value)
        assert set(doc) == {"holder", "host", "pid", "acquired"}
        assert doc["holder"] == "nightly-backup"
        assert doc["host"] == socket.gethostname()
        assert doc["pid"] == os.getpid()
        assert datetime.fromisoformat(doc["acquired"].replace("Z", "+00:00")).tzinfo is not None
        (contender,) = (await read_contenders(client, name))[1]
        assert contender.info.holder == "nightly-backup"
        assert contender.describe() == f"nightly-backup ({lock.key})"


async def test_default_holder_names_host_and_pid(client: EtcdClient, session: Session, name: str) -> None:
    async with Mutex(session, name, timeout=0):
        (contender,) = (await read_contenders(client, name))[1]
        assert contender.info.holder == f"{socket.gethostname()}/{os.getpid()}"


@pytest.mark.parametrize("value", [b"", b"not json", b"[1, 2]", b'"text"', b"\xff\xfe", b"{}"])
def test_values_not_written_by_us_decode_to_an_empty_holder_info(value: bytes) -> None:
    assert HolderInfo.decode(value) == HolderInfo()
    contender = Contender(key="n/1f", create_revision=7, lease=0x1F, value=value)
    assert contender.info == HolderInfo()
    assert contender.describe() == "n/1f"
    assert contender.fencing_token == 7


def test_holder_info_ignores_fields_of_the_wrong_type() -> None:
    info = HolderInfo.decode(b'{"holder": 5, "host": "h", "pid": "12", "acquired": null, "permits": -1}')
    assert info == HolderInfo(host="h")
    assert HolderInfo.decode(HolderInfo(holder="a", host="b", pid=3, acquired="t").encode()) == HolderInfo(
        holder="a", host="b", pid=3, acquired="t"
    )


async def test_etcdctl_lock_excludes_our_try_lock_and_shows_an_empty_holder(
    etcd: LocalEtcd, client: EtcdClient, session: Session, name: str
) -> None:
    async with etcdctl(etcd, "lock", name) as lock_process:
        etcdctl_key = await lock_process.line()
        assert etcdctl_key.startswith(f"{name}/")
        int(etcdctl_key.removeprefix(f"{name}/"), 16)
        with pytest.raises(LockTimeout) as caught:
            await bounded(Mutex(session, name).acquire(timeout=0))
        (holder,) = caught.value.holders
        assert holder.key == etcdctl_key
        assert holder.value == b""
        assert holder.info == HolderInfo()
        assert etcdctl_key in str(caught.value)
        assert await queue_keys(client, name) == [etcdctl_key]
        assert await lock_process.stop() == 0
    async with Mutex(session, name, timeout=0) as lock:
        assert await queue_keys(client, name) == [lock.key]


async def test_etcdctl_lock_waits_for_our_mutex_and_gets_it_on_release(
    etcd: LocalEtcd, client: EtcdClient, session: Session, name: str
) -> None:
    lock = await Mutex(session, name).acquire(timeout=0)
    async with etcdctl(etcd, "lock", name) as lock_process:
        contenders: list[Contender] = []

        async def etcdctl_queued() -> bool:
            nonlocal contenders
            _, contenders = await read_contenders(client, name)
            return len(contenders) == 2

        await eventually(etcdctl_queued, "etcdctl lock to queue behind our holder")
        assert contenders[0].key == lock.key
        waiter = contenders[1]
        assert waiter.value == b""
        assert waiter.key == f"{name}/{waiter.lease:x}"
        assert await lock.release()
        assert await lock_process.line() == waiter.key
        await wait_for_key(client, name, waiter.key)
        assert await lock_process.stop() == 0
    assert await queue_keys(client, name) == []


# --- configuration ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("endpoints", "message"),
    [
        ("ftp://127.0.0.1:2379", "scheme must be http or https"),
        ("unix:///tmp/etcd.sock", "scheme must be http or https"),
        ("http://127.0.0.1:notaport", "invalid port"),
        ("http://127.0.0.1:99999", "invalid port"),
        ("http://127.0.0.1:0", "invalid port 0 (use 1-65535, or no port for 2379)"),
        ("http://[::1", "'http://[::1' is not a valid URL"),
        ("http://::1]:2379", "not a valid URL"),
        ("http://127.0.0.1:2379/v3/kv", "not of the form http(s)://host:port"),
        ("http://127.0.0.1:2379,https://127.0.0.2:2379", "mix http and https"),
        ("", "no etcd endpoint"),
        (" , ", "no etcd endpoint"),
    ],
)
def test_bad_endpoints_are_refused_with_a_clear_message(endpoints: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        EtcdConfig.parse(endpoints)


@pytest.mark.parametrize(
    "endpoint",
    [
        "http://alice:s3cret@127.0.0.1:2379",
        "alice:s3cret@127.0.0.1:2379",
        "https://:s3cret@etcd:2379",
        "http://alice:s3cret@[::1",
        "ftp://alice:s3cret@etcd:2379",
        "http://alice:s3/cret@etcd:2379",
        "http://alice@etcd:2379",
        "http://alice:s3://cret@etcd:2379",
    ],
)
def test_credentials_in_an_endpoint_are_refused_without_echoing_them(endpoint: str) -> None:
    with pytest.raises(ConfigError) as caught:
        EtcdConfig.parse(endpoint)
    message = str(caught.value)
    assert "s3" not in message and "alice" not in message
    assert "***@" in message


def test_credentials_in_an_endpoint_point_to_the_user_option() -> None:
    with pytest.raises(ConfigError) as caught:
        EtcdConfig.parse("http://alice:s3cret@127.0.0.1:2379")
    assert str(caught.value) == (
        "etcd endpoint 'http://***@127.0.0.1:2379' has credentials in it; give them with --user NAME:PASSWORD"
    )


def test_an_endpoint_without_a_port_means_2379() -> None:
    config = EtcdConfig.parse("http://etcd,http://[::1],10.0.0.1")
    assert [e.port for e in config.endpoints] == [2379, 2379, 2379]


def test_endpoints_and_user_that_are_not_utf8_are_refused_before_any_request() -> None:
    with pytest.raises(ConfigError, match=r"etcd endpoint b'http://\\xff:2379' is not valid UTF-8"):
        EtcdConfig.parse(os.fsdecode(b"http://\xff:2379"))
    with pytest.raises(ConfigError) as caught:
        EtcdConfig.parse("http://127.0.0.1:2379", user=os.fsdecode(b"alice:s3cr\xffet"))
    assert str(caught.value) == "--user NAME:PASSWORD is not valid UTF-8"


@pytest.mark.parametrize("seconds", [0.0, -1.0, float("nan"), float("inf"), 86_400.5, 1e300])
def test_a_request_timeout_must_be_positive_and_finite(seconds: float) -> None:
    with pytest.raises(ConfigError, match="request timeout must be more than 0 and at most 86400 seconds"):
        EtcdConfig.parse("http://127.0.0.1:2379", request_timeout=seconds)


def test_bad_credentials_and_tls_files_are_refused_with_a_clear_message(tmp_path: Path) -> None:
    existing = tmp_path / "client.pem"
    existing.write_text("not really a certificate")
    missing = tmp_path / "missing.pem"
    with pytest.raises(ConfigError, match="--cert and --key go together"):
        EtcdConfig.parse("https://127.0.0.1:2379", cert_file=str(existing))
    with pytest.raises(ConfigError, match="--cert and --key go together"):
        EtcdConfig.parse("https://127.0.0.1:2379", key_file=str(existing))
    with pytest.raises(ConfigError, match=f"TLS file {missing} does not exist"):
        EtcdConfig.parse("https://127.0.0.1:2379", ca_file=str(missing))
    with pytest.raises(ConfigError, match=f"TLS file {missing} does not exist"):
        EtcdConfig.parse("https://127.0.0.1:2379", cert_file=str(existing), key_file=str(missing))
    with pytest.raises(ConfigError, match="NAME:PASSWORD"):
        EtcdConfig.parse("http://127.0.0.1:2379", user="alice")


def test_good_config_keeps_endpoints_in_order_and_detects_tls(tls: LocalTls) -> None:
    config = EtcdConfig.parse("127.0.0.1:2379, http://[::1]:2380", user="alice:s3:cret")
    assert config.describe() == "http://127.0.0.1:2379,http://[::1]:2380"
    assert (config.username, config.password) == ("alice", "s3:cret")
    assert "s3:cret" not in repr(config)
    assert not config.uses_tls
    assert EtcdConfig.parse("https://etcd:2379").uses_tls
    assert EtcdConfig.parse("http://etcd:2379", ca_file=str(tls.ca_file)).uses_tls


def test_good_tls_files_are_accepted_also_as_one_file_with_certificate_and_key(
    tls: LocalTls, tmp_path: Path
) -> None:
    cert, key = str(tls.client_cert_file), str(tls.client_key_file)
    config = EtcdConfig.parse("https://etcd:2379", ca_file=str(tls.ca_file), cert_file=cert, key_file=key)
    assert (config.ca_file, config.cert_file, config.key_file) == (str(tls.ca_file), cert, key)
    both = tmp_path / "client-with-key.pem"
    both.write_bytes(tls.client_key_file.read_bytes() + tls.client_cert_file.read_bytes())
    EtcdConfig.parse("https://etcd:2379", cert_file=str(both), key_file=str(both))
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(tls.ca_file.read_bytes() + tls.client_cert_file.read_bytes())
    EtcdConfig.parse("https://etcd:2379", ca_file=str(bundle))


def _crl_only(path: Path) -> Path:
    """A PEM file with a certificate revocation list and no certificate."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "some CA")]))
        .last_update(now)
        .next_update(now + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    path.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    return path


def test_tls_files_that_grpc_could_not_use_are_refused_naming_the_file_and_the_fault(
    tls: LocalTls, encrypted_client_key: Path, tmp_path: Path
) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not really a certificate\n")
    crl = _crl_only(tmp_path / "crl.pem")
    encrypted = encrypted_client_key
    ca, cert, key = str(tls.ca_file), str(tls.client_cert_file), str(tls.client_key_file)

    def refusal(ca_file: object = None, cert_file: object = None, key_file: object = None) -> str:
        with pytest.raises(ConfigError) as caught:
            EtcdConfig.parse(
                "https://etcd:2379",
                ca_file=None if ca_file is None else str(ca_file),
                cert_file=None if cert_file is None else str(cert_file),
                key_file=None if key_file is None else str(key_file),
            )
        return str(caught.value)

    no_certificate = "holds no PEM certificate (NO_CERTIFICATE_OR_CRL_FOUND)"
    assert refusal(ca_file=garbage) == f"CA file {garbage} (--cacert) {no_certificate}"
    assert refusal(ca_file=key) == f"CA file {key} (--cacert) {no_certificate}"
    assert refusal(ca_file=crl) == f"CA file {crl} (--cacert) holds no PEM certificate"
    assert refusal(ca_file=tmp_path) == f"TLS file {tmp_path} is not a file"
    assert refusal(ca, garbage, key) == f"client certificate {garbage} (--cert) {no_certificate}"
    assert refusal(ca, key, key) == f"client certificate {key} (--cert) {no_certificate}"
    assert refusal(ca, cert, garbage) == f"private key {garbage} (--key) holds no PEM private key"
    assert refusal(ca, cert, cert) == f"private key {cert} (--key) holds no PEM private key"
    assert refusal(ca, cert, tls.server_key_file) == (
        f"client certificate {cert} (--cert) and private key {tls.server_key_file} (--key) do not match"
    )
    assert refusal(ca, cert, encrypted) == (
        f"private key {encrypted} (--key) is encrypted, and etcdlock cannot ask for its passphrase; "
        "give an unencrypted copy (openssl pkey -in KEY -out NEW)"
    )


async def test_client_fails_over_from_a_dead_first_endpoint_to_a_live_one(etcd: LocalEtcd, name: str) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    config = EtcdConfig.parse([dead, etcd.endpoints[0]])
    async with EtcdClient(config) as client, Session(client, ttl=5) as session, asyncio.timeout(15):
        async with Mutex(session, name, timeout=5) as lock:
            assert await queue_keys(client, name) == [lock.key]
        assert await client.time_to_live(session.lease_id) > 0
