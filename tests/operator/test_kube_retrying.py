"""``kube.retrying``: the one retry loop of the operator's Kubernetes calls."""

from __future__ import annotations

import pytest
from fakes import unreachable_kube

from etcdlock.operator.kube import ApiUnavailable, Conflict, retrying


async def test_a_call_given_as_a_lambda_is_awaited_and_its_answer_returned() -> None:
    async def read(value: int) -> int:
        return value

    assert await retrying("read", lambda: read(7)) == 7


async def test_an_unavailable_api_is_tried_again_until_the_call_lands() -> None:
    answers: list[BaseException | dict[str, str]] = [ApiUnavailable("down"), {"kind": "Pod"}]

    async def call() -> dict[str, str]:
        answer = answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    assert await retrying("pod", lambda: call()) == {"kind": "Pod"}
    assert answers == []


async def test_a_call_that_never_lands_fails_as_unavailable_after_its_attempts() -> None:
    calls: list[int] = []

    async def call() -> None:
        calls.append(1)
        raise Conflict("changed")

    with pytest.raises(ApiUnavailable, match="pod a/b: changed"):
        await retrying("pod a/b", lambda: call(), attempts=2)
    assert len(calls) == 2


async def test_one_attempt_means_one_try() -> None:
    calls: list[int] = []

    async def call() -> None:
        calls.append(1)
        raise ApiUnavailable("down")

    with pytest.raises(ApiUnavailable):
        await retrying("pod a/b", lambda: call(), attempts=1)
    assert len(calls) == 1


async def test_an_unreachable_api_reads_the_same_every_time() -> None:
    """Its text carries no object address, so a status or Event saying it is not written again each try."""
    kube = unreachable_kube()
    messages = []
    for _ in range(2):
        with pytest.raises(ApiUnavailable) as failed:
            await kube.custom_object("distributedlocks", "default", "nightly")
        messages.append(str(failed.value))
    assert messages[0] == messages[1] and "API unreachable" in messages[0] and " at 0x" not in messages[0]
