"""Domain errors. The servicer maps each to a gRPC status code in one place."""

from __future__ import annotations


class ChatError(Exception):
    """Base of every error a client may see; the message is meant for a person."""


class InvalidArgument(ChatError):
    pass


class AlreadyExists(ChatError):
    pass


class NotFound(ChatError):
    pass


class Unauthenticated(ChatError):
    pass


class PermissionDenied(ChatError):
    pass


class ResourceExhausted(ChatError):
    """A limit was reached; `retry_after`: the seconds until a rate limit allows the next try
    (None: no time is known to help, e.g. a full disk)."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Refused(ChatError):
    """The request is well formed but the cluster's rules forbid it now (a membership change
    while another is in progress, a learner promoted while it lags): FAILED_PRECONDITION,
    which a client does not retry elsewhere (unlike NotPrimary's)."""


class Unavailable(ChatError):
    """The replica cannot serve now (shutting down, storage failing, no quorum)."""


class NotPrimary(ChatError):
    """Writes go to the primary; `primary_address` tells the client where, when known."""

    def __init__(self, message: str, primary_address: str | None) -> None:
        super().__init__(message)
        self.primary_address = primary_address
