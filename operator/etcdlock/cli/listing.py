"""``etcdlock list [PREFIX]``: every lock under a key prefix, one line each, from one range read.

A lock is found by its contender keys, ``NAME/<lease id in hex>`` attached to that lease, whoever wrote
them (etcdctl lock and elect, this CLI, the operator's pods); an election shows as a lock whose holder is
its leader. (The module is not called ``list``: ``main`` would shadow the builtin.)
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from etcdlock.cli.common import add_output_option, age_text, positive_int, print_document, utf8_text
from etcdlock.etcd import Contender, EtcdClient, EtcdConfig
from etcdlock.etcd.keys import Queues, read_queues

DEFAULT_MAX_KEYS = 10000


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "list",
        help="list every lock under a key prefix",
        description="Every lock (mutex or semaphore) whose keys lie under PREFIX, sorted by name: its "
        "holders over its permits, how many wait, and its oldest holder (HOLDER: the name it wrote, - for "
        "etcdctl's keys, which name nobody; HELD: for how long, - when unknown). Locks are found by their "
        "keys, NAME/<lease id in hex>, as etcdctl lock writes them; elections share that layout and show "
        "as locks held by their leader.",
        epilog="Exit status: 0 listed, also when no lock is found (a note on stderr); 1 error (one line "
        "on stderr).",
    )
    parser.add_argument(
        "prefix",
        metavar="PREFIX",
        nargs="?",
        default="",
        type=utf8_text,
        help="a plain etcd key prefix, e.g. /etcdlock/locks/ for every DistributedLock's key (default: "
        "every key)",
    )
    add_output_option(parser)
    parser.add_argument(
        "--max-keys",
        metavar="N",
        type=positive_int,
        default=DEFAULT_MAX_KEYS,
        help=f"read at most this many keys (default {DEFAULT_MAX_KEYS}); past them, locks are left out "
        "and a note on stderr says so",
    )
    parser.set_defaults(handler=run_list)


async def run_list(args: argparse.Namespace, config: EtcdConfig) -> int:
    async with EtcdClient(config) as client:
        found = await read_queues(client, args.prefix.encode(), args.max_keys)
    where = f"under {args.prefix} " if args.prefix else ""
    if not found.complete:
        _note(
            f"read the first {found.keys_read} of {found.keys_total} keys {where}(--max-keys): locks past "
            "them are not listed"
        )
    locks = [_lock(name, queue) for name, queue in found.queues.items()]
    if not locks:
        _note(f"no lock {where}in etcd (a lock's keys are NAME/<lease id in hex>)")
    if args.output != "table":
        print_document(_document(args.prefix, found, locks), args.output)
    elif locks:
        _print_table(locks)
    return 0


def _lock(name: str, queue: list[Contender]) -> dict[str, Any]:
    """One lock as ``-o json`` shows it; permits as the holders wrote them (as ``status`` reads them)."""
    declared = [c.info.permits for c in queue if c.info.permits]
    permits = max(declared) if declared else 1
    oldest = queue[0]
    return {
        "name": name,
        "permits": permits,
        "holderCount": min(permits, len(queue)),
        "waiterCount": max(0, len(queue) - permits),
        "oldestHolder": {
            "key": oldest.key,
            "holder": oldest.info.holder,
            "acquired": oldest.info.acquired,
            "fencingToken": oldest.fencing_token,
            "lease": format(oldest.lease, "x"),
        },
    }


def _document(prefix: str, found: Queues, locks: list[dict[str, Any]]) -> dict[str, Any]:
    return {"prefix": prefix, "revision": found.revision, "complete": found.complete, "locks": locks}


def _print_table(locks: list[dict[str, Any]]) -> None:
    table = [("NAME", "HOLDERS", "WAITING", "HOLDER", "HELD")]
    for lock in locks:
        oldest = lock["oldestHolder"]
        table.append(
            (
                lock["name"],
                f"{lock['holderCount']}/{lock['permits']}",
                str(lock["waiterCount"]),
                oldest["holder"] or "-",
                age_text(oldest["acquired"]),
            )
        )
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    for line in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())


def _note(message: str) -> None:
    print(f"etcdlock: {message}", file=sys.stderr, flush=True)
