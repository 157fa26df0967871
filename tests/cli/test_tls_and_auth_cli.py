"""`etcdlock` over TLS with a client certificate, and with a user and password, against a real etcd.

A refused connection or login is one stderr line that says what is wrong, and exit status 1.
"""

from __future__ import annotations

import datetime
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_support import Cli, assert_one_line_error, clean_env
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed448
from cryptography.x509.oid import NameOID

from etcdlock_sandbox.etcd import LocalEtcd, LocalTls


@pytest.fixture
def tls_cli(tls_etcd: LocalEtcd, tmp_path: Path) -> Iterator[Cli]:
    starter = Cli(tls_etcd.endpoint_list, tmp_path)
    try:
        yield starter
    finally:
        starter.close()


@pytest.fixture
def auth_cli(auth_etcd: LocalEtcd, tmp_path: Path) -> Iterator[Cli]:
    starter = Cli(auth_etcd.endpoint_list, tmp_path)
    try:
        yield starter
    finally:
        starter.close()


def client_cert(tls: LocalTls, ca: Path | None = None) -> list[str]:
    """The connection flags for a client with a certificate; ``ca`` replaces the CA that signed etcd's."""
    cert, key = str(tls.client_cert_file), str(tls.client_key_file)
    return ["--cacert", str(ca or tls.ca_file), "--cert", cert, "--key", key]


def fencing_token(cli: Cli, *args: str) -> int:
    """Run ``etcdlock ARGS... lock`` with a CMD that prints its fencing token; the token it printed."""
    proc = cli.run(*args, "--timeout", "0", "--", "sh", "-c", 'echo "$ETCDLOCK_FENCING_TOKEN"')
    assert proc.popen.returncode == 0, proc.describe()
    return int(proc.stdout.strip())


def test_lock_over_tls_with_a_client_certificate(tls_cli: Cli, tls: LocalTls, name: str) -> None:
    first = fencing_token(tls_cli, *client_cert(tls), "lock", name)
    assert fencing_token(tls_cli, *client_cert(tls), "lock", name) > first > 0
    status = tls_cli.run(*client_cert(tls), "status", name)
    assert status.popen.returncode == 0, status.describe()
    assert status.stdout.startswith(f"{name}: 0/1 held, 0 waiting")


def test_tls_without_a_client_certificate_is_one_line_and_exit_1(
    tls_cli: Cli, tls: LocalTls, name: str
) -> None:
    proc = tls_cli.etcdlock("--cacert", str(tls.ca_file), "lock", name, "--timeout", "0", "--", "true")
    line = assert_one_line_error(proc)
    assert "TLS handshake failed" in line and "client certificate" in line


def test_tls_with_the_wrong_ca_is_one_line_and_exit_1(
    tls_cli: Cli, tls: LocalTls, untrusted_ca: Path, name: str
) -> None:
    proc = tls_cli.etcdlock(*client_cert(tls, untrusted_ca), "lock", name, "--timeout", "0", "--", "true")
    line = assert_one_line_error(proc)
    assert "TLS handshake failed" in line and "not signed by a trusted CA" in line


def env_without_grpc_verbosity(verbosity: str | None = None) -> dict[str, str]:
    """The environment of a user who never heard of GRPC_VERBOSITY (or left it empty)."""
    env = clean_env()
    env.pop("GRPC_VERBOSITY", None)
    if verbosity is not None:
        env["GRPC_VERBOSITY"] = verbosity
    return env


@pytest.mark.parametrize("verbosity", [None, ""], ids=["unset", "empty"])
def test_a_failed_handshake_leaves_no_grpc_log_line(
    tls_cli: Cli, tls: LocalTls, untrusted_ca: Path, name: str, verbosity: str | None
) -> None:
    """gRPC's C core logs the failed handshake itself (by default, or with GRPC_VERBOSITY empty)."""
    proc = tls_cli.etcdlock(
        *client_cert(tls, untrusted_ca), "status", name, env=env_without_grpc_verbosity(verbosity)
    )
    line = assert_one_line_error(proc)
    assert "TLS handshake failed" in line


@pytest.fixture(scope="module")
def ed448_client(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed Ed448 certificate and its key: Python's ssl (OpenSSL) loads them, gRPC's TLS library
    (BoringSSL) has no Ed448 and logs errors about the files when it connects."""
    key = ed448.Ed448PrivateKey.generate()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ed448-client")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, None)
    )
    directory = tmp_path_factory.mktemp("ed448")
    cert, key_file = directory / "client.pem", directory / "client-key.pem"
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert, key_file


def test_tls_files_that_only_grpc_refuses_leave_no_grpc_error_line(
    tls_cli: Cli, tls: LocalTls, ed448_client: tuple[Path, Path], name: str
) -> None:
    cert, key = ed448_client
    try:  # what etcdlock checks before connecting: these files pass, so gRPC itself gets to refuse them
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(cert, key)
    except ssl.SSLError:
        pytest.skip("this Python's OpenSSL cannot load an Ed448 key either")
    proc = tls_cli.etcdlock(
        "--cacert", str(tls.ca_file), "--cert", str(cert), "--key", str(key), "status", name,
        env=env_without_grpc_verbosity(),
    )  # fmt: skip

    assert_one_line_error(proc)


def test_lock_with_user_and_password(auth_cli: Cli, name: str) -> None:
    assert fencing_token(auth_cli, "--user", "root:rootpw", "lock", name) > 0


def test_user_and_password_from_the_environment(auth_cli: Cli, name: str) -> None:
    proc = auth_cli.etcdlock(
        "lock", name, "--timeout", "0", "--", "true", env=clean_env(ETCDLOCK_USER="root:rootpw")
    )
    assert proc.wait() == 0, proc.describe()


def test_a_wrong_password_is_one_line_saying_authentication_failed(auth_cli: Cli, name: str) -> None:
    line = assert_one_line_error(auth_cli.etcdlock("--user", "root:wrong", "lock", name, "--", "true"))
    assert "authentication failed" in line


def test_no_user_is_one_line_asking_for_one(auth_cli: Cli, name: str) -> None:
    line = assert_one_line_error(auth_cli.etcdlock("lock", name, "--", "true"))
    assert "--user NAME:PASSWORD" in line


def test_a_user_outside_its_permitted_prefix_is_one_line_saying_permission_denied(auth_cli: Cli) -> None:
    assert auth_cli.run("--user", "alice:alicepw", "lock", "locks/ok", "--", "true").popen.returncode == 0
    line = assert_one_line_error(
        auth_cli.etcdlock("--user", "alice:alicepw", "lock", "elsewhere/x", "--", "true")
    )
    assert "permission denied" in line


def test_a_member_reached_by_address_with_the_name_its_certificate_carries(
    tls_etcd: LocalEtcd, tls: LocalTls, tmp_path: Path, name: str
) -> None:
    """``--tls-server-name``: a member's address (as a pod IP) with the name its certificate carries."""
    by_address = Cli(f"https://127.0.0.1:{tls_etcd.members[0].client_port}", tmp_path)
    try:
        assert (
            fencing_token(by_address, *client_cert(tls), "--tls-server-name", "localhost", "lock", name) > 0
        )
        proc = by_address.etcdlock(
            *client_cert(tls), "--tls-server-name", "elsewhere.example", "status", name
        )
        line = assert_one_line_error(proc)
        assert "elsewhere.example" in line, line
    finally:
        by_address.close()
