"""The lock engine: etcd sessions, mutexes, semaphores and elections. No Kubernetes here.

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
    ConfigError,
    EtcdLockError,
    EtcdUnavailable,
    Fenced,
    LockLost,
    LockTimeout,
    NotHeld,
    SessionLost,
)
from etcdlock.etcd.fence import Fence
from etcdlock.etcd.keys import Contender, HolderInfo
from etcdlock.etcd.queue import read_contenders
from etcdlock.etcd.semaphore import Mutex, Semaphore
from etcdlock.etcd.session import Session

__all__ = [
    "AlreadyAcquiring",
    "ConfigError",
    "Contender",
    "Election",
    "EtcdClient",
    "EtcdConfig",
    "EtcdLockError",
    "EtcdUnavailable",
    "Fence",
    "Fenced",
    "HolderInfo",
    "LockLost",
    "LockTimeout",
    "Mutex",
    "NotHeld",
    "Semaphore",
    "Session",
    "SessionLost",
    "observe",
    "read_contenders",
]
