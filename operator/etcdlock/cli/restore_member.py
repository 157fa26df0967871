"""``etcdlock restore-member``: the init container of a member of a restored EtcdCluster (see
:mod:`etcdlock.operator.etcdcluster.backup.member`). The operator renders its flags; the store's settings
come from the environment (``AWS_*``, ``GOOGLE_*``, ``AZURE_*``, from the backup Secret), which
obstore reads itself."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from etcdlock.etcd import EtcdConfig, EtcdLockError

EXIT_FAILED = 1


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "restore-member",
        help="restore an EtcdCluster member's data from a backup (the operator's init container)",
        description="Download a full snapshot from a backup store, check its SHA-256 and restore it into "
        "the member's data directory with etcdutl, unless that directory holds a member already. Needs "
        "etcdlock[operator].",
    )
    parser.add_argument("--store", required=True, help="the store URL (s3://, gs://, az://, file://)")
    parser.add_argument("--store-endpoint", help="an S3-compatible store's endpoint")
    parser.add_argument("--snapshot", required=True, help="the snapshot's object under the store URL")
    parser.add_argument("--sha256", required=True, help="the snapshot object's SHA-256 (from its manifest)")
    parser.add_argument("--data-dir", required=True, type=Path, help="the member's etcd --data-dir")
    parser.add_argument("--name", required=True, help="the member's name")
    parser.add_argument("--initial-cluster", required=True, help="every member's name=peer URL")
    parser.add_argument("--initial-cluster-token", required=True, help="the restored cluster's token")
    parser.add_argument("--initial-advertise-peer-urls", required=True, help="the member's peer URL")
    parser.set_defaults(handler=run)


async def run(args: argparse.Namespace, config: EtcdConfig) -> int:
    try:  # obstore: etcdlock[operator], imported only by this command
        from etcdlock.operator.errors import InvalidSpec
        from etcdlock.operator.etcdcluster.backup.errors import BackupError
        from etcdlock.operator.etcdcluster.backup.member import MemberBootstrap, restore_member
        from etcdlock.operator.etcdcluster.backup.settings import StoreSpec
        from etcdlock.operator.etcdcluster.backup.store import BackupStore
    except ModuleNotFoundError as exc:
        raise EtcdLockError(
            f"restore-member needs the operator extra (no module {exc.name}): "
            "pip install 'etcdlock[operator]'"
        ) from None

    member = MemberBootstrap(
        args.name, args.initial_cluster, args.initial_cluster_token, args.initial_advertise_peer_urls
    )
    try:
        spec = StoreSpec.parse("--store", {"url": args.store, "endpoint": args.store_endpoint})
        store = BackupStore(spec, {})  # obstore reads the Secret's keys from the environment itself
        done = await restore_member(store, args.snapshot, args.sha256, args.data_dir, member)
    except BackupError as exc:
        print(f"etcdlock: {exc}", file=sys.stderr, flush=True)
        return EXIT_FAILED
    except InvalidSpec as exc:  # a flag the operator rendered wrong
        print(f"etcdlock: {exc}", file=sys.stderr, flush=True)
        return EXIT_FAILED
    except OSError as exc:  # the data directory cannot be written (full, read-only, missing)
        print(f"etcdlock: restore-member: {exc.strerror or exc}: {exc.filename or ''}", file=sys.stderr)
        return EXIT_FAILED
    print(f"etcdlock: {done}", flush=True)
    return 0
