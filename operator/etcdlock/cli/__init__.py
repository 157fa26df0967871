"""The ``etcdlock`` command line."""

import os

# gRPC's C core logs failures such as a TLS handshake itself, a second stderr line beside the CLI's own.
# It reads this once, when grpc is first imported; GRPC_VERBOSITY=INFO brings those lines back.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

from etcdlock.cli.main import main, run

__all__ = ["main", "run"]
