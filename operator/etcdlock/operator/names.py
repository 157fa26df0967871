"""The API group, version, kinds and annotation names of etcdlock's Kubernetes API, in one place."""

GROUP = "etcdlock.io"
VERSION = "v1alpha1"
LOCKS = "distributedlocks"
LOCK_KIND = "DistributedLock"

ANNOTATION_PREFIX = "etcdlock.io"
FINALIZER = f"{ANNOTATION_PREFIX}/finalizer"

DEFAULT_KEY_PREFIX = "/etcdlock/locks"
