"""``etcdlock elect NAME [PROPOSAL] [--listen]``: campaign and hold leadership, or observe, like etcdctl."""

from __future__ import annotations

import argparse
from typing import Any

from etcdlock.cli.common import Signals, first_or_interrupted, lock_name, ttl_seconds, utf8_text
from etcdlock.etcd import (
    Election,
    EtcdClient,
    EtcdConfig,
    EtcdLockError,
    LockLost,
    Session,
    observe,
    read_contenders,
)

ELECTION_TTL = 60


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "elect",
        help="campaign for leadership (or --listen to observe the leader)",
        description="Campaign with PROPOSAL and print the leader key and value once elected; hold until "
        "SIGINT/SIGTERM, then resign. With --listen, print the leader key and value at every change.",
        epilog="Exit status: 0 resigned or stopped listening; 1 error (one line on stderr).",
    )
    parser.add_argument(
        "name", metavar="NAME", type=lock_name, help="election name (the same NAME as `etcdctl elect NAME`)"
    )
    parser.add_argument(
        "proposal",
        metavar="PROPOSAL",
        nargs="?",
        type=utf8_text,
        help="the value this candidate campaigns with (required unless --listen)",
    )
    parser.add_argument("-l", "--listen", action="store_true", help="observe leadership changes")
    parser.add_argument(
        "--ttl", type=ttl_seconds, default=ELECTION_TTL, help="session TTL in seconds (60, as etcdctl)"
    )
    parser.set_defaults(handler=run_elect)


async def run_elect(args: argparse.Namespace, config: EtcdConfig) -> int:
    if args.listen == (args.proposal is not None):
        raise EtcdLockError("elect takes a PROPOSAL to campaign, or --listen to observe (not both)")
    signals = Signals()
    try:
        async with EtcdClient(config) as client:
            if args.listen:
                # The observer rides out later outages, but an etcd that cannot be reached at all is an error.
                await read_contenders(client, args.name)
                await first_or_interrupted(_print_leaders(client, args.name), signals.received.wait())
                return 0
            async with Session(client, ttl=args.ttl) as session:
                election = Election(session, args.name)
                campaigned = await first_or_interrupted(
                    election.campaign(args.proposal), signals.received.wait()
                )
                if campaigned is None:
                    raise EtcdLockError(f"interrupted while campaigning for {args.name}")
                print(election.key, flush=True)
                print(args.proposal, flush=True)
                reason = await first_or_interrupted(election.wait_lost(), signals.received.wait())
                if reason is not None:
                    raise LockLost(f"leadership of {args.name} lost: {reason}")
                await election.resign()
                return 0
    finally:
        signals.close()


async def _print_leaders(client: EtcdClient, name: str) -> None:
    async for leader in observe(client, name):
        print(leader.key, flush=True)
        print(leader.value.decode(errors="replace"), flush=True)
