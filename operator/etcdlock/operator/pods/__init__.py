"""The pod flow: pods held back by a scheduling gate until they hold their lock."""

from etcdlock.operator.pods.api import PodApi, parse_lease
from etcdlock.operator.pods.context import PodContext
from etcdlock.operator.pods.holds import PodHolds

__all__ = ["PodApi", "PodContext", "PodHolds", "parse_lease"]
