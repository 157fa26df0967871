"""``kubectl etcdlock``: a kubectl plugin for cluster admins, installed with the package
(``kubectl-etcdlock`` on PATH is what kubectl runs for ``kubectl etcdlock ...``).

It sees every DistributedLock's holders and queue across namespaces, and asks the operator for a fenced
release of a stuck holder. It talks to Kubernetes only by running ``kubectl`` itself, so the user's
kubeconfig, context and auth plugins apply, and it needs no client library; it never reaches etcd (the
operator does the release, see :mod:`etcdlock.operator.adminrelease`).
"""

from etcdlock.kubectl.main import main

__all__ = ["main"]
