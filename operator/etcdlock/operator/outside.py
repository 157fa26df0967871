"""Locks on an etcd the user already runs (``spec.etcd``): where it is, and what its Secret gives to reach it.

A lock names the etcd by its client URLs and, optionally, a Secret of its own namespace holding what that
etcd asks of clients, in the layout of a ``kubernetes.io/tls`` Secret (so the Secrets cert-manager,
etcd-druid and etcd-operator write serve as they are) plus etcd's user and password:

- ``ca.crt``: the CA that signed the members' certificates (absent: the public CAs gRPC trusts by default);
- ``tls.crt`` and ``tls.key``: a client certificate, together;
- ``username`` and ``password``: an etcd user, together.

The operator reaches such an etcd with nothing but what the Secret gives: never its own client certificate,
never an EtcdCluster's. The Secret is read only from the lock's namespace, by name.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from etcdlock.etcd import EtcdConfig
from etcdlock.etcd.config import Endpoint
from etcdlock.etcd.errors import ConfigError
from etcdlock.operator.credentials import CA, CERT, KEY, TlsFiles
from etcdlock.operator.errors import InvalidSpec, SecretInvalid

USERNAME, PASSWORD = "username", "password"
MAX_ENDPOINTS = 16
MAX_URL = 512  # as the CRD's schema says
# The longest ``etcdlock.io/cluster`` read as a description of an etcd: more than any valid ``spec.etcd``
# writes (16 URLs of 512 characters, two names of 253), far less than what makes parsing it costly.
MAX_WHERE = 16 * 1024
_DNS_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
Address = tuple[str, int]


@dataclass(frozen=True)
class OutsideEtcd:
    """A validated ``spec.etcd``: client URLs (``http(s)://host:port``, normalised), the Secret of the
    lock's namespace that reaches them (None: no credentials), and the name the members' certificate
    carries when it is not the host of each URL."""

    endpoints: tuple[str, ...]
    secret: str | None = None
    server_name: str | None = None

    @classmethod
    def parse(cls, spec: Any) -> OutsideEtcd:
        """Check ``spec.etcd`` as the CRD schema does (it may have been stored before the schema was)."""
        if not isinstance(spec, dict):
            raise InvalidSpec("spec.etcd must be an object")
        urls = spec.get("endpoints")
        if not isinstance(urls, list) or not urls or len(urls) > MAX_ENDPOINTS:
            raise InvalidSpec(f"spec.etcd.endpoints must list 1 to {MAX_ENDPOINTS} client URLs")
        endpoints = tuple(_endpoint(url) for url in urls)
        if len({e.scheme for e in endpoints}) > 1:
            raise InvalidSpec("spec.etcd.endpoints mix http:// and https://")
        ref = spec.get("secretRef")
        if ref is not None and not isinstance(ref, dict):
            raise InvalidSpec("spec.etcd.secretRef must be an object naming a Secret")
        secret = (ref or {}).get("name")
        if secret is not None and (not isinstance(secret, str) or not _DNS_NAME.match(secret)):
            raise InvalidSpec(f"spec.etcd.secretRef.name must be the name of a Secret, not {secret!r}")
        server_name = spec.get("serverName")
        if server_name is not None:
            if not isinstance(server_name, str) or not server_name:
                raise InvalidSpec("spec.etcd.serverName must be a host name")
            if endpoints[0].scheme != "https":
                raise InvalidSpec("spec.etcd.serverName needs https:// endpoints")
        return cls(tuple(str(e) for e in endpoints), secret, server_name)

    @property
    def tls(self) -> bool:
        return self.endpoints[0].startswith("https://")

    @property
    def addresses(self) -> tuple[Address, ...]:
        """Each endpoint's (host, port): two locks naming one of the same are on the same etcd."""
        parsed = (Endpoint.parse(url) for url in self.endpoints)
        return tuple((e.host.lower(), e.port) for e in parsed)

    @property
    def where(self) -> str:
        """This etcd as one string (JSON), written on a pod whose lease lives there (``etcdlock.io/cluster``,
        whose other values are EtcdCluster names, which never start with ``{``)."""
        described: dict[str, Any] = {"endpoints": list(self.endpoints)}
        if self.secret is not None:
            described["secretRef"] = {"name": self.secret}
        if self.server_name is not None:
            described["serverName"] = self.server_name
        return json.dumps(described, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_where(cls, text: str) -> OutsideEtcd | None:
        """The etcd ``text`` (see :attr:`where`) describes; None if it names an EtcdCluster instead.

        Whoever may edit the pod may write anything there: whatever it is (too long, nested too deep, of
        another shape), it is :class:`InvalidSpec`, never another error."""
        if not describes_etcd(text):
            return None
        try:
            if len(text) > MAX_WHERE:
                raise InvalidSpec(f"longer than {MAX_WHERE} characters")
            return cls.parse(json.loads(text))
        except (ValueError, RecursionError):  # InvalidSpec too
            raise InvalidSpec(f"{text[:80]!r}... describes no etcd") from None

    def describe(self) -> str:
        return ",".join(self.endpoints)


def describes_etcd(where: str) -> bool:
    """Whether a pod's ``etcdlock.io/cluster`` describes an etcd the user runs (not an EtcdCluster's name)."""
    return where.startswith("{")


def _endpoint(url: Any) -> Endpoint:
    """One client URL, with its scheme and port spelt out (a default would be a guess here)."""
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise InvalidSpec(f"spec.etcd.endpoints: {str(url)[:80]!r} must start with http:// or https://")
    if len(url) > MAX_URL:
        raise InvalidSpec(f"spec.etcd.endpoints: {url[:80]!r}... is longer than {MAX_URL} characters")
    try:
        endpoint = Endpoint.parse(url)
        explicit_port = urlsplit(url).port is not None
    except (ConfigError, ValueError) as exc:
        raise InvalidSpec(f"spec.etcd.endpoints: {exc}") from None
    if not explicit_port:
        raise InvalidSpec(f"spec.etcd.endpoints: {url!r} must name its port (such as :2379)")
    return endpoint


@dataclass(frozen=True)
class SecretCredentials:
    """What a lock's Secret gives: PEM files (a subset of ``ca.crt``, ``tls.crt``, ``tls.key``), an etcd
    user; ``digest`` tells one content from another (a rotated Secret gets a connection of its own). Neither
    the key nor the password shows in its repr."""

    pems: Mapping[str, bytes] = field(default_factory=dict, repr=False)
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    digest: str = ""

    @classmethod
    def of(cls, etcd: OutsideEtcd, secret: Mapping[str, Any]) -> SecretCredentials:
        """The credentials of ``secret`` (the Secret ``etcd.secret`` as the API returns it);
        :class:`SecretInvalid` says what is wrong with it."""
        name = etcd.secret
        data = _decoded(name, secret)
        pems = {key: data[key] for key in (CA, CERT, KEY) if data.get(key)}
        if (CERT in pems) != (KEY in pems):
            raise SecretInvalid(f"Secret {name} holds one of {CERT} and {KEY}: give both, or neither")
        if pems and not etcd.tls:
            raise SecretInvalid(
                f"Secret {name} holds TLS files ({', '.join(sorted(pems))}) but spec.etcd.endpoints are "
                "http://: use https:// endpoints, or a Secret without them"
            )
        user, password = data.get(USERNAME), data.get(PASSWORD)
        if (user is None) != (password is None):
            raise SecretInvalid(
                f"Secret {name} holds one of {USERNAME} and {PASSWORD}: give both, or neither"
            )
        if not pems and user is None:
            raise SecretInvalid(
                f"Secret {name} holds none of {CA}, {CERT}/{KEY}, {USERNAME}/{PASSWORD}: nothing to reach "
                "etcd with"
            )
        used = {key: value for key, value in data.items() if key in (CA, CERT, KEY, USERNAME, PASSWORD)}
        digest = hashlib.sha256(json.dumps({k: v.hex() for k, v in sorted(used.items())}).encode())
        return cls(pems, _text(name, USERNAME, user), _text(name, PASSWORD, password), digest.hexdigest())

    def config(self, etcd: OutsideEtcd, files: TlsFiles | None) -> EtcdConfig:
        """The client config of ``etcd`` with these credentials (``files``: :attr:`pems` written out);
        :class:`SecretInvalid` if the files are not a CA, certificate and key a client can use."""
        try:
            config = EtcdConfig.parse(
                etcd.endpoints,
                ca_file=files.ca_file if files else None,
                cert_file=files.cert_file if files else None,
                key_file=files.key_file if files else None,
                server_name=etcd.server_name,
            )
        except ConfigError as exc:
            raise SecretInvalid(f"Secret {etcd.secret}: {exc}") from None
        if self.username is None:
            return config
        return EtcdConfig(
            config.endpoints,
            self.username,
            self.password,
            config.ca_file,
            config.cert_file,
            config.key_file,
            config.request_timeout,
            config.server_name,
        )


def _decoded(name: str | None, secret: Mapping[str, Any]) -> dict[str, bytes]:
    data = secret.get("data") or {}
    try:
        return {str(key): base64.b64decode(str(value), validate=True) for key, value in data.items() if value}
    except ValueError:
        raise SecretInvalid(f"Secret {name} holds a value that is not base64") from None


def _text(name: str | None, key: str, value: bytes | None) -> str | None:
    if value is None:
        return None
    try:
        text = value.decode()
    except UnicodeDecodeError:
        raise SecretInvalid(f"Secret {name}: {key} is not UTF-8 text") from None
    if not text or text != text.strip():
        raise SecretInvalid(f"Secret {name}: {key} is empty or ends in white space (a stray newline?)")
    return text
