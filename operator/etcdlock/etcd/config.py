"""How to reach etcd: endpoints, credentials, TLS files and timeouts, parsed once from the user's words.

Every mistake here is a :class:`ConfigError` with a message naming what is wrong, before any connection.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from etcdlock.etcd.errors import ConfigError
from etcdlock.etcd.keys import non_utf8

DEFAULT_ENDPOINT = "http://127.0.0.1:2379"
DEFAULT_REQUEST_TIMEOUT = 5.0
MAX_REQUEST_TIMEOUT = 86_400.0
"""One day. gRPC turns a timeout into an absolute deadline, which overflows (every request then fails at
once with "Deadline Exceeded") somewhere beyond 3e9 seconds; a request timeout has to be finite anyway."""


@dataclass(frozen=True)
class Endpoint:
    """One etcd client URL: ``http(s)://host:port``; a bare ``host:port`` means http."""

    scheme: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Endpoint:
        """Refuse what etcd clients would misread: credentials, a path, port 0 (no port means 2379)."""
        raw = text.strip()
        if not raw:
            raise ConfigError("empty etcd endpoint")
        shown = _without_credentials(raw)
        undecodable = non_utf8(shown)
        if undecodable is not None:
            raise ConfigError(f"etcd endpoint {undecodable!r} is not valid UTF-8")
        try:
            url = urlsplit(raw if "://" in raw else f"http://{raw}")
        except ValueError as exc:  # e.g. unbalanced [ ] around an IPv6 address
            raise ConfigError(f"etcd endpoint {shown!r} is not a valid URL: {exc}") from None
        if url.scheme not in ("http", "https"):
            raise ConfigError(f"etcd endpoint {shown!r}: scheme must be http or https")
        if shown != raw:
            raise ConfigError(
                f"etcd endpoint {shown!r} has credentials in it; give them with --user NAME:PASSWORD"
            )
        try:
            port = url.port
        except ValueError:
            raise ConfigError(f"etcd endpoint {shown!r}: invalid port") from None
        if port == 0:
            raise ConfigError(f"etcd endpoint {shown!r}: invalid port 0 (use 1-65535, or no port for 2379)")
        if not url.hostname or url.path not in ("", "/") or url.query or url.fragment:
            raise ConfigError(f"etcd endpoint {shown!r} is not of the form http(s)://host:port")
        return cls(url.scheme, url.hostname, 2379 if port is None else port)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


def _without_credentials(raw: str) -> str:
    """``raw`` with all between ``://`` and its last ``@`` shown as ``***``: no message echoes a password.

    Cut up to the last ``@``, not to the first ``/``: a password may hold a ``/`` (or even ``://``).
    """
    scheme, sep, rest = raw.partition("://")
    if not sep:
        scheme, rest = "", raw
    if "@" not in rest:
        return raw
    return f"{scheme}{sep}***@{rest.rpartition('@')[2]}"


@dataclass(frozen=True)
class EtcdConfig:
    """How to reach etcd: endpoints (failover in order), optional user, optional TLS files, and the name
    the members' certificate must carry when it is not each endpoint's host (``server_name``: members
    reached by address, such as a pod's, whose certificate names them by DNS name)."""

    endpoints: tuple[Endpoint, ...] = (Endpoint.parse(DEFAULT_ENDPOINT),)
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT
    server_name: str | None = None

    @classmethod
    def parse(
        cls,
        endpoints: str | Sequence[str] = DEFAULT_ENDPOINT,
        *,
        user: str | None = None,
        ca_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        server_name: str | None = None,
    ) -> EtcdConfig:
        """Build a config from the user's words: ``"url,url"``, ``"NAME:PASSWORD"``, file paths."""
        items = endpoints.split(",") if isinstance(endpoints, str) else list(endpoints)
        parsed = tuple(Endpoint.parse(item) for item in items if item.strip())
        if not parsed:
            raise ConfigError("no etcd endpoint given")
        if len({e.scheme for e in parsed}) > 1:
            raise ConfigError("etcd endpoints mix http and https")
        username = password = None
        if user is not None:
            if non_utf8(user) is not None:  # never shown: it holds the password
                raise ConfigError("--user NAME:PASSWORD is not valid UTF-8")
            username, sep, password = user.partition(":")
            if not sep or not username:
                raise ConfigError("--user must be NAME:PASSWORD")
        if not 0 < request_timeout <= MAX_REQUEST_TIMEOUT:
            raise ConfigError(
                f"request timeout must be more than 0 and at most {MAX_REQUEST_TIMEOUT:g} seconds, "
                f"not {request_timeout}"
            )
        if (cert_file is None) != (key_file is None):
            raise ConfigError("--cert and --key go together")
        _check_tls_files(ca_file, cert_file, key_file)
        if server_name is not None and (not server_name or parsed[0].scheme != "https"):
            raise ConfigError("--tls-server-name needs https:// endpoints and a name")
        return cls(parsed, username, password, ca_file, cert_file, key_file, request_timeout, server_name)

    @property
    def uses_tls(self) -> bool:
        return self.endpoints[0].scheme == "https" or self.ca_file is not None or self.cert_file is not None

    def describe(self) -> str:
        return ",".join(str(e) for e in self.endpoints)


class _Encrypted(Exception):
    """Raised by the passphrase callback: the key file is encrypted."""


def _check_tls_files(ca_file: str | None, cert_file: str | None, key_file: str | None) -> None:
    """Load the TLS files now, so that a wrong one is named here instead of blamed on the network later.

    gRPC reads the files only when it connects; a file it cannot use then shows as "cannot reach etcd".
    Python's ssl module reads the same PEM files, and says which kind of error it met as attributes.
    """
    for path in (ca_file, cert_file, key_file):
        if path is not None:
            _check_readable(path)
    if ca_file is not None:
        _check_certificates(ca_file, "CA file", "--cacert")
    if cert_file is not None and key_file is not None:
        _check_certificates(cert_file, "client certificate", "--cert")
        _check_key(cert_file, key_file)


def _check_readable(path: str) -> None:
    if not Path(path).exists():
        raise ConfigError(f"TLS file {path} does not exist")
    if not Path(path).is_file():
        raise ConfigError(f"TLS file {path} is not a file")
    try:
        Path(path).open("rb").close()
    except OSError as exc:
        raise ConfigError(f"cannot read TLS file {path}: {exc.strerror}") from None


def _check_certificates(path: str, what: str, option: str) -> None:
    """At least one PEM certificate in ``path`` (a bundle of several is fine, a file of CRLs alone is not)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_verify_locations(cafile=path)
    except ssl.SSLError as exc:
        raise ConfigError(f"{what} {path} ({option}) holds no PEM certificate{_reason(exc)}") from None
    if context.cert_store_stats()["x509"] == 0:
        raise ConfigError(f"{what} {path} ({option}) holds no PEM certificate")


def _check_key(cert_file: str, key_file: str) -> None:
    """The key is a PEM private key with no passphrase (gRPC cannot ask for one) that fits the certificate."""

    def passphrase() -> str:
        raise _Encrypted

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_cert_chain(cert_file, key_file, password=passphrase)
    except _Encrypted:
        raise ConfigError(
            f"private key {key_file} (--key) is encrypted, and etcdlock cannot ask for its passphrase; "
            "give an unencrypted copy (openssl pkey -in KEY -out NEW)"
        ) from None
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise ConfigError(
                f"client certificate {cert_file} (--cert) and private key {key_file} (--key) do not match"
            ) from None
        # The certificate file holds a certificate (checked before), so what failed to load is the key.
        raise ConfigError(f"private key {key_file} (--key) holds no PEM private key{_reason(exc)}") from None


def _reason(exc: ssl.SSLError) -> str:
    """OpenSSL's name for the error, such as NO_CERTIFICATE_OR_CRL_FOUND, if it gave one."""
    return f" ({exc.reason})" if exc.reason else ""
