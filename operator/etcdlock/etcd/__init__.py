"""The lock engine: etcd sessions, waiters, mutexes, semaphores and elections. No Kubernetes here.

Typical use::

    config = EtcdConfig.parse("http://127.0.0.1:2379")
    async with EtcdClient(config) as client, Session(client, ttl=10) as session:
        async with Mutex(session, "jobs/nightly", timeout=30) as lock:
            do_work(fencing_token=lock.token)
"""

from etcdlock.etcd.client import EtcdClient
from etcdlock.etcd.config import EtcdConfig
from etcdlock.etcd.election import Election, observe
from etcdlock.etcd.errors import (
    AlreadyAcquiring,
    Compacted,
    ConfigError,
    EtcdDenied,
    EtcdError,
    EtcdLockError,
    EtcdRefused,
    EtcdUnavailable,
    EtcdUnreachable,
    Fenced,
    LearnerNotReady,
    LeaseNotFound,
    LockLost,
    LockTimeout,
    MemberNotFound,
    NoLeader,
    NoSpace,
    NotEnoughStarted,
    NotForLearners,
    NotHeld,
    NotLeader,
    SessionLost,
    UnhealthyCluster,
)
from etcdlock.etcd.fence import Fence
from etcdlock.etcd.keys import Contender, HolderInfo, read_contenders
from etcdlock.etcd.position import QueuePosition
from etcdlock.etcd.semaphore import Mutex, Semaphore
from etcdlock.etcd.session import Session
from etcdlock.etcd.waiter import Waiter

__all__ = [
    "AlreadyAcquiring",
    "Compacted",
    "ConfigError",
    "Contender",
    "Election",
    "EtcdClient",
    "EtcdConfig",
    "EtcdDenied",
    "EtcdError",
    "EtcdLockError",
    "EtcdRefused",
    "EtcdUnavailable",
    "EtcdUnreachable",
    "Fence",
    "Fenced",
    "HolderInfo",
    "LeaseNotFound",
    "LearnerNotReady",
    "LockLost",
    "LockTimeout",
    "MemberNotFound",
    "Mutex",
    "NoLeader",
    "NotForLearners",
    "NoSpace",
    "NotEnoughStarted",
    "NotHeld",
    "NotLeader",
    "QueuePosition",
    "Semaphore",
    "Session",
    "SessionLost",
    "UnhealthyCluster",
    "Waiter",
    "observe",
    "read_contenders",
]
