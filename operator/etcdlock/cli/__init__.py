"""The ``etcdlock`` command line."""

import os
import sys
from collections.abc import Sequence
from typing import NoReturn

# gRPC's C core logs on its own (a failed TLS handshake, TLS files it cannot use), stderr lines beside the
# CLI's one-line message. It reads GRPC_VERBOSITY once, when grpc is first imported, which happens below
# (``etcdlock`` and ``python -m etcdlock`` both come through here first). An unset or empty value would
# mean gRPC's default, which logs; NONE logs nothing. GRPC_VERBOSITY=INFO brings the lines back to debug.
if not os.environ.get("GRPC_VERBOSITY"):
    os.environ["GRPC_VERBOSITY"] = "NONE"

INTERRUPTED = "etcdlock: interrupted\n"
EXIT_INTERRUPTED = 1  # as a Ctrl-C once the command runs (EXIT_ERROR)


def main() -> NoReturn:
    """The ``etcdlock`` command. Loading it (gRPC, the engine) takes a moment, longer on a busy machine: a
    Ctrl-C meanwhile ends it with the same one line as a Ctrl-C later, not with a traceback."""
    try:
        code = run(sys.argv[1:])
    except KeyboardInterrupt:
        sys.stderr.write(INTERRUPTED)
        code = EXIT_INTERRUPTED
    sys.exit(code)


def run(argv: Sequence[str]) -> int:
    """Run the command line and return the exit code (no SystemExit, no traceback)."""
    from etcdlock.cli.main import run as run_command  # loaded here, under main's Ctrl-C guard

    return run_command(argv)


__all__ = ["main", "run"]
