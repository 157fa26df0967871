"""The EtcdCluster controller, as plain modules that run without kopf."""

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
