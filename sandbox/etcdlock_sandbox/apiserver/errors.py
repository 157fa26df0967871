"""API errors as kube-apiserver reports them: a ``Status`` object with code, reason and message."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """An error answered as ``{"kind": "Status", "status": "Failure", ...}`` with its HTTP code."""

    def __init__(self, code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details

    def status(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details is not None:
            body["details"] = self.details
        return body


def _details(kind: str, group: str, name: str) -> dict[str, Any]:
    return {"name": name, "group": group, "kind": kind}


def not_found(plural: str, group: str, name: str) -> ApiError:
    what = f"{plural}.{group}" if group else plural
    return ApiError(404, "NotFound", f'{what} "{name}" not found', _details(plural, group, name))


def already_exists(plural: str, group: str, name: str) -> ApiError:
    what = f"{plural}.{group}" if group else plural
    return ApiError(409, "AlreadyExists", f'{what} "{name}" already exists', _details(plural, group, name))


def conflict(plural: str, group: str, name: str) -> ApiError:
    what = f"{plural}.{group}" if group else plural
    return ApiError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {what} "{name}": the object has been modified; '
        "please apply your changes to the latest version and try again",
        _details(plural, group, name),
    )


def _cause(text: str) -> dict[str, str]:
    """``"spec.x: Invalid value: ..."`` as a StatusCause (kubectl prints ``field: message``)."""
    field, sep, message = text.partition(": ")
    if not sep or " " in field:
        return {"message": text}
    return {"field": field, "message": message}


def invalid(kind: str, group: str, name: str, causes: list[str]) -> ApiError:
    details = {**_details(kind, group, name), "causes": [_cause(c) for c in causes]}
    what = f"{kind}.{group}" if group else kind
    return ApiError(422, "Invalid", f'{what} "{name}" is invalid: {"; ".join(causes)}', details)


def patch_not_applied() -> ApiError:
    """A JSON patch that does not apply, a failed ``test`` operation among them, as kube-apiserver answers it
    (``NewGenericServerResponse(422, ...)``): a fixed message and empty details, naming neither the object
    nor a field, so that kubectl prints ``The request is invalid: the server rejected our request due to an
    error in our request``."""
    return ApiError(422, "Invalid", "the server rejected our request due to an error in our request", {})


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def gone(message: str) -> ApiError:
    return ApiError(410, "Expired", message)
