"""Errors of the kubectl plugin, named for what happened; each is one line on stderr and an exit status."""

from __future__ import annotations

EXIT_ERROR = 1
EXIT_NO_ANSWER = 2


class PluginError(Exception):
    """Base class of the plugin's errors; ``exit_status`` is what the plugin exits with."""

    exit_status = EXIT_ERROR


class UsageError(PluginError):
    """The command line is wrong (an unknown flag, a missing argument)."""


class KubectlFailed(PluginError):
    """kubectl could not be run, or exited non-zero (its last error line is the message)."""


class NoSuchContender(PluginError):
    """The lock's status lists no contender with the key or fencing token given."""


class RequestPending(PluginError):
    """Another release request on the lock waits for the operator's answer."""


class LockKeptChanging(PluginError):
    """The lock changed between each read and the write of the request pinned to it."""


class Refused(PluginError):
    """The operator answered the release request with a refusal (stale token, key not found, ...)."""


class NoAnswer(PluginError):
    """The operator did not answer within --wait (the request stays on the lock)."""

    exit_status = EXIT_NO_ANSWER
