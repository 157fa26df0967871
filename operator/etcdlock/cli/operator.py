"""``etcdlock operator``: run the Kubernetes operator (DistributedLock status, pods that wait for locks)."""

from __future__ import annotations

import argparse
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from etcdlock.cli.common import ttl_seconds
from etcdlock.etcd import EtcdConfig, EtcdLockError

DEFAULT_CERT_DIR = "/etc/etcdlock/webhook"
DEFAULT_ELECTION = "/etcdlock/operator/leader"
DEFAULT_TTL = 5


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "operator",
        help="run the Kubernetes operator",
        description="Serve DistributedLock resources (mirror each lock's holders and waiters from etcd "
        "into its status) and pods annotated etcdlock.io/lock (hold them back until they hold the lock).",
    )
    parser.add_argument(
        "--etcd-endpoints",
        default=os.environ.get("ETCDLOCK_ETCD_ENDPOINTS") or None,
        help="the operator's etcd (env ETCDLOCK_ETCD_ENDPOINTS; default: --endpoints)",
    )
    parser.add_argument(
        "-n", "--namespace", action="append", default=[], help="watch only this namespace (repeatable)"
    )
    parser.add_argument(
        "--kubeconfig",
        default=os.environ.get("KUBECONFIG") or None,
        help="kubeconfig file (env KUBECONFIG; default: the in-cluster service account)",
    )
    parser.add_argument(
        "--metrics",
        default="0.0.0.0:9090",
        help="HOST:PORT serving /metrics, /healthz and /readyz, or off (default 0.0.0.0:9090)",
    )
    parser.add_argument(
        "--election",
        default=DEFAULT_ELECTION,
        help=f"etcd election of the replicas, or off for a single replica (default {DEFAULT_ELECTION})",
    )
    parser.add_argument(
        "--leader-ttl",
        type=ttl_seconds,
        default=DEFAULT_TTL,
        help=f"seconds within which a crashed leader is replaced (session TTL, default {DEFAULT_TTL})",
    )
    parser.add_argument(
        "--shared-key-prefix",
        action="append",
        default=_env_list("ETCDLOCK_SHARED_KEY_PREFIXES"),
        metavar="PREFIX",
        help="let DistributedLocks of any namespace keep their key under PREFIX too, for locks shared with "
        "programs outside the cluster (repeatable; env ETCDLOCK_SHARED_KEY_PREFIXES, comma-separated; "
        "default: only /etcdlock/locks/<namespace>/)",
    )
    parser.add_argument(
        "--webhook",
        default="0.0.0.0:9443",
        help="HOST:PORT of the pod-gating admission webhook (HTTPS), or off (default 0.0.0.0:9443)",
    )
    parser.add_argument(
        "--webhook-cert-dir",
        default=str(DEFAULT_CERT_DIR),
        help=f"folder with the webhook's tls.crt, tls.key and optional ca.crt (default {DEFAULT_CERT_DIR})",
    )
    parser.add_argument(
        "--webhook-configure",
        action="store_true",
        help="create the MutatingWebhookConfiguration pointing at this process (local development)",
    )
    parser.set_defaults(handler=run)


def _env_list(name: str) -> list[str]:
    return [item for item in (os.environ.get(name) or "").split(",") if item.strip()]


def host_port(option: str, value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise EtcdLockError(f"{option} must be HOST:PORT or off, not {value!r}")
    return host or "0.0.0.0", int(port)


async def run(args: argparse.Namespace, config: EtcdConfig) -> int:
    try:  # kopf, kubernetes, aiohttp: etcdlock[operator], imported only by this command
        from etcdlock.operator.leadership import ElectionSettings
        from etcdlock.operator.run import run_operator
        from etcdlock.operator.webhook import WebhookSettings
    except ModuleNotFoundError as exc:
        raise EtcdLockError(
            f"the operator needs the operator extra (no module {exc.name}): pip install 'etcdlock[operator]'"
        ) from None

    if args.etcd_endpoints:
        endpoints = EtcdConfig.parse(args.etcd_endpoints).endpoints
        config = replace(config, endpoints=endpoints)
    metrics = None if args.metrics == "off" else host_port("--metrics", args.metrics)
    webhook = None
    if args.webhook != "off":
        host, port = host_port("--webhook", args.webhook)
        webhook = WebhookSettings(host, port, Path(args.webhook_cert_dir), args.webhook_configure)
    election = None
    if args.election != "off":
        election = ElectionSettings(name=args.election, ttl=args.leader_ttl)
    await run_operator(
        config,
        namespaces=args.namespace,
        kubeconfig=args.kubeconfig,
        metrics=metrics,
        webhook=webhook,
        election=election,
        exit_if_stuck=True,
        shared_key_prefixes=args.shared_key_prefix,
    )
    return 0
