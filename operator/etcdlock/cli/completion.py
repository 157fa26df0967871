"""``etcdlock completion SHELL``: the shell's completion script for every command and option (shtab)."""

from __future__ import annotations

import argparse
from typing import Any

from etcdlock.etcd import EtcdConfig

SHELLS = ("bash", "zsh", "tcsh")


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "completion",
        help="print the shell completion script (bash, zsh or tcsh)",
        description="Print the completion script of etcdlock for SHELL. bash: "
        'eval "$(etcdlock completion bash)" in ~/.bashrc; zsh: etcdlock completion zsh > '
        "~/.zfunc/_etcdlock (a folder on $fpath).",
        epilog="Exit status: 0; 1 on a usage error.",
    )
    parser.add_argument("shell", metavar="SHELL", choices=SHELLS, help="bash, zsh or tcsh")
    parser.set_defaults(handler=run_completion)


async def run_completion(args: argparse.Namespace, config: EtcdConfig) -> int:
    # Here, not at the top: the command line's module imports this one, and shtab reads package metadata,
    # which the other commands' start-up need not pay for.
    import shtab

    from etcdlock.cli.main import build_parser

    print(shtab.complete(build_parser(), shell=args.shell), end="")
    return 0
