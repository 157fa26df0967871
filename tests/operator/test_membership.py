"""EtcdCluster membership against real etcd processes on loopback: 1 -> 3 -> 1 with learners, the last
member removed first and the leader moved away before it is removed; 1 -> 3 -> 5, a lost member replaced,
then 5 -> 3; and no step without quorum. A client writes throughout and no acknowledged write is lost.

The test plays the controller: it asks :func:`next_step`, applies the step through the etcd API with
:func:`apply`, and starts an etcd process for a member that was added (as a StatefulSet pod would). Like
the controller it takes no step in a pass that finds none safe, and looks again in the next pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from etcdlock.etcd import EtcdClient, EtcdConfig, EtcdUnavailable
from etcdlock.etcd.requests import put_op
from etcdlock.operator.etcdcluster.membership import (
    ClusterView,
    MemberClients,
    MemberState,
    Step,
    apply,
    next_step,
    observe,
)
from etcdlock_sandbox.etcd import LocalEtcd

BOUND = 60.0


class Writer:
    """Writes numbered keys as fast as etcd takes them; remembers every acknowledged one."""

    def __init__(self, cluster: LocalEtcd) -> None:
        self._cluster = cluster
        self.acknowledged: list[int] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        n = 0
        while True:
            config = EtcdConfig.parse(self._cluster.endpoint_list, request_timeout=2)
            async with EtcdClient(config) as client:
                while True:
                    try:
                        await client.txn([], [put_op(f"/written/{n:06d}".encode(), b"x")])
                    except EtcdUnavailable:
                        await asyncio.sleep(0.05)
                        break  # reconnect with the members there are now
                    self.acknowledged.append(n)
                    n += 1
                    await asyncio.sleep(0.01)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    async def lost(self) -> list[int]:
        """Acknowledged writes that etcd does not have."""
        async with client_of(self._cluster) as client:
            stored = await client.range(b"/written/", b"/written0", keys_only=True)
        found = {int(kv.key.decode().rsplit("/", 1)[1]) for kv in stored.kvs}
        return [n for n in self.acknowledged if n not in found]


@contextlib.asynccontextmanager
async def client_of(cluster: LocalEtcd) -> AsyncIterator[EtcdClient]:
    async with EtcdClient(EtcdConfig.parse(cluster.endpoint_list, request_timeout=3)) as client:
        yield client


async def reconcile(cluster: LocalEtcd, wanted: list[str], lost: frozenset[str] = frozenset()) -> list[Step]:
    """Take steps until the wanted members are the voters (``lost``: members whose data is gone);
    returns the steps taken (bounded).

    As the controller does, a pass whose step is to wait, or refused, changes nothing and the next pass
    looks again: on a loaded machine a member can stall past its status deadline, and with two voters
    that stall costs the cluster its leader too. A refusal must name a voter that did not answer; one
    with every voter answering is a wrong rule and fails at once.
    """
    taken: list[Step] = []
    last = Step("wait", "no pass yet")
    try:
        async with asyncio.timeout(BOUND):
            while True:
                last = await one_pass(cluster, wanted, lost, taken)
                if last.action == "done":
                    return taken
    except TimeoutError:
        raise AssertionError(
            f"{wanted} not reached in {BOUND}s; last pass: {last.action}: {last.reason}"
        ) from None


async def one_pass(cluster: LocalEtcd, wanted: list[str], lost: frozenset[str], taken: list[Step]) -> Step:
    """Observe, take the next step if there is one (appended to ``taken``) and start or stop the member
    process it calls for, as a StatefulSet would; returns the step."""
    peer_urls = {m.name: m.peer_url for m in cluster.members if m.name in wanted}
    async with client_of(cluster) as client:
        view = await observe(client)
        step = next_step(view, peer_urls, lost)
        if step.action == "refuse":
            assert [m for m in view.voters if not m.healthy], f"refused with every voter answering: {step}"
        applied = step.action not in ("done", "wait", "refuse") and await apply(client, view, step)
    if not applied:
        if step.action != "done":
            await asyncio.sleep(0.2)  # the next pass (etcd said "not yet", or no step is safe now)
        return step
    taken.append(step)
    if step.action == "add-learner":
        member = next(m for m in cluster.members if m.name == step.member)
        names = {m.peer_url: m.name for m in cluster.members}
        known = [f"{names[m.peer_url]}={m.peer_url}" for m in view.members]
        initial = ",".join([*known, f"{member.name}={member.peer_url}"])
        await asyncio.to_thread(cluster.start_member, member, join=initial)
    if step.action == "remove" and step.target is not None:
        gone = next(m for m in cluster.members if m.peer_url == step.target.peer_url)
        await asyncio.to_thread(cluster.drop_member, gone)
    return step


def actions(steps: list[Step]) -> list[str]:
    return [f"{s.action} {s.member}" for s in steps]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalEtcd]:
    with LocalEtcd(size=1, workdir=tmp_path) as running:
        yield running


async def voters(cluster: LocalEtcd) -> ClusterView:
    async with client_of(cluster) as client:
        return await observe(client)


async def settled(cluster: LocalEtcd) -> ClusterView:
    """The members once every one answers and one leads (bounded): a single observation can catch a
    member stalled past its status deadline on a loaded machine, or an election it caused."""
    async with asyncio.timeout(BOUND):
        while True:
            view = await voters(cluster)
            if all(m.healthy for m in view.members) and view.leader is not None:
                return view
            await asyncio.sleep(0.2)


async def test_scale_out_with_learners_then_in_moving_the_leader_off_first(cluster: LocalEtcd) -> None:
    writer = Writer(cluster)
    writer.start()
    try:
        for name in ("m1", "m2"):
            cluster.add_member(name)
        grown = await reconcile(cluster, ["m0", "m1", "m2"])
        assert actions(grown) == ["add-learner m1", "promote m1", "add-learner m2", "promote m2"]
        view = await settled(cluster)
        assert len(view.voters) == 3 and not view.learners and all(m.healthy for m in view.members)

        # Hand leadership to m2, which is then scaled away: it must give leadership up before it goes.
        async with client_of(cluster) as client:
            m2 = next(m for m in view.members if m.name == "m2")
            assert await apply(client, view, Step("move-leader", "test", "m2", target=m2))
        leader = (await settled(cluster)).leader
        assert leader is not None and leader.name == "m2"
        shrunk = await reconcile(cluster, ["m0"])
        # The last name goes first (a StatefulSet shrinks from the top); as it leads, it hands leadership
        # to a member that stays before it is removed.
        assert actions(shrunk) == ["move-leader m0", "remove m2", "remove m1"]
        view = await settled(cluster)
        assert [m.name for m in view.voters] == ["m0"] and view.leader is not None
    finally:
        await writer.stop()
    assert len(writer.acknowledged) > 50, "the writer kept writing"
    assert await writer.lost() == [], "an acknowledged write was lost"


async def test_one_to_five_a_lost_member_replaced_then_three(cluster: LocalEtcd) -> None:
    """1 -> 3 -> 5, a member's data lost and the member replaced, then 5 -> 3, with a client writing."""
    writer = Writer(cluster)
    writer.start()
    try:
        for name in ("m1", "m2", "m3", "m4"):
            cluster.add_member(name)
        five = ["m0", "m1", "m2", "m3", "m4"]
        grown = await reconcile(cluster, five)
        assert [s.action for s in grown] == ["add-learner", "promote"] * 4

        lost = next(m for m in cluster.members if m.name == "m1")
        cluster.kill(lost)
        shutil.rmtree(lost.data_dir)  # its data is gone: it must not come back under its old ID
        assert actions(await reconcile(cluster, five, frozenset({"m1"}))) == ["remove m1"]
        cluster.add_member("m1")  # a new member under the same name
        replaced = await reconcile(cluster, five)
        assert actions(replaced) == ["add-learner m1", "promote m1"]

        shrunk = await reconcile(cluster, ["m0", "m1", "m2"])
        assert [s.member for s in shrunk if s.action == "remove"] == ["m4", "m3"]
        view = await settled(cluster)
        assert sorted(m.name for m in view.voters) == ["m0", "m1", "m2"] and all(
            m.healthy for m in view.members
        )
    finally:
        await writer.stop()
    assert len(writer.acknowledged) > 50, "the writer kept writing"
    assert await writer.lost() == [], "an acknowledged write was lost"


async def test_no_step_is_taken_without_quorum(tmp_path: Path) -> None:
    with LocalEtcd(size=3, workdir=tmp_path) as cluster:
        wanted = {m.name: m.peer_url for m in cluster.members}
        async with client_of(cluster) as client:
            assert next_step(await observe(client), wanted).action == "done"
        survivor = cluster.members[0]
        for member in cluster.members[1:]:
            cluster.kill(member)
        config = EtcdConfig.parse(survivor.client_url, request_timeout=3)
        async with EtcdClient(config) as client:
            view = await observe(client)
        assert [m.healthy for m in view.members].count(True) == 1
        step = next_step(view, {**wanted, "m3": "http://127.0.0.1:1"})
        assert step.action == "refuse" and "no quorum" in step.reason


async def test_kept_member_connections_see_a_member_stop_answering_and_come_back(tmp_path: Path) -> None:
    """Connections to the members outlive an observation; a member killed or paused reads unhealthy at
    once, and healthy again on the first observation after it is back."""
    with LocalEtcd(size=3, workdir=tmp_path) as cluster:
        config = EtcdConfig.parse(cluster.members[0].client_url, request_timeout=3)
        members = MemberClients()
        try:
            async with EtcdClient(config) as client:

                async def health() -> dict[str, bool]:
                    return {m.name: m.healthy for m in (await observe(client, members)).members}

                assert await health() == {"m0": True, "m1": True, "m2": True}
                cluster.kill(cluster.members[2])
                assert await health() == {"m0": True, "m1": True, "m2": False}
                await asyncio.to_thread(cluster.start_member, cluster.members[2])
                assert await health() == {"m0": True, "m1": True, "m2": True}
                cluster.pause(cluster.members[1])
                try:
                    assert await health() == {"m0": True, "m1": False, "m2": True}
                finally:
                    cluster.resume(cluster.members[1])
                assert await health() == {"m0": True, "m1": True, "m2": True}
        finally:
            await members.close()


def member(n: int, *, learner: bool = False, healthy: bool = True, leader: bool = False) -> MemberState:
    return MemberState(n + 1, f"m{n}", f"http://p{n}", f"http://c{n}", learner, healthy, leader)


WANTED3 = {f"m{n}": f"http://p{n}" for n in range(3)}


def test_a_member_whose_data_is_gone_is_removed_before_it_is_added_again() -> None:
    view = ClusterView((member(0, leader=True), member(1), member(2, healthy=False)))
    step = next_step(view, WANTED3, lost=frozenset({"m2"}))
    assert (step.action, step.member) == ("remove", "m2")
    after = ClusterView((member(0, leader=True), member(1)))
    assert (next_step(after, WANTED3).action, next_step(after, WANTED3).member) == ("add-learner", "m2")


def test_no_change_is_made_from_a_member_list_read_without_quorum() -> None:
    """A list one member answered from its own memory may be stale: wait, but still say what is wrong."""
    stale = ClusterView((member(0, leader=True), member(1)), linearizable=False)
    assert next_step(stale, WANTED3).action == "wait"
    assert next_step(stale, {"m0": "http://p0", "m1": "http://p1"}).action == "done"
    no_quorum = ClusterView(
        (member(0), member(1, healthy=False), member(2, healthy=False)), linearizable=False
    )
    assert next_step(no_quorum, WANTED3).action == "refuse"


def test_one_learner_at_a_time_and_an_unwanted_learner_goes() -> None:
    catching_up = ClusterView((member(0, leader=True), member(1, learner=True, healthy=False)))
    assert next_step(catching_up, WANTED3).action == "wait"
    stray = ClusterView((member(0, leader=True), member(7, learner=True)))
    assert (next_step(stray, {"m0": "http://p0"}).action) == "remove"


def test_a_removal_that_would_lose_quorum_is_refused() -> None:
    # Five voters, two down: removing a healthy one would leave 2 healthy of 4 (quorum 3).
    view = ClusterView(
        (member(0, leader=True), member(1), member(2), member(3, healthy=False), member(4, healthy=False))
    )
    wanted = {f"m{n}": f"http://p{n}" for n in (0, 1, 3, 4)}
    step = next_step(view, wanted)
    assert step.action == "refuse" and "would lose quorum" in step.reason


def test_scale_in_removes_the_last_name_first_and_moves_leadership_off_it() -> None:
    """A StatefulSet deletes its highest ordinal first: that member must be the one removed (m10 after m9)."""
    view = ClusterView((member(0), member(8), member(9), member(10, leader=True)))
    wanted = {"m0": "http://p0"}
    step = next_step(view, wanted)
    assert (step.action, step.member) == ("move-leader", "m0")
    moved = ClusterView((member(0, leader=True), member(8), member(9), member(10)))
    step = next_step(moved, wanted)
    assert (step.action, step.target) == ("remove", member(10))
