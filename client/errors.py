"""The client's own exceptions: every failure a caller sees is a ChatError."""

from __future__ import annotations

import grpc

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
        code = error.code()
        message = error.details() or _DEFAULT_MESSAGES.get(
            code, code.name.lower().replace("_", " ")
        )
        return cls(code, message)


class ChatUnavailableError(ChatError):
    """No replica (or no primary) answered before the client's deadline."""


class NotLoggedInError(ChatError):
    """A request that needs a session was made before login (or after logout)."""

    def __init__(self) -> None:
        super().__init__(grpc.StatusCode.UNAUTHENTICATED, "not logged in")
