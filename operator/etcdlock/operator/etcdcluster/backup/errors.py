"""The one error of backups and restores."""


class BackupError(Exception):
    """A backup or restore step failed; ``reason`` is the CamelCase reason of the condition it sets
    (StoreUnavailable, StoreDenied, BackupNotFound, BackupCorrupt, ChecksumMismatch, CredentialsMissing,
    EtcdUnavailable, RestoreFailed)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
