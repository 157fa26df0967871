"""EtcdCluster membership, changed one safe step at a time through the etcd API.

:func:`observe` asks etcd which members there are, which are learners, which answer and who leads, and how
large each one's database is (through :class:`MemberClients`, connections kept between observations).
:func:`next_step` compares that with the wanted members (name -> peer URL) and returns the one step to take
now, or why none is safe; :func:`apply` takes it. The rules are etcd's own guidance:

- nothing is changed without a quorum of healthy voters;
- a new member joins as a learner (one at a time) and is promoted once etcd says it has caught up;
- members to be removed go in reverse name order (``NAME-4`` before ``NAME-3``): a StatefulSet shrinks
  from its highest ordinal, so the pod it deletes next is always that of a member already removed;
- a member to be removed that leads hands leadership to a healthy voter first;
- a removal that would leave fewer healthy voters than the new quorum is refused;
- a member whose data is gone is removed before it is added again (never add while one is down);
- no change is made from a member list read without a quorum (it may be stale): wait for a quorum.

Members are matched by peer URL: a member added with MemberAdd has no name until its process starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from dataclasses import dataclass, replace
from typing import Any, Literal

from etcdlock.etcd import (
    EtcdClient,
    EtcdConfig,
    EtcdError,
    EtcdUnavailable,
    LearnerNotReady,
    NotEnoughStarted,
    UnhealthyCluster,
)

STATUS_TIMEOUT = 2.0

Action = Literal["add-learner", "promote", "move-leader", "remove", "wait", "refuse", "done"]


@dataclass(frozen=True)
class MemberState:
    """One member as etcd reports it, and whether it answered a status request."""

    id: int
    name: str
    peer_url: str
    client_url: str
    learner: bool
    healthy: bool = False
    leader: bool = False
    db_size: int = 0  # bytes of its backend file (what the quota counts), from its status
    db_size_in_use: int = 0  # of those, bytes in use (the rest a defragmentation frees)
    raft_term: int = 0


@dataclass(frozen=True)
class ClusterView:
    """The members, and whether the list came from a quorum (linearizable) or one member's memory."""

    members: tuple[MemberState, ...]
    linearizable: bool = True

    @property
    def voters(self) -> list[MemberState]:
        return [m for m in self.members if not m.learner]

    @property
    def learners(self) -> list[MemberState]:
        return [m for m in self.members if m.learner]

    @property
    def leader(self) -> MemberState | None:
        return next((m for m in self.members if m.leader), None)


@dataclass(frozen=True)
class Step:
    """The one change to make now (``member``: its name; ``target``: the member it acts on)."""

    action: Action
    reason: str
    member: str = ""
    peer_url: str = ""
    target: MemberState | None = None


def quorum(voters: int) -> int:
    return voters // 2 + 1


def next_step(view: ClusterView, wanted: dict[str, str], lost: frozenset[str] = frozenset()) -> Step:
    """The next safe step towards exactly the ``wanted`` members (name -> peer URL).

    ``lost`` names members whose data is known to be gone (their volume was lost): they are removed,
    then added again as new members.
    """
    step = _step_towards(view, wanted, lost)
    if not view.linearizable and step.action not in ("refuse", "wait", "done"):
        return Step("wait", "etcd answered without a quorum; its member list may be stale")
    return step


def _step_towards(view: ClusterView, wanted: dict[str, str], lost: frozenset[str]) -> Step:
    voters = view.voters
    healthy = [m for m in voters if m.healthy]
    if len(healthy) < quorum(len(voters)):
        return Step("refuse", f"no quorum: {len(healthy)} of {len(voters)} voters healthy; no change is safe")
    by_url = {url: name for name, url in wanted.items()}
    for learner in view.learners:
        name = by_url.get(learner.peer_url, "")
        if not name or name in lost:
            return Step("remove", "the learner is not wanted", name, target=learner)
        if not learner.healthy:
            return Step("wait", f"learner {name} is not running yet", name)
        return Step("promote", "the learner runs", name, target=learner)
    unwanted = [m for m in voters if by_url.get(m.peer_url, "") in ("", *lost)]
    if unwanted:
        victim = max(unwanted, key=lambda m: _natural(m.name or m.peer_url))
        if victim.leader:
            successor = next((m for m in healthy if m is not victim and m.peer_url in by_url), None)
            if successor is None:
                return Step("refuse", "the leader is to go and no other healthy voter can lead")
            return Step(
                "move-leader", "the leader is to be removed", by_url[successor.peer_url], target=successor
            )
        remaining = len(voters) - 1
        healthy_after = len(healthy) - (1 if victim.healthy else 0)
        if healthy_after < quorum(remaining):
            return Step("refuse", f"removing {victim.name or victim.peer_url} would lose quorum")
        why = "not wanted" if victim.peer_url not in by_url else "its data is gone"
        return Step("remove", why, by_url.get(victim.peer_url, victim.name), target=victim)
    present = {m.peer_url for m in view.members}
    for name, url in wanted.items():
        if url not in present:
            return Step("add-learner", "wanted and not a member", name, url)
    return Step("done", "every wanted member is a voter")


def _natural(text: str) -> list[tuple[int, str]]:
    """A sort key that orders the numbers in names by value (``m10`` after ``m9``)."""
    return [(int(part), "") if part.isdigit() else (-1, part) for part in re.split(r"(\d+)", text)]


class MemberClients:
    """A client per member, kept from one observation to the next, so that a status request measures the
    member and not a new connection and name lookup (a lookup alone can take a resolver timeout). A member
    that does not answer gets a new client next time: its pod may have come back at another address.
    """

    def __init__(self) -> None:
        self._clients: dict[str, EtcdClient] = {}

    async def status(self, config: EtcdConfig, member: MemberState) -> Any:
        """The member's own status, or None if it does not answer (not started, down, or cut off)."""
        if not member.client_url:
            return None
        one = replace(
            config, endpoints=EtcdConfig.parse(member.client_url).endpoints, request_timeout=STATUS_TIMEOUT
        )
        client = self._clients.get(member.client_url)
        if client is None or client.config != one:
            if client is not None:
                await client.close()
            client = self._clients[member.client_url] = EtcdClient(one)
        with contextlib.suppress(EtcdError, TimeoutError):
            async with asyncio.timeout(STATUS_TIMEOUT):
                return await client.status()
        await self._clients.pop(member.client_url).close()
        return None

    async def retain(self, client_urls: set[str]) -> None:
        """Close the clients of members no longer listed."""
        for url in [url for url in self._clients if url not in client_urls]:
            await self._clients.pop(url).close()

    async def close(self) -> None:
        await self.retain(set())


async def observe(client: EtcdClient, members: MemberClients | None = None) -> ClusterView:
    """The members (a linearizable read) and, asked of each member itself, whether it answers and leads.

    ``members`` keeps the connections to the members for the next observation (else they are closed).
    """
    kept = members if members is not None else MemberClients()
    try:
        return await _observe(client, kept)
    finally:
        if members is None:
            await kept.close()


async def _observe(client: EtcdClient, members: MemberClients) -> ClusterView:
    linearizable = True
    try:
        listed = await client.members()
    except EtcdUnavailable:
        listed = await client.members(linearizable=False)  # no quorum: what the member reached knows
        linearizable = False
    states = [
        MemberState(
            id=m.ID,
            name=m.name,
            peer_url=m.peerURLs[0] if m.peerURLs else "",
            client_url=m.clientURLs[0] if m.clientURLs else "",
            learner=m.isLearner,
        )
        for m in listed
    ]
    await members.retain({m.client_url for m in states})
    statuses = await asyncio.gather(*(members.status(client.config, m) for m in states))
    leaders = {s.leader for s in statuses if s is not None}
    view = [_answered(m, s, leaders) for m, s in zip(states, statuses, strict=True)]
    return ClusterView(tuple(view), linearizable)


def _answered(member: MemberState, status: Any, leaders: set[int]) -> MemberState:
    """The member as its own status shows it (as listed, not healthy, if it did not answer)."""
    if status is None:
        return member
    return replace(
        member,
        healthy=True,
        leader=member.id in leaders,
        db_size=int(status.dbSize),
        db_size_in_use=int(status.dbSizeInUse),
        raft_term=int(status.raftTerm),
    )


# etcd declines these until later: a learner not caught up yet, or (strict reconfig check) members not all
# connected for the last five seconds, as just after any member started.
_NOT_YET = (LearnerNotReady, UnhealthyCluster, NotEnoughStarted)


async def apply(client: EtcdClient, view: ClusterView, step: Step) -> bool:
    """Take the step; False if etcd declined for now (see ``_NOT_YET``): take it again later."""
    target = step.target
    try:
        if step.action == "add-learner":
            await client.add_learner(step.peer_url)
        elif step.action == "promote" and target is not None:
            await client.promote(target.id)
        elif step.action == "remove" and target is not None:
            await client.remove_member(target.id)
        elif step.action == "move-leader" and target is not None:
            leader = view.leader
            if leader is None:
                return False
            # MoveLeader is served by the leader only.
            config = replace(client.config, endpoints=EtcdConfig.parse(leader.client_url).endpoints)
            async with EtcdClient(config) as direct:
                await direct.move_leader(target.id)
    except _NOT_YET:
        return False
    return True
