"""``etcdlock`` command line: parse once, run one command, turn every error into one stderr line.

Exit codes (contract): 0 ok, 1 error, 2 not acquired within the timeout, 3 lock lost while running CMD.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from etcdlock import __version__
from etcdlock.cli import completion, elect, listing, lock, operator, restore_member, status
from etcdlock.cli.common import request_timeout
from etcdlock.etcd import EtcdConfig, EtcdLockError, LockLost, LockTimeout, SessionLost
from etcdlock.etcd.config import DEFAULT_ENDPOINT

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_TIMEOUT = 2
EXIT_LOST = 3

ENV_PREFIX = "ETCDLOCK_"
# Commands that other distributions add (the sandbox's ``etcdlock sandbox``): entry points in this group
# name a module with ``add_parser(commands)``, as the built-in commands have.
PLUGIN_GROUP = "etcdlock.commands"


class UsageError(Exception):
    """Bad command-line arguments."""


class _Parser(argparse.ArgumentParser):
    """argparse that reports errors as an exception (one line, exit 1), never exit status 2."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _env(name: str) -> str | None:
    return os.environ.get(ENV_PREFIX + name) or None


def _add_connection_options(parser: argparse.ArgumentParser, *, after_command: bool) -> None:
    """How to reach etcd. Accepted before COMMAND and after it; given after, they win."""

    def default(value: object) -> object:
        return argparse.SUPPRESS if after_command else value

    parser.add_argument(
        "--endpoints",
        default=default(_env("ENDPOINTS") or DEFAULT_ENDPOINT),
        help="comma-separated etcd URLs, tried in order (env ETCDLOCK_ENDPOINTS; default "
        + DEFAULT_ENDPOINT
        + ")",
    )
    parser.add_argument("--user", default=default(_env("USER")), help="NAME:PASSWORD (env ETCDLOCK_USER)")
    parser.add_argument(
        "--cacert", default=default(_env("CACERT_FILE")), help="TLS CA bundle (env ETCDLOCK_CACERT_FILE)"
    )
    parser.add_argument(
        "--cert", default=default(_env("CERT_FILE")), help="TLS client certificate (env ETCDLOCK_CERT_FILE)"
    )
    parser.add_argument(
        "--key", default=default(_env("KEY_FILE")), help="TLS client private key (env ETCDLOCK_KEY_FILE)"
    )
    parser.add_argument(
        "--tls-server-name",
        default=default(_env("TLS_SERVER_NAME")),
        help="the name etcd's certificate must carry, instead of each endpoint's host: for members reached "
        "by address (env ETCDLOCK_TLS_SERVER_NAME)",
    )
    parser.add_argument(
        "--request-timeout",
        type=request_timeout,
        default=default(_env("REQUEST_TIMEOUT") or "5"),
        help="seconds per etcd request (env ETCDLOCK_REQUEST_TIMEOUT; default 5, at most 86400)",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=default(_verbosity(_env("VERBOSE"))),
        help="log etcdlock's own steps (lease, key, queue, fencing token, keepalive, release); -vv also "
        "gRPC's and asyncio's (env ETCDLOCK_VERBOSE=true, or 2)",
    )


def _verbosity(text: str | None) -> int:
    """ETCDLOCK_VERBOSE: true/yes/on/1 is -v, 2 is -vv; anything else is quiet."""
    value = (text or "").lower()
    if value.isdigit():
        return int(value)
    return 1 if value in ("true", "yes", "on") else 0


BUILT_IN = (lock, status, listing, elect, operator, restore_member, completion)


def build_parser(plugins: bool = True) -> argparse.ArgumentParser:
    """The parser of every command; ``plugins``: with the commands other distributions add (finding them
    reads every installed distribution's metadata, which a built-in command need not pay for)."""
    parser = _Parser(
        prog="etcdlock",
        description="Distributed locks on etcd, compatible with `etcdctl lock` and `etcdctl elect`.",
        epilog="Exit status: 0 success; 1 error (one line on stderr); 2 not acquired within --timeout "
        "(lock); 3 the lock was lost while held (lock). `etcdlock COMMAND --help` tells each command's.",
    )
    parser.add_argument("--version", action="version", version=f"etcdlock {__version__}")
    _add_connection_options(parser, after_command=False)
    commands = parser.add_subparsers(
        dest="command", metavar="COMMAND", required=True, parser_class=_Parser, help="the command to run"
    )
    for module in BUILT_IN:
        module.add_parser(commands)
    if plugins:
        import importlib.metadata  # here: importing it costs a built-in command 14 ms for nothing

        for plugin in importlib.metadata.entry_points(group=PLUGIN_GROUP):
            plugin.load().add_parser(commands)
    for command in commands.choices.values():
        _add_connection_options(command, after_command=True)
    return parser


def _command_names(parser: argparse.ArgumentParser) -> set[str]:
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return set(subparsers.choices)


def run(argv: Sequence[str]) -> int:
    """Run the command line and return the exit code (no SystemExit, no traceback)."""
    argv = list(argv)
    tail = argv[argv.index("--") + 1 :] if "--" in argv else None
    head = argv[: len(argv) - len(tail) - 1] if tail is not None else argv
    parser = build_parser(plugins=False)
    if not _command_names(parser).intersection(head):  # another distribution's command, or none (help)
        parser = build_parser()
    try:
        args = parser.parse_args(head)
        if tail is not None:
            if args.command != "lock" or args.cmd:
                raise UsageError("a command after -- goes with `lock NAME [options] -- CMD ARGS...`")
            args.cmd = tail
        config = EtcdConfig.parse(
            args.endpoints,
            user=args.user,
            ca_file=args.cacert,
            cert_file=args.cert,
            key_file=args.key,
            request_timeout=args.request_timeout,
            server_name=args.tls_server_name,
        )
    except UsageError as exc:
        return _fail(f"{exc} (see etcdlock --help)", EXIT_ERROR)
    except EtcdLockError as exc:
        return _fail(str(exc), EXIT_ERROR)
    _configure_logging(args.command, args.verbose)
    try:
        code: int = asyncio.run(args.handler(args, config))
        return code
    except LockTimeout as exc:
        return _fail(str(exc), EXIT_TIMEOUT)
    except (LockLost, SessionLost) as exc:
        return _fail(f"lock lost: {exc}", EXIT_LOST)
    except EtcdLockError as exc:
        return _fail(str(exc), EXIT_ERROR)
    except KeyboardInterrupt:
        return _fail("interrupted", EXIT_ERROR)


def _configure_logging(command: str, verbosity: int) -> None:
    """Warnings only (the operator: INFO, a service's steps are worth a timestamped line); -v: etcdlock's
    own loggers at DEBUG, other libraries' still at their usual level (asyncio's and gRPC's debug lines say
    nothing about locks); -vv: everything at DEBUG."""
    if command == "operator":
        level, form = logging.INFO, "%(asctime)s %(levelname)s %(name)s: %(message)s"
    else:
        level, form = logging.WARNING, "etcdlock: %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=logging.DEBUG if verbosity >= 2 else level, format=form)
    if verbosity >= 1:
        logging.getLogger("etcdlock").setLevel(logging.DEBUG)


def _fail(message: str, code: int) -> int:
    print(f"etcdlock: {message}", file=sys.stderr, flush=True)
    return code
