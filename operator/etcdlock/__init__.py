"""etcdlock: distributed locks on etcd, compatible with etcd's own concurrency package and etcdctl."""

__version__ = "0.1.0"
