"""The pod flow: a pod annotated ``etcdlock.io/lock: NAME`` runs only while it holds that lock.

1. The webhook (:mod:`etcdlock.operator.webhook`, not part of this package) creates the pod with the
   ``etcdlock.io/lock`` scheduling gate, so the scheduler leaves it alone.
2. Each watch event of a pod goes to :meth:`PodHolds.observe` (:mod:`.holds`), which asks
   :func:`~.decisions.decide` (:mod:`.decisions`: pure, its rules in a table) what to do and does it.
3. A pod that asks for a lock gets a :class:`~.hold.PodHold` (:mod:`.hold`): it waits for the
   DistributedLock to be usable, is granted a lease of its own (named on the pod; one an earlier leader
   named is adopted, keeping the pod's place) and joins the lock's etcd queue under it when its turn in
   the lock's :class:`~.line.Line` comes (pods join in the order they were created), every etcd write
   fenced on this replica's leadership.
4. Once its key holds, the hold writes ``Held`` and removes the gate in one patch that is conditional on
   the pod's resourceVersion (:meth:`PodApi.ungate`, :mod:`.api`): the pod runs.
5. The pod finishing, being deleted or leaving the lock gives the lock back (the key deleted, fenced, and
   the lease revoked). A replica that stops leading revokes nothing: the next leader adopts the leases.

What the holds share (stores, pod API, lock rules, where Events go) is one :class:`PodContext`
(:mod:`.context`). Nothing here imports kopf: the kopf layer builds the context and feeds the events.
"""

from etcdlock.operator.pods.api import PodApi, annotations_of, parse_lease
from etcdlock.operator.pods.context import PodContext
from etcdlock.operator.pods.holds import PodHolds

__all__ = ["PodApi", "PodContext", "PodHolds", "annotations_of", "parse_lease"]
