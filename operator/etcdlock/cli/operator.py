"""``etcdlock operator``: run the Kubernetes operator (DistributedLock status today)."""

from __future__ import annotations

import argparse
import os
from dataclasses import replace
from typing import Any

from etcdlock.etcd import EtcdConfig, EtcdLockError


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "operator",
        help="run the Kubernetes operator",
        description="Serve DistributedLock resources: mirror each lock's holders and waiters from etcd "
        "into its status.",
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
        "--liveness", default=None, help="liveness endpoint, e.g. http://0.0.0.0:8080/healthz"
    )
    parser.set_defaults(handler=run)


async def run(args: argparse.Namespace, config: EtcdConfig) -> int:
    from etcdlock.operator.run import run_operator  # kopf is imported only by this command

    if args.etcd_endpoints:
        endpoints = EtcdConfig.parse(args.etcd_endpoints).endpoints
        config = replace(config, endpoints=endpoints)
    metrics = None
    if args.metrics != "off":
        host, sep, port = args.metrics.rpartition(":")
        if not sep or not port.isdigit():
            raise EtcdLockError(f"--metrics must be HOST:PORT or off, not {args.metrics!r}")
        metrics = (host or "0.0.0.0", int(port))
    await run_operator(
        config, namespaces=args.namespace, liveness=args.liveness, kubeconfig=args.kubeconfig, metrics=metrics
    )
    return 0
