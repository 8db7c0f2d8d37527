"""Who may call what: replica-to-replica RPCs require the cluster secret and, with TLS, a
client certificate signed by the cluster's CA (see replica/tls.py)."""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import grpc

from replica.peers import CLUSTER_SECRET_KEY
from replica.tls import PEER_CERTIFICATE_KEY

if TYPE_CHECKING:
    _Interceptor = grpc.ServerInterceptor[Any, Any]  # generic only in the type stubs
else:
    _Interceptor = grpc.ServerInterceptor


class ClusterSecretInterceptor(_Interceptor):
    """Refuses calls to services under `protected_prefix` (the Replication service) unless
    they carry the cluster secret: clients cannot call them, and a replica configured with
    another secret cannot join. With `require_peer_certificate` they must also have come in
    over mutual TLS (the peer port), so the secret alone is not enough."""

    def __init__(
        self, secret: bytes, protected_prefix: str, *, require_peer_certificate: bool = False
    ) -> None:
        self._secret = secret
        self._prefix = protected_prefix
        self._require_peer_certificate = require_peer_certificate

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
        if self._require_peer_certificate:
            return _with_peer_certificate_check(handler)
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


def _with_peer_certificate_check(
    handler: grpc.RpcMethodHandler[Any, Any],
) -> grpc.RpcMethodHandler[Any, Any]:
    """The handler, refusing calls without a verified client certificate (the interceptor
    cannot see the connection; the call's context can)."""

    def check(context: grpc.ServicerContext) -> None:
        if not context.auth_context().get(PEER_CERTIFICATE_KEY):
            context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                "replica-to-replica calls need mutual TLS: call the peer_address with a "
                "client certificate signed by the cluster's ca_file",
            )

    options = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.request_streaming and handler.response_streaming:
        stream_stream = handler.stream_stream
        assert stream_stream is not None

        def guarded_stream_stream(requests: Any, context: grpc.ServicerContext) -> Any:
            check(context)
            return stream_stream(requests, context)

        return grpc.stream_stream_rpc_method_handler(guarded_stream_stream, **options)
    if handler.request_streaming:
        stream_unary = handler.stream_unary
        assert stream_unary is not None

        def guarded_stream_unary(requests: Any, context: grpc.ServicerContext) -> Any:
            check(context)
            return stream_unary(requests, context)

        return grpc.stream_unary_rpc_method_handler(guarded_stream_unary, **options)
    if handler.response_streaming:
        unary_stream = handler.unary_stream
        assert unary_stream is not None

        def guarded_unary_stream(request: Any, context: grpc.ServicerContext) -> Any:
            check(context)
            return unary_stream(request, context)

        return grpc.unary_stream_rpc_method_handler(guarded_unary_stream, **options)
    unary_unary = handler.unary_unary
    assert unary_unary is not None

    def guarded_unary_unary(request: Any, context: grpc.ServicerContext) -> Any:
        check(context)
        return unary_unary(request, context)

    return grpc.unary_unary_rpc_method_handler(guarded_unary_unary, **options)
