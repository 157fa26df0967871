"""The Kubernetes operator: kopf handlers over plain domain functions (lock status today)."""
