"""The client's own exceptions: every failure a caller sees is a ChatError, of the class that
says what went wrong -- built from the error class the replica sends with its status (or, for
a transport failure, from the status code alone):

    ChatError
    ├── InvalidArgument        a bad username, password, page size, empty message, ...
    ├── AlreadyExists          the username is taken
    ├── NotFound               no such account (or message)
    ├── Unauthenticated        wrong password, an expired session
    │   └── NotLoggedInError   a call that needs a session, made before login
    ├── PermissionDenied       not yours to do
    ├── ResourceExhausted      a replica's limit (subscriptions, a full disk)
    │   └── RateLimited        too many tries: `retry_after` seconds until the next one
    ├── Refused                a change the cluster's rules refuse now (a membership change
    │                          while another is in progress, promoting a lagging learner)
    └── Unavailable            the service cannot answer now (no quorum, storage failing)
        └── ChatUnavailableError  no replica (or no primary) answered before the deadline

Each keeps the gRPC status `code` and the replica's `message`."""

from __future__ import annotations

from typing import Any

import grpc

from protos.wire import RETRY_AFTER_KEY, SERVICE_ERROR_KEY

_DEFAULT_MESSAGES: dict[grpc.StatusCode, str] = {
    grpc.StatusCode.INVALID_ARGUMENT: "invalid request",
    grpc.StatusCode.ALREADY_EXISTS: "already exists",
    grpc.StatusCode.NOT_FOUND: "not found",
    grpc.StatusCode.UNAUTHENTICATED: "not authenticated",
    grpc.StatusCode.PERMISSION_DENIED: "permission denied",
}


class ChatError(Exception):
    """A request the service refused (or could not answer), with its gRPC status code."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.message} ({self.code.name})"

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError) -> ChatError:
        """The exception of the class the replica named (its SERVICE_ERROR_KEY trailer), or
        else of the one its status code means."""
        code: grpc.StatusCode = error.code()
        retry_after = _trailers(error).get(RETRY_AFTER_KEY)
        try:
            seconds = float(retry_after) if retry_after is not None else None
        except ValueError:
            seconds = None
        return cls.from_status(code, error.details(), service_error(error), seconds)

    @classmethod
    def from_status(
        cls,
        code: grpc.StatusCode,
        details: str | None,
        service_class: str | None,
        retry_after: float | None = None,
    ) -> ChatError:
        """The exception for a status: of the class the replica named (`service_class`),
        else of the one the code means; a rate limit's with its `retry_after` seconds."""
        message = details or _DEFAULT_MESSAGES.get(code, code.name.lower().replace("_", " "))
        kind = _BY_SERVICE_CLASS.get(service_class or "")
        if kind is None:
            kind = _BY_CODE.get(code, ChatError)
        if kind is ResourceExhausted and retry_after is not None:
            return RateLimited(code, message, retry_after)
        return kind(code, message)


class InvalidArgument(ChatError):
    """The request is malformed or breaks a rule (username, password, sizes)."""


class AlreadyExists(ChatError):
    """What the request would create exists already (a taken username)."""


class NotFound(ChatError):
    """What the request names does not exist (an account)."""


class Unauthenticated(ChatError):
    """Wrong credentials, or a session that is no longer valid."""


class NotLoggedInError(Unauthenticated):
    """A request that needs a session was made before login (or after logout)."""

    def __init__(self) -> None:
        super().__init__(grpc.StatusCode.UNAUTHENTICATED, "not logged in")


class PermissionDenied(ChatError):
    """Authenticated, but not allowed to do this."""


class ResourceExhausted(ChatError):
    """A replica's limit was reached (its subscriptions, its disk)."""


class RateLimited(ResourceExhausted):
    """Too many tries (logins, registrations): the next one is allowed `retry_after` seconds
    from when the replica answered."""

    def __init__(self, code: grpc.StatusCode, message: str, retry_after: float) -> None:
        super().__init__(code, message)
        self.retry_after = retry_after


class Refused(ChatError):
    """A change the cluster's rules refuse as things stand (FAILED_PRECONDITION): one
    membership change at a time, a learner promoted while it lags, ... Not retried: every
    replica would answer the same until the operator (or time) changes something."""


class Unavailable(ChatError):
    """The service cannot answer now (too few replicas in sync, its storage failing); a retry
    later may succeed."""


class ChatUnavailableError(Unavailable):
    """No replica (or no primary) answered before the client's deadline."""


# The service's name for a refusal by its rules: a FAILED_PRECONDITION that, unlike "not the
# primary", every replica would answer alike (see client.failover.retryable).
REFUSED = "Refused"

# The replica's error classes (replica/errors.py) by name, as its SERVICE_ERROR_KEY trailer
# gives them; NotPrimary is the client's to handle (it follows the primary) and is never raised
# to a caller but as Unavailable, once no primary answered.
_BY_SERVICE_CLASS: dict[str, type[ChatError]] = {
    "InvalidArgument": InvalidArgument,
    "AlreadyExists": AlreadyExists,
    "NotFound": NotFound,
    "Unauthenticated": Unauthenticated,
    "PermissionDenied": PermissionDenied,
    "ResourceExhausted": ResourceExhausted,
    "Unavailable": Unavailable,
    "NotPrimary": Unavailable,
    REFUSED: Refused,
}

_BY_CODE: dict[grpc.StatusCode, type[ChatError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
}


def trailers(error: grpc.RpcError) -> list[tuple[str, str | bytes]]:
    """An error's trailing metadata as pairs (grpc gives objects, grpc.aio gives pairs; an
    error that is no call has none)."""
    trailing = getattr(error, "trailing_metadata", None)
    items: Any = (trailing() if callable(trailing) else None) or ()
    return [(i.key, i.value) if hasattr(i, "key") else (i[0], i[1]) for i in items]


def service_error(error: grpc.RpcError) -> str | None:
    """The error class the replica named in its SERVICE_ERROR_KEY trailer (None: it named
    none, e.g. a transport failure)."""
    return _trailers(error).get(SERVICE_ERROR_KEY)


def _trailers(error: grpc.RpcError) -> dict[str, str]:
    return {key: value for key, value in trailers(error) if isinstance(value, str)}
