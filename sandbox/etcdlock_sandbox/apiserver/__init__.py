"""A local Kubernetes API server backed by etcd: a sandbox and test double, never production."""
