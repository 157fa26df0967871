"""The status of an EtcdCluster after a reconcile pass, from what the pass saw (a :class:`Pass`).

One small function per condition, each a plain function of the pass:

- :func:`available`: a quorum of the voting members answers (clients can read and write);
- :func:`progressing`: the pass is on its way to the wanted members or template (a membership step, an
  upgrade) or waits until it may take the next step; False once every wanted member votes (settled);
- :func:`degraded`: something needs a person: a step failed or was refused, a member does not answer,
  or nobody answers a cluster that ran;
- :func:`ready`: all of it in one, for tools that read only Ready (``kubectl wait``, kstatus, Argo CD,
  Flux): True when Available, and neither Progressing nor Degraded.

:func:`phase` sums them up in one word, :func:`members` lists each member as etcd reports it, and
:func:`status` puts it all together; :func:`invalid` is the status of a spec that cannot be served. A
condition keeps its lastTransitionTime while its status stays the same (Kubernetes' rule,
:func:`~etcdlock.operator.conditions.carried_over`). :func:`member_events` tells what happened to each
member's process between two statuses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from etcdlock import clock
from etcdlock.operator.conditions import Condition, carried_over, condition, find
from etcdlock.operator.etcdcluster.membership import ClusterView, MemberState, Step, quorum
from etcdlock.operator.etcdcluster.spec import ClusterSpec

Obj = dict[str, Any]

# The Progressing reason of each membership step under way.
STEP_REASONS = {
    "add-learner": "AddingMember",
    "promote": "PromotingMember",
    "remove": "RemovingMember",
    "move-leader": "MovingLeader",
}


@dataclass
class Pass:
    """What one reconcile pass saw and did, turned into the status at the end.

    ``view`` is None when no member answered; ``activity`` names slow work under way between membership
    changes (``Upgrading``); ``problem`` (with its ``problem_reason``) is what went wrong or was refused.
    """

    spec: ClusterSpec
    previous: Obj
    generation: int = 1
    view: ClusterView | None = None
    step: Step | None = None
    activity: str = ""
    version: str = ""
    problem: str = ""
    problem_reason: str = ""
    defragmented: str = ""
    created: str = ""
    pod_uids: dict[str, str] = field(default_factory=dict)
    restarts: dict[str, int] = field(default_factory=dict)  # of the etcd container, by pod name
    lost: set[str] = field(default_factory=set)
    claim_uids: dict[str, str] = field(default_factory=dict)  # of each member's claim, by member name
    restore: Obj | None = None  # status.restore: a restore under way or done
    quorum_lost: str = ""  # why the cluster cannot recover by itself, and what to do
    rebuilt: int = 0  # the rebuild this pass started (its number)
    waiting: str = ""  # what a cluster not created yet waits for (its certificates)
    ca_digest: str = ""  # of the CA bundle the members trust (TLS only)
    tls: Obj | None = None  # status.tls: who issues the certificates, their Secrets, the earliest expiry
    ca_changed: str = ""  # the CA digest the members trusted, when the certificates now come from another

    @property
    def settled(self) -> bool:
        """Every wanted member votes and no slow work (an upgrade) is under way."""
        return self.step is not None and self.step.action == "done" and not self.activity


def healthy_voters(view: ClusterView) -> int:
    return sum(1 for m in view.voters if m.healthy)


def has_quorum(view: ClusterView) -> bool:
    return healthy_voters(view) >= quorum(len(view.voters))


def available(run: Pass) -> Condition:
    """True while a quorum of the voting members answers (and no restore is under way)."""
    if run.quorum_lost:
        return condition("Available", "False", "QuorumLost", run.quorum_lost, run.generation)
    if (run.restore or {}).get("phase") == "Restoring":
        message = f"restoring {run.restore['snapshot']} (revision {run.restore['snapshotRevision']})"  # type: ignore[index]
        return condition("Available", "False", "Restoring", message, run.generation)
    if run.view is None:
        return condition("Available", "False", *_unanswered(run), run.generation)
    message = f"{healthy_voters(run.view)} of {len(run.view.voters)} voting members healthy"
    if has_quorum(run.view):
        return condition("Available", "True", "Quorum", message, run.generation)
    return condition("Available", "False", "NoQuorum", message, run.generation)


def progressing(run: Pass) -> Condition:
    """False once settled; else True, naming the step or the work under way (or the wait)."""
    if run.view is None:
        return condition("Progressing", "True", *_unanswered(run), run.generation)
    if run.settled:
        message = f"{len(run.view.voters)} voting members as wanted"
        return condition("Progressing", "False", "Settled", message, run.generation)
    step = run.step or Step("wait", "")
    reason = run.activity or STEP_REASONS.get(step.action, "Waiting")
    message = f"{step.action} {step.member}: {step.reason}".strip()
    return condition("Progressing", "True", reason, message, run.generation)


def degraded(run: Pass) -> Condition:
    """True for the first of: a lost quorum, a problem of the pass, a refused step, members that do not
    answer; and when nobody answers a cluster that ran (not one still being created)."""
    if run.quorum_lost:
        return condition("Degraded", "True", "QuorumLost", run.quorum_lost, run.generation)
    if run.problem and run.view is None:
        return condition("Degraded", "True", run.problem_reason, run.problem, run.generation)
    if run.view is None:
        state = "True" if _started(run.previous) else "False"
        return condition("Degraded", state, *_unanswered(run), run.generation)
    step = run.step
    if run.problem:
        return condition("Degraded", "True", run.problem_reason, run.problem, run.generation)
    if step is not None and step.action == "refuse":
        # next_step says why in words only; the refusals for want of a quorum name it.
        reason = "NoQuorum" if "quorum" in step.reason else "Refused"
        return condition("Degraded", "True", reason, step.reason, run.generation)
    names = run.spec.names(run.view)
    unhealthy = sorted(names[m.peer_url] for m in run.view.members if not m.healthy)
    if unhealthy:
        message = f"not healthy: {', '.join(unhealthy)}"
        return condition("Degraded", "True", "MembersUnhealthy", message, run.generation)
    return condition("Degraded", "False", "Healthy", "every member is healthy", run.generation)


def ready(available: Condition, progressing: Condition, degraded: Condition, generation: int) -> Condition:
    """True when the cluster serves and nothing is under way or wrong; else False, saying the first of
    why (not available, degraded, progressing), with that condition's reason and message."""
    for other, wrong in ((available, "False"), (degraded, "True"), (progressing, "True")):
        if other["status"] == wrong:
            return condition("Ready", "False", other["reason"], other["message"], generation)
    return condition("Ready", "True", "Ready", available["message"], generation)


def phase(run: Pass, troubled: bool) -> str:
    """Creating, Restoring, Running, Scaling, Upgrading or Degraded; ``troubled``: the Degraded condition
    is True."""
    if run.quorum_lost and not run.rebuilt:
        return "Degraded"
    if (run.restore or {}).get("phase") == "Restoring":
        return "Restoring"
    if run.view is None:
        return "Degraded" if _started(run.previous) else "Creating"
    if run.settled:
        return "Degraded" if troubled else "Running"
    return run.activity or ("Degraded" if troubled and not has_quorum(run.view) else "Scaling")


def members(run: Pass) -> list[Obj]:
    """Each member etcd lists, by name. When nobody answers, those it listed last, marked unhealthy: the
    record of each member's pod (data loss) and of its defragmentation must survive such a pass."""
    if run.rebuilt:
        return []  # the old cluster's members are gone; a new cluster starts from the backup
    if run.view is None:
        return [{**m, "healthy": False, "leader": False} for m in run.previous.get("members") or []]
    names = run.spec.names(run.view)
    return sorted((member(run, m, names[m.peer_url]) for m in run.view.members), key=lambda m: m["name"])


def member(run: Pass, state: MemberState, name: str) -> Obj:
    """One member's entry: what etcd says, the pod its data is in, its process restarts, and when it was
    last defragmented."""
    before: Obj = next((m for m in run.previous.get("members") or [] if m.get("name") == name), {})
    entry: Obj = {
        "name": name,
        "id": format(state.id, "x"),
        "peerURL": state.peer_url,
        "clientURL": state.client_url,
        "leader": state.leader,
        "learner": state.learner,
        "healthy": state.healthy,
    }
    # A lost member keeps the pod and claim its data was in on record until it is replaced.
    current = state.healthy and name not in run.lost
    pod = run.pod_uids.get(name) if current else before.get("podUID")
    if pod:
        entry["podUID"] = pod
    claim = run.claim_uids.get(name) if current else before.get("claimUID")
    if claim:
        entry["claimUID"] = claim
    if name in run.restarts:
        entry["restarts"] = run.restarts[name]
    since = clock.now() if run.defragmented == name else before.get("lastDefragmentation")
    if since:
        entry["lastDefragmentation"] = since
    return entry


def status(run: Pass) -> Obj:
    """The status to write after the pass."""
    healthy = healthy_voters(run.view) if run.view is not None else 0
    entries = members(run)
    troubled = degraded(run)
    extra: Obj = {}
    if run.restore is not None:
        extra["restore"] = run.restore
    tls = run.tls or run.previous.get("tls")
    if tls:
        extra["tls"] = tls
    rebuilds = run.rebuilt or int(run.previous.get("rebuilds") or 0)
    if rebuilds:
        extra["rebuilds"] = rebuilds
    serving, moving = available(run), progressing(run)
    wanted = [ready(serving, moving, troubled, run.generation), serving, moving, troubled]
    if run.quorum_lost and not run.rebuilt:
        wanted.append(condition("QuorumLost", "True", "DataLost", run.quorum_lost, run.generation))
    elif find(run.previous, "QuorumLost"):
        reason, message = ("Rebuilding", "rebuilding from a backup") if run.rebuilt else ("Recovered", "")
        wanted.append(condition("QuorumLost", "False", reason, message or "a quorum answers", run.generation))
    return {
        **extra,
        "clientURL": run.spec.client_url,
        "observedGeneration": run.generation,
        "version": run.version,
        "phase": phase(run, troubled["status"] == "True"),
        "ready": f"{healthy}/{run.spec.replicas}",
        "readyMembers": healthy,
        "selector": ",".join(f"{key}={value}" for key, value in run.spec.labels.items()),
        "leader": next((m["name"] for m in entries if m["leader"]), ""),
        "members": entries,
        "conditions": carried_over(wanted, run.previous),
    }


def failed(previous: Obj, reason: str, message: str, generation: int) -> Obj:
    """The status of a cluster that cannot be created as asked (a restore that cannot start): Failed,
    saying why; nothing exists yet."""
    wanted = [
        condition("Ready", "False", reason, message, generation),
        condition("Available", "False", reason, message, generation),
        condition("Progressing", "False", reason, message, generation),
        condition("Degraded", "True", reason, message, generation),
    ]
    return {"phase": "Failed", "observedGeneration": generation, "conditions": carried_over(wanted, previous)}


def invalid(previous: Obj, message: str, generation: int) -> Obj:
    """The status of a spec that cannot be served: Failed, saying why. Available stays as it was: the
    members that run go on serving."""
    was = find(previous, "Available").get("status") or "False"
    wanted = [
        condition("Ready", "False", "InvalidSpec", message, generation),
        condition("Available", was, "InvalidSpec", message, generation),
        condition("Progressing", "False", "InvalidSpec", message, generation),
        condition("Degraded", "True", "InvalidSpec", message, generation),
    ]
    return {"phase": "Failed", "observedGeneration": generation, "conditions": carried_over(wanted, previous)}


def member_events(previous: Obj, members: list[Obj], pod_uids: dict[str, str]) -> list[tuple[str, str, str]]:
    """(type, reason, message) of what happened to members since the last pass, in the pod each was last
    healthy in: its process exited and was restarted by the kubelet, it stopped answering, it answers
    again. A new member, or one whose pod was replaced (deleted, upgraded), is left to the other Events.
    """
    before = {m.get("name"): m for m in previous.get("members") or []}
    events = []
    for entry in members:
        name, was = entry["name"], before.get(entry["name"]) or {}
        if not was.get("podUID") or was["podUID"] != pod_uids.get(name):
            continue
        restarts = entry.get("restarts", 0)
        if restarts > was.get("restarts", 0):
            message = f"{name}: its etcd process exited and the kubelet restarted it"
            message += f" (restart count {restarts})"
            events.append(("Warning", "MemberProcessRestarted", message))
        if was.get("healthy") and not entry["healthy"]:
            events.append(("Warning", "MemberUnhealthy", f"{name} does not answer"))
        elif not was.get("healthy") and entry["healthy"]:
            events.append(("Normal", "MemberRecovered", f"{name} answers again"))
    return events


def _started(previous: Obj) -> bool:
    """Whether the cluster ran before (it had a quorum, or left the Creating phase)."""
    return find(previous, "Available").get("status") == "True" or previous.get("phase") not in (
        None,
        "Creating",
    )


def _unanswered(run: Pass) -> tuple[str, str]:
    """The reason and message of every condition while no member answers."""
    previous = run.previous
    if run.waiting:
        return "WaitingForCertificates", run.waiting
    if _started(previous):
        return "Unreachable", "no member answers with a quorum"
    return "Creating", "waiting for the members to start and elect a leader"
