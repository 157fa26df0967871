"""``etcdlock operator``: run the Kubernetes operator (DistributedLock status, pods that wait for locks,
EtcdClusters).

Every flag has an environment fallback named ``ETCDLOCK_<FLAG>`` (a flag given wins); the arguments are
parsed once into a frozen :class:`~etcdlock.operator.config.OperatorConfig`.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from etcdlock.cli.common import ttl_seconds
from etcdlock.etcd import EtcdConfig, EtcdLockError
from etcdlock.operator.config import (
    DEFAULT_CERT_DIR,
    DEFAULT_ELECTION,
    DEFAULT_IMAGE,
    DEFAULT_LEADER_TTL,
    DEFAULT_POD_SWEEP_INTERVAL,
    DEFAULT_SECRET_RECHECK_INTERVAL,
    ElectionSettings,
    OperatorConfig,
    WebhookSettings,
    host_port,
)

ENV_PREFIX = "ETCDLOCK_"
TRUE = ("1", "true", "yes", "on")
FALSE = ("0", "false", "no", "off")


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(ENV_PREFIX + name) or default


def _env_list(name: str) -> list[str]:
    return [item.strip() for item in (_env(name) or "").split(",") if item.strip()]


def _on_off(value: str) -> bool:
    if value.lower() not in (*TRUE, *FALSE):
        raise argparse.ArgumentTypeError(f"must be true or false, not {value!r}")
    return value.lower() in TRUE


def _positive_seconds(value: str) -> int:
    if not value.isdigit() or int(value) == 0:
        raise argparse.ArgumentTypeError(f"must be a whole number of seconds from 1, not {value!r}")
    return int(value)


def _seconds(value: str) -> int:
    if not value.isdigit():
        raise argparse.ArgumentTypeError(f"must be a whole number of seconds, not {value!r}")
    return int(value)


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "operator",
        help="run the Kubernetes operator",
        description="Serve DistributedLock resources (mirror each lock's holders and waiters from etcd "
        "into its status), pods annotated etcdlock.io/lock (hold them back until they hold the lock) and "
        "EtcdClusters. Every flag also reads ETCDLOCK_<FLAG> from the environment (e.g. "
        "ETCDLOCK_LEADER_TTL); a flag given wins.",
    )
    parser.add_argument(
        "--etcd-endpoints",
        default=_env("ETCD_ENDPOINTS"),
        help="the operator's etcd (env ETCDLOCK_ETCD_ENDPOINTS; default: --endpoints)",
    )
    parser.add_argument(
        "-n",
        "--namespace",
        action="append",
        help="watch only this namespace (repeatable; env ETCDLOCK_NAMESPACES, comma-separated)",
    )
    parser.add_argument(
        "--kubeconfig",
        default=_env("KUBECONFIG", os.environ.get("KUBECONFIG")),
        help="kubeconfig file (env ETCDLOCK_KUBECONFIG or KUBECONFIG; default: the in-cluster service "
        "account)",
    )
    parser.add_argument(
        "--metrics",
        default=_env("METRICS", "0.0.0.0:9090"),
        help="HOST:PORT serving /metrics, /healthz and /readyz, or off (env ETCDLOCK_METRICS; default "
        "0.0.0.0:9090)",
    )
    parser.add_argument(
        "--election",
        default=_env("ELECTION", DEFAULT_ELECTION),
        help="etcd election of the replicas, or off for a single replica (env ETCDLOCK_ELECTION; default "
        f"{DEFAULT_ELECTION})",
    )
    parser.add_argument(
        "--leader-ttl",
        type=ttl_seconds,
        default=_env("LEADER_TTL", str(DEFAULT_LEADER_TTL)),
        help="seconds within which a crashed leader is replaced (session TTL; env ETCDLOCK_LEADER_TTL; "
        f"default {DEFAULT_LEADER_TTL})",
    )
    parser.add_argument(
        "--pod-sweep-interval",
        type=_seconds,
        default=_env("POD_SWEEP_INTERVAL", str(DEFAULT_POD_SWEEP_INTERVAL)),
        metavar="SECONDS",
        help="how often to look for pods annotated etcdlock.io/lock that the webhook did not label (created "
        "before it was installed, or while it was unreachable); 0: only when a replica starts leading (env "
        f"ETCDLOCK_POD_SWEEP_INTERVAL; default {DEFAULT_POD_SWEEP_INTERVAL})",
    )
    parser.add_argument(
        "--image",
        default=_env("IMAGE", DEFAULT_IMAGE),
        help="the operator's own image: EtcdCluster members restored from a backup run it as their init "
        f"container (env ETCDLOCK_IMAGE; default {DEFAULT_IMAGE})",
    )
    parser.add_argument(
        "--shared-key-prefix",
        action="append",
        metavar="PREFIX",
        help="let DistributedLocks of any namespace keep their key under PREFIX too, for locks shared with "
        "programs outside the cluster (repeatable; env ETCDLOCK_SHARED_KEY_PREFIXES, comma-separated; "
        "default: only /etcdlock/locks/<namespace>/)",
    )
    parser.add_argument(
        "--allow-outside-etcd",
        type=_on_off,
        default=_env("ALLOW_OUTSIDE_ETCD", "true"),
        metavar="true|false",
        help="let DistributedLocks name an etcd of their own in spec.etcd, reached with a Secret of their "
        "namespace (env ETCDLOCK_ALLOW_OUTSIDE_ETCD; default true)",
    )
    parser.add_argument(
        "--secret-recheck-interval",
        type=_positive_seconds,
        default=_env("SECRET_RECHECK_INTERVAL", str(DEFAULT_SECRET_RECHECK_INTERVAL)),
        metavar="SECONDS",
        help="how often the Secret of a DistributedLock's spec.etcd is read again, so that a rotated one is "
        "used and a deleted one no more (env ETCDLOCK_SECRET_RECHECK_INTERVAL; default "
        f"{DEFAULT_SECRET_RECHECK_INTERVAL})",
    )
    parser.add_argument(
        "--webhook",
        default=_env("WEBHOOK", "0.0.0.0:9443"),
        help="HOST:PORT of the admission webhooks (HTTPS), or off (env ETCDLOCK_WEBHOOK; default "
        "0.0.0.0:9443)",
    )
    parser.add_argument(
        "--webhook-cert-dir",
        default=_env("WEBHOOK_CERT_DIR", str(DEFAULT_CERT_DIR)),
        help="folder with the webhook's tls.crt, tls.key and optional ca.crt (env ETCDLOCK_WEBHOOK_CERT_DIR; "
        f"default {DEFAULT_CERT_DIR})",
    )
    parser.add_argument(
        "--webhook-configure",
        action="store_true",
        default=(_env("WEBHOOK_CONFIGURE") or "").lower() in TRUE,
        help="create the webhook configurations pointing at this process, for local development (env "
        "ETCDLOCK_WEBHOOK_CONFIGURE=true)",
    )
    parser.set_defaults(handler=run)


def operator_config(args: argparse.Namespace, etcd: EtcdConfig) -> OperatorConfig:
    """The frozen configuration of the parsed arguments (bad values: :class:`EtcdLockError`)."""
    if args.etcd_endpoints:
        etcd = replace(etcd, endpoints=EtcdConfig.parse(args.etcd_endpoints).endpoints)
    listen = host_port("--webhook", args.webhook)
    webhook = (
        WebhookSettings(*listen, Path(args.webhook_cert_dir), args.webhook_configure) if listen else None
    )
    election = ElectionSettings(name=args.election, ttl=args.leader_ttl) if args.election != "off" else None
    return OperatorConfig(
        etcd=etcd,
        namespaces=tuple(args.namespace or _env_list("NAMESPACES")),
        kubeconfig=args.kubeconfig or None,
        metrics=host_port("--metrics", args.metrics),
        webhook=webhook,
        election=election,
        shared_key_prefixes=tuple(args.shared_key_prefix or _env_list("SHARED_KEY_PREFIXES")),
        exit_if_stuck=True,
        pod_sweep_interval=args.pod_sweep_interval,
        image=args.image,
        allow_outside_etcd=args.allow_outside_etcd,
        secret_recheck_interval=args.secret_recheck_interval,
    )


async def run(args: argparse.Namespace, etcd: EtcdConfig) -> int:
    config = operator_config(args, etcd)
    try:  # kopf, kubernetes, aiohttp: etcdlock[operator], imported only by this command
        from etcdlock.operator.run import run_operator
    except ModuleNotFoundError as exc:
        raise EtcdLockError(
            f"the operator needs the operator extra (no module {exc.name}): pip install 'etcdlock[operator]'"
        ) from None
    await run_operator(config)
    return 0
