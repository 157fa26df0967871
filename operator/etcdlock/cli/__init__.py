"""The ``etcdlock`` command line."""

from etcdlock.cli.main import main, run

__all__ = ["main", "run"]
