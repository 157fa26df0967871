"""``python -m etcdlock`` is the ``etcdlock`` command."""

from etcdlock.cli import main

main()
