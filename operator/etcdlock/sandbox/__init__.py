"""Local stand-ins for the infrastructure etcdlock runs on (etcd processes today), for tests and demos.

Nothing in the product imports this package.
"""
