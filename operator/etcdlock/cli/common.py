"""Pieces every command shares: argument types, signals as events, racing work against an interrupt."""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import signal
from collections.abc import Awaitable, Callable
from typing import Any

from etcdlock import clock
from etcdlock.aio import race
from etcdlock.etcd.config import MAX_REQUEST_TIMEOUT
from etcdlock.etcd.keys import non_utf8
from etcdlock.etcd.session import MAX_LEASE_TTL
from etcdlock.etcd.waiter import MAX_PERMITS

MAX_PORT = 65535


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return value


def _positive_int_at_most(high: int, why: str) -> Callable[[str], int]:
    """An argparse type for 1..``high``: beyond ``high`` etcd (or the OS) would fail deep inside a request."""

    def parse(text: str) -> int:
        value = positive_int(text)
        if value > high:
            raise argparse.ArgumentTypeError(f"must be at most {high} ({why}): {text!r}")
        return value

    return parse


ttl_seconds = _positive_int_at_most(MAX_LEASE_TTL, "etcd's maximum lease TTL")
permit_count = _positive_int_at_most(MAX_PERMITS, "etcd's int64 limit")
port_number = _positive_int_at_most(MAX_PORT, "the largest TCP port")


def utf8_text(text: str) -> str:
    """Text that goes into etcd (a holder, a proposal): refused if it is not UTF-8, before any request."""
    raw = non_utf8(text)
    if raw is not None:
        raise argparse.ArgumentTypeError(f"not valid UTF-8: {raw!r}")
    return text


def lock_name(text: str) -> str:
    """A lock or election NAME: any non-empty UTF-8 string (the keys live under ``NAME/``)."""
    if not text:
        raise argparse.ArgumentTypeError("must not be empty")
    return utf8_text(text)


def positive_float(text: str) -> float:
    value = non_negative_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


def request_timeout(text: str) -> float:
    """Seconds per etcd request: finite, as gRPC needs a deadline it can compute (inf fails every request)."""
    value = positive_float(text)
    if value > MAX_REQUEST_TIMEOUT:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_REQUEST_TIMEOUT:g} (one day): {text!r}")
    return value


def timeout_seconds(text: str) -> float | None:
    """A wait limit: ``inf`` (or a number too large for a float) means no limit, as if none were given."""
    value = non_negative_float(text)
    return None if math.isinf(value) else value


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value >= 0:  # also rejects nan
        raise argparse.ArgumentTypeError(f"must not be negative: {text!r}")
    return value


OUTPUT_FORMATS = ("table", "json", "yaml")


def add_output_option(parser: argparse.ArgumentParser) -> None:
    """``-o table|json|yaml``, the same for every command that prints a document."""
    parser.add_argument(
        "-o",
        "--output",
        choices=OUTPUT_FORMATS,
        default="table",
        help="output format: table (the default), json or yaml (the same document)",
    )


def print_document(doc: dict[str, Any], output: str) -> None:
    """``-o json`` or ``-o yaml``: the same document (YAML's keys in the same order as JSON's)."""
    if output == "json":
        print(json.dumps(doc, indent=2))
        return
    import yaml  # here: only -o yaml pays for importing it

    print(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True), end="")


def age_text(acquired: str | None) -> str:
    """How long ago ``acquired`` was, as kubectl shows ages (``45s``, ``12m``, ``3h``, ``5d``); ``-`` when
    the holder wrote no time (etcdctl) or one that cannot be read (any client may write the value)."""
    try:
        age = clock.age(acquired)
    except (ValueError, TypeError):  # not RFC 3339, or without a time zone
        return "-"
    if math.isinf(age):
        return "-"
    seconds = max(0, int(age))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


class Signals:
    """SIGINT/SIGTERM as an asyncio event, remembering which signal came last (to pass it on to CMD)."""

    def __init__(self) -> None:
        self.received = asyncio.Event()
        self.last: signal.Signals | None = None
        self._loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._loop.add_signal_handler(sig, self._on_signal, sig)

    def _on_signal(self, sig: signal.Signals) -> None:
        self.last = sig
        self.received.set()

    def rearm(self) -> None:
        self.received.clear()

    def close(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._loop.remove_signal_handler(sig)


async def first_or_interrupted(main: Awaitable[Any], interrupt: Awaitable[Any]) -> Any:
    """Result of ``main``, or None if ``interrupt`` finished first (``main`` is then cancelled)."""
    index, result = await race(main, interrupt)
    return None if index else result
