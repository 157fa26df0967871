"""The ``etcdlock`` command line."""

import os

# gRPC's C core logs on its own (a failed TLS handshake, TLS files it cannot use), stderr lines beside the
# CLI's one-line message. It reads GRPC_VERBOSITY once, when grpc is first imported, which happens below
# (``etcdlock`` and ``python -m etcdlock`` both come through here first). An unset or empty value would
# mean gRPC's default, which logs; NONE logs nothing. GRPC_VERBOSITY=INFO brings the lines back to debug.
if not os.environ.get("GRPC_VERBOSITY"):
    os.environ["GRPC_VERBOSITY"] = "NONE"

from etcdlock.cli.main import main, run

__all__ = ["main", "run"]
