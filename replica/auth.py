"""Who may call what: replica-to-replica RPCs require the cluster secret."""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import grpc

from replica.peers import CLUSTER_SECRET_KEY

if TYPE_CHECKING:
    _Interceptor = grpc.ServerInterceptor[Any, Any]  # generic only in the type stubs
else:
    _Interceptor = grpc.ServerInterceptor


class ClusterSecretInterceptor(_Interceptor):
    """Refuses calls to services under `protected_prefix` (the Replication service) unless
    they carry the cluster secret: clients cannot call them, and a replica configured with
    another secret cannot join."""

    def __init__(self, secret: bytes, protected_prefix: str) -> None:
        self._secret = secret
        self._prefix = protected_prefix

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = continuation(handler_call_details)
        if handler is None or not handler_call_details.method.startswith(self._prefix):
            return handler
        given = dict(handler_call_details.invocation_metadata or ()).get(CLUSTER_SECRET_KEY)
        if given is None:
            return _refusal(
                handler,
                grpc.StatusCode.UNAUTHENTICATED,
                "replica-to-replica call without the cluster secret; clients cannot call it",
            )
        if not hmac.compare_digest(str(given).encode("utf-8"), self._secret):
            return _refusal(
                handler,
                grpc.StatusCode.PERMISSION_DENIED,
                "the caller's cluster secret differs from this replica's; check cluster_secret",
            )
        return handler


def _refusal(
    handler: grpc.RpcMethodHandler[Any, Any], code: grpc.StatusCode, message: str
) -> grpc.RpcMethodHandler[Any, Any]:
    def deny(_request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(code, message)

    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(deny)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(deny)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(deny)
    return grpc.unary_unary_rpc_method_handler(deny)
