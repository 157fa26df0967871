"""TLS benchmark: what an EtcdCluster's TLS costs a lock, and how soon etcd serves a renewed certificate.

Two local single-member etcd (``LocalEtcd(size=1)``, closed at the end), one plain and one with client and
peer-style TLS from the operator's own CA (``etcdlock.operator.etcdcluster.certificates``, the member and
client certificates an EtcdCluster gets), measured side by side in one run:

1. the uncontended acquire+release cycle of our Mutex and the two raw etcd calls it cannot avoid (as in
   ``bench/locks.py``), over plain HTTP and over TLS with a client certificate, in alternating blocks:
   what TLS itself costs (raw over TLS / raw plain), and our overhead over TLS (ours / raw, both over
   TLS), held to the same target as over plain HTTP;
2. a new connection's first request (what a failover or a reconnect pays): plain vs TLS;
3. the certificate renewal as a kubelet delivers it: new certificate and key files swapped in place while
   the member runs; the time until a new handshake is served the new certificate (etcd reads its files
   for every handshake), and whether the member's process is the one it was.

Not a test: it prints a report and exits 0 even when a target is missed. Run it with ``make bench``.
"""

from __future__ import annotations

import asyncio
import datetime
import os
import socket
import ssl
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path

from etcdlock.etcd import EtcdClient, EtcdConfig, Mutex, Session
from etcdlock.operator.etcdcluster import certificates
from etcdlock_sandbox.etcd import LocalEtcd, LocalTls
from interrupts import stop_on_sigterm
from locks import CYCLE_TARGET, mutex_cycle, raw_cycle

CYCLES = 300
BLOCK = 25
WARMUP = 30
CONNECTS = 40
RENEWALS = 10
perf = time.perf_counter


def write_certificates(folder: Path) -> tuple[LocalTls, certificates.Issued]:
    """A CA and the member and client certificates an EtcdCluster gets (the member's valid for
    127.0.0.1), as the files LocalEtcd serves; returns the files and the CA."""
    now = datetime.datetime.now(datetime.UTC)
    ca = certificates.new_ca("bench CA", now)
    member = certificates.issue(
        ca, "member", datetime.timedelta(days=1), now, names=("127.0.0.1",), server=True
    )
    client = certificates.issue(ca, "client", datetime.timedelta(days=1), now)
    files = {"ca.crt": ca.cert, "member.crt": member.cert, "member.key": member.key}
    files |= {"client.crt": client.cert, "client.key": client.key}
    for name, content in files.items():
        (folder / name).write_bytes(content)
    names = ("ca.crt", "member.crt", "member.key", "client.crt", "client.key")
    return LocalTls(*(folder / name for name in names)), ca


def config(etcd: LocalEtcd, tls: LocalTls | None) -> EtcdConfig:
    if tls is None:
        return EtcdConfig.parse(etcd.endpoints)
    return EtcdConfig.parse(
        etcd.endpoints,
        ca_file=str(tls.ca_file),
        cert_file=str(tls.client_cert_file),
        key_file=str(tls.client_key_file),
    )


async def bench_cycles(plain: EtcdConfig, secure: EtcdConfig) -> dict[str, list[float]]:
    """raw and ours, over plain and over TLS, in alternating blocks of each."""
    times: dict[str, list[float]] = {}
    async with EtcdClient(plain) as a, EtcdClient(secure) as b, Session(a) as sa, Session(b) as sb:
        runs: dict[str, Callable[[], Awaitable[float]]] = {}
        for kind, client, session in (("plain", a, sa), ("tls", b, sb)):
            mutex = Mutex(session, f"bench-tls-{kind}")
            key = f"bench-tls-raw-{kind}/{session.lease_id:x}".encode()
            runs[f"ours {kind}"] = partial(mutex_cycle, mutex)
            runs[f"raw {kind}"] = partial(raw_cycle, client, key, session.lease_id)
        for _ in range(WARMUP):
            for measure in runs.values():
                await measure()
        times = {name: [] for name in runs}
        while len(times["ours tls"]) < CYCLES:
            for name, measure in runs.items():
                times[name] += [await measure() for _ in range(BLOCK)]
    return times


async def first_request(settings: EtcdConfig) -> float:
    start = perf()
    async with EtcdClient(settings) as client:
        await client.range(b"bench-tls-first")
    return perf() - start


async def bench_connects(plain: EtcdConfig, secure: EtcdConfig) -> tuple[list[float], list[float]]:
    times: dict[str, list[float]] = {"plain": [], "tls": []}
    for _ in range(CONNECTS):
        times["plain"].append(await first_request(plain))
        times["tls"].append(await first_request(secure))
    return times["plain"], times["tls"]


def served(tls: LocalTls, port: int) -> bytes:
    """The certificate a new handshake is served now (DER)."""
    context = tls.ssl_context()
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as wrapped,
    ):
        der = wrapped.getpeercert(binary_form=True)
    assert der is not None
    return der


def der(pem: bytes) -> bytes:
    return ssl.PEM_cert_to_DER_cert(pem.decode())


def renew_in_place(tls: LocalTls, ca: certificates.Issued) -> bytes:
    """New member certificate and key, swapped in as a kubelet does (written aside, then renamed over)."""
    now = datetime.datetime.now(datetime.UTC)
    member = certificates.issue(
        ca, "member", datetime.timedelta(days=1), now, names=("127.0.0.1",), server=True
    )
    for path, content in ((tls.server_cert_file, member.cert), (tls.server_key_file, member.key)):
        aside = path.with_suffix(".new")
        aside.write_bytes(content)
        os.replace(aside, path)
    return der(member.cert)


def bench_renewals(etcd: LocalEtcd, tls: LocalTls, ca: certificates.Issued) -> tuple[list[float], bool]:
    member = etcd.members[0]
    assert member.process is not None
    pid = member.process.pid
    waits = []
    for _ in range(RENEWALS):
        wanted = renew_in_place(tls, ca)
        start = perf()
        while served(tls, member.client_port) != wanted:
            if perf() - start > 10:
                raise RuntimeError("etcd did not serve the renewed certificate within 10 s")
        waits.append(perf() - start)
    return waits, member.process is not None and member.process.pid == pid and member.process.poll() is None


def ms(values: list[float]) -> str:
    median, p90 = statistics.median(values) * 1000, statistics.quantiles(values, n=10)[8] * 1000
    return f"median {median:.2f} ms, p90 {p90:.2f} ms"


async def measure(
    plain: EtcdConfig, secure: EtcdConfig
) -> tuple[dict[str, list[float]], tuple[list[float], list[float]]]:
    """1 and 2 on one event loop (gRPC's poller stays with the loop it started on)."""
    return await bench_cycles(plain, secure), await bench_connects(plain, secure)


def main() -> int:
    stop_on_sigterm()
    with tempfile.TemporaryDirectory(prefix="bench-tls-") as folder:
        tls, ca = write_certificates(Path(folder))
        with LocalEtcd(size=1) as plain_etcd, LocalEtcd(size=1, tls=tls) as tls_etcd:
            plain, secure = config(plain_etcd, None), config(tls_etcd, tls)
            print("TLS benchmark (etcd 3.5.1 from the wheel, one member each, loopback)")
            cycles, (p, t) = asyncio.run(measure(plain, secure))
            print(f"1. uncontended cycle, {CYCLES} each, alternating blocks")
            for name, values in cycles.items():
                print(f"   {name:10} {ms(values)}")
            median = {name: statistics.median(values) for name, values in cycles.items()}
            cost = median["raw tls"] / median["raw plain"]
            overhead = median["ours tls"] / median["raw tls"]
            verdict = "meets" if overhead <= CYCLE_TARGET else "misses"
            print(f"   TLS itself: raw over TLS / raw plain {cost:.2f}")
            print(f"   our overhead over TLS: ours / raw {overhead:.2f} ({verdict} <= {CYCLE_TARGET})")
            ratio = statistics.median(t) / statistics.median(p)
            print(f"2. a new connection's first request, {CONNECTS} each")
            print(f"   plain: {ms(p)}\n   TLS:   {ms(t)}\n   ratio TLS/plain {ratio:.2f}")
            waits, same = bench_renewals(tls_etcd, tls, ca)
            print(f"3. renewal: certificate and key files swapped {RENEWALS} times under the running member")
            print(f"   until a new handshake gets the new certificate: {ms(waits)}")
            print(f"   (max {max(waits) * 1000:.2f} ms)")
            print(f"   the member's process unchanged: {'yes' if same else 'NO'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
