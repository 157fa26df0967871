"""SIGTERM ends a benchmark as Ctrl-C does: through every ``with`` block, so each etcd member, operator
replica and sandbox it started is stopped (by default SIGTERM would leave them running)."""

from __future__ import annotations

import signal
from types import FrameType


def stop_on_sigterm() -> None:
    signal.signal(signal.SIGTERM, _interrupt)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")
