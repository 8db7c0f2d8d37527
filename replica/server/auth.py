"""Who may call what: replica-to-replica RPCs require the cluster secret and, with TLS, a
client certificate signed by the cluster's CA (see replica/replication/tls.py); and nothing but the
health check is answered while the replica starts."""

from __future__ import annotations

import hmac
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import grpc

from protos.wire import CLUSTER_SECRET_KEY, SERVICE_ERROR_KEY
from replica.replication.tls import PEER_CERTIFICATE_KEY

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
        self,
        secret: bytes,
        protected_prefix: str,
        *,
        require_peer_certificate: bool = False,
        missing: str = "replica-to-replica call without the cluster secret; clients cannot call it",
    ) -> None:
        """`missing`: what a caller without the secret is told."""
        self._secret = secret
        self._missing = missing
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
                self._missing,
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


# The four shapes of a method handler: the attribute holding its behaviour, and the factory.
_HANDLER_SHAPES = (
    ("stream_stream", grpc.stream_stream_rpc_method_handler),
    ("stream_unary", grpc.stream_unary_rpc_method_handler),
    ("unary_stream", grpc.unary_stream_rpc_method_handler),
    ("unary_unary", grpc.unary_unary_rpc_method_handler),
)


def _replace_behaviour(
    handler: grpc.RpcMethodHandler[Any, Any],
    wrap: Callable[[Callable[[Any, grpc.ServicerContext], Any]], Callable[..., Any]],
    *,
    parse_requests: bool = True,
) -> grpc.RpcMethodHandler[Any, Any]:
    """A handler of the same shape whose behaviour is wrap(behaviour); it parses requests and
    serializes replies as the original does, unless not `parse_requests` (a refusal needs
    neither, and must not fail on bytes that do not parse before refusing)."""
    serialization = (
        {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if parse_requests
        else {}
    )
    for attribute, make in _HANDLER_SHAPES:
        behaviour = getattr(handler, attribute)
        if behaviour is not None:
            return make(wrap(behaviour), **serialization)
    raise ValueError("a method handler without a behaviour")


def _refusal(
    handler: grpc.RpcMethodHandler[Any, Any],
    code: grpc.StatusCode,
    message: str,
    trailing: tuple[tuple[str, str], ...] = (),
) -> grpc.RpcMethodHandler[Any, Any]:
    def deny(_request: Any, context: grpc.ServicerContext) -> Any:
        if trailing:
            context.set_trailing_metadata(trailing)
        context.abort(code, message)

    return _replace_behaviour(handler, lambda _behaviour: deny, parse_requests=False)


class StartingInterceptor(_Interceptor):
    """Until `ready` is set (the projections replayed), every call but the health check and
    reflection is refused with UNAVAILABLE, marked as the replica's own answer: clients try
    another replica, and peers count it as a refusal -- a replica that has just started
    vouches for nothing (replica/replication/peers.py)."""

    def __init__(self, ready: threading.Event, why: Callable[[], str]) -> None:
        self._ready = ready
        self._why = why

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = continuation(handler_call_details)
        if handler is None or self._ready.is_set():
            return handler
        method = handler_call_details.method
        if method.startswith(("/grpc.health.", "/grpc.reflection.")):
            return handler
        return _refusal(
            handler,
            grpc.StatusCode.UNAVAILABLE,
            f"replica is starting: {self._why()}; try another replica",
            ((SERVICE_ERROR_KEY, "starting"),),
        )


def _with_peer_certificate_check(
    handler: grpc.RpcMethodHandler[Any, Any],
) -> grpc.RpcMethodHandler[Any, Any]:
    """The handler, refusing calls without a verified client certificate (the interceptor
    cannot see the connection; the call's context can)."""

    def guarded(
        behaviour: Callable[[Any, grpc.ServicerContext], Any],
    ) -> Callable[[Any, grpc.ServicerContext], Any]:
        def call(request_or_requests: Any, context: grpc.ServicerContext) -> Any:
            if not context.auth_context().get(PEER_CERTIFICATE_KEY):
                context.abort(
                    grpc.StatusCode.UNAUTHENTICATED,
                    "replica-to-replica calls need mutual TLS: call the peer_address with a "
                    "client certificate signed by the cluster's ca_file",
                )
            return behaviour(request_or_requests, context)

        return call

    return _replace_behaviour(handler, guarded)
