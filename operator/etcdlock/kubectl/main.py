"""The plugin's commands and flags (argparse), and how errors end: one line on stderr and an exit status."""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections.abc import Sequence
from typing import NoReturn

from etcdlock.kubectl import release, views
from etcdlock.kubectl.client import Kubectl, Target
from etcdlock.kubectl.errors import PluginError, UsageError
from etcdlock.operator.releaserequest import MAX_REASON, MAX_TOKEN, InvalidRequest, check_key

EPILOG = (
    "Flags go after the command (kubectl does not pass its own flags on to plugins). Exit statuses: 0 ok "
    "(released); 1 an error, or the operator refused the release; 2 the operator did not answer within "
    "--wait."
)


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad argument as one line on stderr (exit 1), as every error here is."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see {self.prog} --help)")


# A DistributedLock's name, as Kubernetes names objects (a DNS subdomain, RFC 1123).
NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
MAX_NAME = 253


def _name(text: str) -> str:
    """NAME: a lock's name, checked here so that kubectl never takes it for one of its flags."""
    if len(text) > MAX_NAME or not NAME.fullmatch(text):
        raise argparse.ArgumentTypeError(f"not the name of a DistributedLock: {text[:80]!r}")
    return text


def _seconds(text: str) -> float:
    """--wait: a finite number of seconds, 0 or more (NaN would never end the wait, nor would inf)."""
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not math.isfinite(seconds) or seconds < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds, 0 or more, not {text!r}")
    return seconds


def _token(text: str) -> int:
    """--token: a fencing token is an etcd revision, 1 to 2^63-1 (at most 19 digits)."""
    bounds = f"a fencing token is from 1 to {MAX_TOKEN}"
    if len(text) > 40:
        raise argparse.ArgumentTypeError(f"{bounds}, not {len(text)} characters")
    try:
        token = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 1 <= token <= MAX_TOKEN:
        raise argparse.ArgumentTypeError(f"{bounds}, not {text}")
    return token


def _key(text: str) -> str:
    """--key: one the operator can take (bounded, printable)."""
    try:
        check_key(text)
    except InvalidRequest as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _reason(text: str) -> str:
    """--reason: the operator keeps MAX_REASON characters; a longer one is refused here, not cut there."""
    if len(text) > MAX_REASON:
        raise argparse.ArgumentTypeError(f"at most {MAX_REASON} characters, not {len(text)}")
    return text


def _connection_flags(parser: argparse.ArgumentParser, *, all_namespaces: bool) -> None:
    parser.add_argument("--kubeconfig", help="the kubeconfig file (kubectl's default if absent)")
    parser.add_argument("--context", help="the kubeconfig context (the current one if absent)")
    parser.add_argument("-n", "--namespace", help="the namespace (the context's if absent)")
    if all_namespaces:
        parser.add_argument("-A", "--all-namespaces", action="store_true", help="locks of every namespace")


def _output_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", choices=("table", "json"), default="table", help="table or json")


def parser() -> argparse.ArgumentParser:
    top = _Parser(
        prog="kubectl etcdlock",
        description="See who holds which DistributedLock, and release a stuck holder (through the operator).",
        epilog=EPILOG,
    )
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    locks = commands.add_parser(
        "locks", aliases=["ls"], help="every lock: holders, queue length, whether the operator serves it"
    )
    _connection_flags(locks, all_namespaces=True)
    _output_flag(locks)
    queue = commands.add_parser("queue", help="one lock's holders, then its waiters in order")
    queue.add_argument("name", metavar="NAME", type=_name, help="the DistributedLock")
    _connection_flags(queue, all_namespaces=False)
    _output_flag(queue)
    free = commands.add_parser(
        "release",
        help="release one holder (or waiter) of a lock: a fenced delete of its key, done by the operator",
        epilog=EPILOG,
    )
    free.add_argument("name", metavar="NAME", type=_name, help="the DistributedLock")
    which = free.add_argument_group(
        "which contender (one is enough; the other is read from the lock's status)"
    )
    which.add_argument("--key", type=_key, help="its etcd key (KEY column of kubectl etcdlock queue)")
    which.add_argument(
        "--token", type=_token, help="its fencing token (TOKEN column of kubectl etcdlock queue)"
    )
    free.add_argument(
        "--reason",
        type=_reason,
        default="",
        help=f"why, at most {MAX_REASON} characters (goes into the Event and the lock's status)",
    )
    free.add_argument(
        "--wait",
        type=_seconds,
        default=30.0,
        metavar="S",
        help="seconds to wait for the operator's answer (30; 0 = do not wait)",
    )
    _connection_flags(free, all_namespaces=False)
    return top


def _target(args: argparse.Namespace) -> Target:
    return Target(args.kubeconfig, args.context, args.namespace, getattr(args, "all_namespaces", False))


def show_locks(args: argparse.Namespace) -> int:
    kubectl = Kubectl(_target(args))
    rows = [views.lock_row(lock) for lock in kubectl.locks()]
    if args.output == "json":
        print(json.dumps(rows, indent=2))
    elif not rows:
        print("No DistributedLocks found.", file=sys.stderr)
    else:
        sys.stdout.write(views.render(views.locks_table(rows, args.all_namespaces)))
    return 0


def show_queue(args: argparse.Namespace) -> int:
    lock = Kubectl(_target(args)).lock(args.name)
    rows = views.queue_rows(lock)
    if args.output == "json":
        print(json.dumps({**views.lock_row(lock), "queue": rows}, indent=2))
        return 0
    if rows:
        sys.stdout.write(views.render(views.queue_table(rows)))
    else:
        print(f"{args.name} has no holders and no waiters.", file=sys.stderr)
    if note := views.unlisted(lock):
        print(note, file=sys.stderr)
    return 0


def do_release(args: argparse.Namespace) -> int:
    if args.key is None and args.token is None:
        raise PluginError("name the contender to release: --key KEY or --token N (or both)")
    kubectl = Kubectl(_target(args))
    request = release.request(kubectl, args.name, args.key, args.token, args.reason)
    if args.wait == 0:
        print(f"release requested on {args.name} (request {request}); not waiting for the operator's answer")
        return 0
    print(release.answer(kubectl, args.name, request, args.wait))
    return 0


COMMANDS = {"locks": show_locks, "ls": show_locks, "queue": show_queue, "release": do_release}


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = parser().parse_args(argv)
        return COMMANDS[args.command](args)
    except PluginError as exc:
        print(f"kubectl etcdlock: {exc}", file=sys.stderr)
        return exc.exit_status
    except KeyboardInterrupt:
        return 130
