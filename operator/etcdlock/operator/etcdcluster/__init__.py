"""EtcdCluster: an etcd cluster run by the operator as a StatefulSet, its membership changed through etcd.

What flows, once per reconcile pass (:class:`Clusters`, driven by a kopf timer, runnable without kopf):

1. :mod:`.spec`: the object's spec, checked, becomes a :class:`ClusterSpec` (size, version and upgrade
   path, maintenance, the members' names and URLs); a spec that cannot be served becomes a Failed status.
2. :mod:`.rendering`: the spec becomes the child objects (Services, StatefulSet, PodDisruptionBudget),
   created when missing; :mod:`.objects` makes the Kubernetes calls.
3. :mod:`.membership`: etcd itself is asked which members there are and which answer
   (:func:`~.membership.observe`); the pure :func:`~.membership.next_step` compares that with the
   members the spec wants and names the one safe step (or why none is), which the pass takes through
   the etcd API. The StatefulSet follows the membership; upgrades and defragmentation come one member at
   a time once nothing else is to do (:mod:`.controller`).
4. :mod:`.status`: what the pass saw becomes the status, one small function per condition (Available,
   Progressing, Degraded).
"""

from etcdlock.operator.etcdcluster.controller import RECONCILE_PERIOD, Clusters
from etcdlock.operator.etcdcluster.rendering import (
    TEMPLATE_HASH,
    children,
    disruption_budget,
    services,
    statefulset,
)
from etcdlock.operator.etcdcluster.spec import SIZES, ClusterSpec, seconds, upgrade_allowed

__all__ = [
    "RECONCILE_PERIOD",
    "SIZES",
    "TEMPLATE_HASH",
    "ClusterSpec",
    "Clusters",
    "children",
    "disruption_budget",
    "seconds",
    "services",
    "statefulset",
    "upgrade_allowed",
]
