"""asyncio helpers that the engine, the CLI and the operator share."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any


async def race(*awaitables: Awaitable[Any]) -> tuple[int, Any]:
    """Await whichever of ``awaitables`` finishes first: its index and its result (its exception is
    raised). The others are cancelled, and have ended, when this returns; if several finish together the
    first of them in argument order wins."""
    tasks = [asyncio.ensure_future(awaitable) for awaitable in awaitables]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        index = next(i for i, task in enumerate(tasks) if task in done)
        return index, tasks[index].result()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
