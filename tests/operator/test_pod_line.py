"""The line in which the pods of one lock join its queue: creation order, whatever order they were seen
in, one turn at a time."""

from __future__ import annotations

import asyncio

from etcdlock.operator.pods.line import Line, creation_order

BOUND = 5.0


def pod(created: str, version: str) -> dict[str, object]:
    return {"metadata": {"creationTimestamp": created, "resourceVersion": version}}


async def test_pods_seen_in_any_order_take_their_turns_in_creation_order() -> None:
    line = Line()
    seen = [
        pod("2026-12-06T00:00:01Z", "12"),
        pod("2026-12-06T00:00:01Z", "9"),
        pod("2026-12-06T00:00:00Z", "30"),
    ]
    turns: list[int] = []
    running = 0

    async def join(index: int, ticket: int) -> None:
        nonlocal running
        async with line.turn(ticket):
            running += 1
            assert running == 1, "two turns at once"
            await asyncio.sleep(0.01)
            turns.append(index)
            running -= 1

    tickets = [line.ticket(creation_order(p)) for p in seen]
    async with asyncio.timeout(BOUND):
        await asyncio.gather(*(join(i, t) for i, t in enumerate(tickets)))
    assert turns == [2, 1, 0]


async def test_a_pod_created_earlier_but_seen_later_goes_first_unless_a_turn_has_begun() -> None:
    line = Line()
    later = line.ticket(creation_order(pod("2026-12-06T00:00:05Z", "50")))
    earlier = line.ticket(creation_order(pod("2026-12-06T00:00:05Z", "40")))
    order: list[str] = []

    async def join(name: str, ticket: int) -> None:
        async with line.turn(ticket):
            order.append(name)

    async with asyncio.timeout(BOUND):
        await asyncio.gather(join("later", later), join("earlier", earlier))
    assert order == ["earlier", "later"]

    first = line.ticket(creation_order(pod("2026-12-06T00:00:09Z", "90")))
    entered, finish = asyncio.Event(), asyncio.Event()

    async def long_turn() -> None:
        async with line.turn(first):
            entered.set()
            await finish.wait()

    holding = asyncio.create_task(long_turn())
    await entered.wait()
    older = line.ticket(creation_order(pod("2026-12-06T00:00:08Z", "80")))
    waiting = asyncio.create_task(join("older", older))
    await asyncio.sleep(0.05)
    assert not waiting.done(), "a turn under way is never joined by another"
    finish.set()
    async with asyncio.timeout(BOUND):
        await asyncio.gather(holding, waiting)


async def test_a_ticket_that_leaves_lets_the_next_one_go() -> None:
    line = Line()
    gone = line.ticket(("a", 1))
    stays = line.ticket(("a", 2))
    line.leave(gone)
    async with asyncio.timeout(BOUND):
        async with line.turn(stays):
            pass
    assert creation_order({"metadata": {"resourceVersion": "opaque"}}) == ("", 0)
