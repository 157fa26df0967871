"""The API group, version, kinds and annotation names of etcdlock's Kubernetes API, in one place."""

GROUP = "etcdlock.io"
VERSION = "v1alpha1"
LOCKS = "distributedlocks"
LOCK_KIND = "DistributedLock"
CLUSTERS = "etcdclusters"

ANNOTATION_PREFIX = "etcdlock.io"
FINALIZER = f"{ANNOTATION_PREFIX}/finalizer"
# kopf keeps its handlers' progress and the last handled spec under status.kopf (not in annotations).
KOPF_STATUS = "kopf"

DEFAULT_KEY_PREFIX = "/etcdlock/locks"
# Everything the operator itself keeps in etcd (its election, its epoch) lies under this.
OPERATOR_KEY_PREFIX = "/etcdlock/operator"

# Pods: the user sets LOCK_ANNOTATION; the webhook adds SCHEDULING_GATE and MANAGED_LABEL; the operator
# writes the rest. The operator watches only pods with MANAGED_LABEL (the API server filters, so unrelated
# pods cost it nothing); it labels annotated pods the webhook did not see (see etcdlock.operator.pods.sweep).
LOCK_ANNOTATION = f"{ANNOTATION_PREFIX}/lock"
SCHEDULING_GATE = f"{ANNOTATION_PREFIX}/lock"
MANAGED_LABEL = f"{ANNOTATION_PREFIX}/managed"
STATE_ANNOTATION = f"{ANNOTATION_PREFIX}/state"
TOKEN_ANNOTATION = f"{ANNOTATION_PREFIX}/fencing-token"
MESSAGE_ANNOTATION = f"{ANNOTATION_PREFIX}/message"
LEASE_ANNOTATION = f"{ANNOTATION_PREFIX}/lease"
CLUSTER_ANNOTATION = (
    f"{ANNOTATION_PREFIX}/cluster"  # the EtcdCluster the lease lives in (absent: the operator's)
)

# The user may also set the pod's policies: how long it may wait, and what happens when its hold is lost
# (see etcdlock.operator.pods.policies).
MAX_WAIT_ANNOTATION = f"{ANNOTATION_PREFIX}/max-wait"
ON_LOST_ANNOTATION = f"{ANNOTATION_PREFIX}/on-lost"
# The webhook marks a pod that was annotated after it was created (it cannot be gated any more).
ANNOTATED_LATE_ANNOTATION = f"{ANNOTATION_PREFIX}/annotated-after-creation"
# The state, mirrored as a label in the same write (`kubectl get pods -L etcdlock.io/state`).
STATE_LABEL = STATE_ANNOTATION

WAITING, HELD, RELEASED, ERROR = "Waiting", "Held", "Released", "Error"
# Waiting for a DistributedLock that does not exist; waited longer than its max-wait (it left the queue);
# lost its hold and is being evicted (etcdlock.io/on-lost: evict).
LOCK_NOT_FOUND, TIMED_OUT, EVICTING = "LockNotFound", "TimedOut", "Evicting"
# The states of a pod that waits (in the queue, or for its lock to exist).
WAITING_STATES = (WAITING, LOCK_NOT_FOUND)

WEBHOOK_PATH = "/pod-gate"
# DistributedLocks are checked here at admission (their key: see etcdlock.operator.lockkeys).
LOCK_CHECK_PATH = "/lock-keys"
WEBHOOK_CONFIGURATION = "etcdlock.io"


# The Secrets of an EtcdCluster NAME with TLS (see etcdlock.operator.etcdcluster.tls), named here for the
# lock stores too, which reach such a cluster with its client certificate.
def ca_secret(name: str) -> str:
    return f"{name}-ca"


def member_secret(name: str) -> str:
    return f"{name}-member-tls"


def client_secret(name: str) -> str:
    return f"{name}-client-tls"
