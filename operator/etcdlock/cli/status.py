"""``etcdlock status NAME``: who holds NAME and who waits, in queue order, whoever wrote the keys."""

from __future__ import annotations

import argparse
import asyncio
import sys
from dataclasses import dataclass
from typing import Any

from etcdlock.cli.common import add_output_option, lock_name, permit_count, print_document
from etcdlock.etcd import Contender, EtcdClient, EtcdConfig, read_contenders
from etcdlock.operator.names import DEFAULT_KEY_PREFIX


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "status",
        help="show holders and waiters of a lock",
        description="Holders (key, holder, fencing token, lease, TTL left) and waiters in queue order.",
        epilog="Exit status: 0 (also for a lock nobody holds; a name with no keys at all is told on stderr); "
        "1 error (one line on stderr).",
    )
    parser.add_argument(
        "name", metavar="NAME", type=lock_name, help="lock name (the same NAME as `etcdctl lock NAME`)"
    )
    add_output_option(parser)
    parser.add_argument(
        "--permits",
        type=permit_count,
        default=None,
        help="permits of the semaphore (default: as written by its holders, else 1)",
    )
    parser.set_defaults(handler=run_status)


@dataclass(frozen=True)
class Row:
    contender: Contender
    ttl: int

    def as_dict(self) -> dict[str, Any]:
        info = self.contender.info
        return {
            "key": self.contender.key,
            "holder": info.holder,
            "host": info.host,
            "pid": info.pid,
            "acquired": info.acquired,
            "fencingToken": self.contender.fencing_token,
            "lease": format(self.contender.lease, "x"),
            "ttl": self.ttl,
        }


async def run_status(args: argparse.Namespace, config: EtcdConfig) -> int:
    async with EtcdClient(config) as client:
        revision, contenders = await read_contenders(client, args.name)
        ttls = await asyncio.gather(*(client.time_to_live(c.lease) for c in contenders))
    declared = [c.info.permits for c in contenders if c.info.permits]
    permits = args.permits or (max(declared) if declared else 1)
    if not contenders:
        await _hint_no_keys(args.name)
    rows = [Row(c, ttl) for c, ttl in zip(contenders, ttls, strict=True)]
    holders, waiters = rows[:permits], rows[permits:]
    if args.output != "table":
        doc = {
            "name": args.name,
            "permits": permits,
            "revision": revision,
            "holders": [r.as_dict() for r in holders],
            "waiters": [r.as_dict() for r in waiters],
        }
        print_document(doc, args.output)
        return 0
    print(f"{args.name}: {len(holders)}/{permits} held, {len(waiters)} waiting (revision {revision})")
    if rows:
        table = [("ROLE", "KEY", "HOLDER", "TOKEN", "LEASE", "TTL")]
        for role, group in (("holder", holders), ("waiter", waiters)):
            for row in group:
                d = row.as_dict()
                table.append(
                    (role, d["key"], d["holder"] or "-", str(d["fencingToken"]), d["lease"], f"{row.ttl}s")
                )
        widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
        for line in table:
            print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())
    return 0


async def _hint_no_keys(name: str) -> None:
    """A name nobody uses (a DistributedLock's name given instead of its key) looks exactly like a free
    lock: say so on stderr, leaving stdout and the exit status as scripts know them. If the current kube
    context has a DistributedLock of that name, its key is named (see :mod:`etcdlock.cli.kubehint`);
    the CLI works without Kubernetes, and then says where such keys live."""
    from etcdlock.cli.kubehint import find_lock  # here: only a name without keys pays for loading it

    found = await find_lock(name)
    if found is None:
        hint = (
            f"nothing is under {name}/ in etcd: if {name} is a DistributedLock's name, its key is "
            f"{DEFAULT_KEY_PREFIX}/<namespace>/{name} unless its spec.key says otherwise "
            "(see kubectl get dlock -A)"
        )
    else:
        where = f" in {found.etcd}" if found.etcd else ""
        hint = (
            f"no keys under {name}/; DistributedLock {found.namespace}/{found.name} in kube context "
            f"{found.context} keeps its lock at {found.key}{where}: etcdlock status {found.key}"
        )
    print(f"etcdlock: {hint}", file=sys.stderr, flush=True)
