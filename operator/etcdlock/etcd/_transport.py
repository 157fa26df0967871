"""The transport to one etcd member: its gRPC channel, the protocol stubs on it, and its watch stream.

The client picks the member a request goes to; everything about reaching that one member is here: channel
options, TLS credentials, and why a TLS handshake with it fails (asked of Python's ``ssl``, whose reasons
are typed). Engine-private: only the client and its streams hold members.
"""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from aetcd import rpc

from etcdlock.etcd._watch import Watcher
from etcdlock.etcd.config import Endpoint, EtcdConfig
from etcdlock.etcd.errors import ConfigError

if TYPE_CHECKING:
    from etcdlock.etcd.leases import LeaseStream

# A restarted member is reconnected within about a second instead of gRPC's default backoff of up to two
# minutes. HTTP/2 pings find dead connections under open streams (watches, lease keepalives); etcd allows one
# every 5 s, and only while a stream is open: pings of a client with no call in flight count as abuse (an
# idle client got GOAWAY "too_many_pings"), so none are sent then (its next call finds a dead connection).
_CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    # etcd answers ranges of any size (its Go client receives up to 2 GiB); gRPC's default stops at 4 MiB.
    ("grpc.max_receive_message_length", 2**31 - 1),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 0),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1_000),
]

_STUBS = {
    "KV": rpc.KVStub,
    "Lease": rpc.LeaseStub,
    "Cluster": rpc.ClusterStub,
    "Maintenance": rpc.MaintenanceStub,
    "Auth": rpc.AuthStub,
    "Watch": rpc.WatchStub,
}

# What the TLS library's reason for a failed handshake means for the user.
_TLS_REASONS = {
    "CERTIFICATE_VERIFY_FAILED": "etcd's certificate is not signed by a trusted CA (see --cacert)",
    "SSLV3_ALERT_BAD_CERTIFICATE": "etcd rejected the client certificate (give --cert and --key signed by a "
    "CA that etcd trusts)",
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "etcd requires a client certificate (--cert and --key)",
    "SSLV3_ALERT_HANDSHAKE_FAILURE": "etcd requires a client certificate (--cert and --key)",
    "WRONG_VERSION_NUMBER": "etcd does not speak TLS there (use http://)",
}
_HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


class Member:
    """The channel to one endpoint (connected on first use, then kept for the client's life) and its
    watch stream."""

    def __init__(self, endpoint: Endpoint, config: EtcdConfig) -> None:
        self.endpoint = endpoint
        self.channel = _channel(endpoint, config)
        self._stubs: dict[str, Any] = {}
        self.watcher: Watcher | None = None
        self.lease_stream: LeaseStream | None = None
        # Set once a request got through: a later failure is not a TLS refusal.
        self.answered = False

    def stub(self, service: str) -> Any:
        if service not in self._stubs:
            self._stubs[service] = _STUBS[service](self.channel)
        return self._stubs[service]

    def unreachable(self) -> bool:
        """No connection to the member now (refused, or still being attempted)."""
        state = self.channel.get_state(try_to_connect=False)
        return state in (grpc.ChannelConnectivity.TRANSIENT_FAILURE, grpc.ChannelConnectivity.CONNECTING)

    def __str__(self) -> str:
        return str(self.endpoint)


def _channel(endpoint: Endpoint, config: EtcdConfig) -> grpc.aio.Channel:
    """A channel to one endpoint: an IP address is dialled as is, a name through gRPC's resolver (which
    looks it up again on every reconnect: a member's address may change)."""
    try:
        address = ipaddress.ip_address(endpoint.host)
    except ValueError:
        target = f"{endpoint.host}:{endpoint.port}"
    else:
        target = (
            f"ipv6:[{address}]:{endpoint.port}" if address.version == 6 else f"ipv4:{address}:{endpoint.port}"
        )
    # The authority is the name the member's certificate is checked against (gRPC refuses a call whose
    # host does not match it).
    authority = config.server_name or endpoint.host
    options = [*_CHANNEL_OPTIONS, ("grpc.default_authority", f"{authority}:{endpoint.port}")]
    if not config.uses_tls:
        return grpc.aio.insecure_channel(target, options=options)
    options.append(("grpc.ssl_target_name_override", authority))
    credentials = grpc.ssl_channel_credentials(
        root_certificates=_read(config.ca_file),
        private_key=_read(config.key_file),
        certificate_chain=_read(config.cert_file),
    )
    return grpc.aio.secure_channel(target, credentials, options=options)


async def tls_refusal(endpoint: Endpoint, config: EtcdConfig) -> str | None:
    """Why a TLS handshake with ``endpoint`` fails, asked of Python's TLS library (its reasons are typed,
    gRPC's are text); None if it succeeds or the member cannot be reached at all."""
    context = ssl.create_default_context(cafile=config.ca_file)
    if config.cert_file is not None and config.key_file is not None:
        context.load_cert_chain(config.cert_file, config.key_file)
    context.set_alpn_protocols(["h2"])
    writer = None
    try:
        async with asyncio.timeout(config.request_timeout):
            reader, writer = await asyncio.open_connection(
                endpoint.host, endpoint.port, ssl=context, server_hostname=config.server_name or endpoint.host
            )
            # With TLS 1.3 a refused client certificate is only told after the handshake: say something.
            writer.write(_HTTP2_PREFACE)
            await reader.read(1)
    except ssl.SSLCertVerificationError as exc:
        return (
            f"TLS handshake failed (CERTIFICATE_VERIFY_FAILED: {exc.verify_message}): "
            + _TLS_REASONS["CERTIFICATE_VERIFY_FAILED"]
        )
    except ssl.SSLError as exc:
        reason = exc.reason or type(exc).__name__
        meaning = _TLS_REASONS.get(reason)
        return f"TLS handshake failed ({reason})" + (f": {meaning}" if meaning else "")
    except (OSError, TimeoutError):
        return None
    finally:
        if writer is not None:
            writer.close()
    return None


def _read(path: str | None) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read TLS file {path}: {exc.strerror}") from None
