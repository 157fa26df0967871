"""Backups of an EtcdCluster and clusters restored from them.

- :mod:`.settings`: ``spec.backup``, ``spec.restore`` and ``spec.recovery``, checked;
- :mod:`.store`: the object store (obstore: S3 and S3-compatible, GCS, Azure Blob, a folder);
- :mod:`.catalog`: what a store holds, and the pure decisions on it (retention, what a restore replays);
- :mod:`.snapshot` (full snapshots), :mod:`.deltas` (continuous deltas), :mod:`.runner` (one cluster's
  backups while this replica leads) and :mod:`.service` (the runners of every cluster, their status);
- :mod:`.member` (a member's init container: the snapshot into its data directory), :mod:`.replay` (the
  deltas into the restored cluster) and :mod:`.restoring` (the two steps of a restore, as the controller
  drives them).

Nothing is imported here: :mod:`.settings` is imported by the spec, and the rest needs obstore.
"""
