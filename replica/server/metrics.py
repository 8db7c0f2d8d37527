"""Prometheus metrics of one replica (prometheus-client, one registry per replica), served over
HTTP at its `metrics_address` (docs/operations.md says what each means and what to alert on).

Three sources: counters of protocol events, seen as the executor carries out the core's
effects (elections held and won, step-downs, in-sync set changes, replication streams
opened); a gRPC server interceptor (`grpc_server_*`, the names of the go-grpc-prometheus
convention); and gauges read at scrape time from the replica's own state (role, epoch, seqs,
each secondary's lag and in-sync flag, open subscriptions)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from replica.config import parse_host_port
from replica.protocol import Role
from replica.protocol import effects as fx

# Seconds: from sub-millisecond calls to a stalled commit's 20 s.
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)


SESSION_KINDS = ("send", "ack")  # the requests a Session stream answers (chat.v1.SessionRequest)


class ReplicaMetrics:
    def __init__(self, index: int) -> None:
        self.index = index
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.elections_held = Counter(
            "chat_elections_held", "Elections this replica started as a candidate.", registry=r
        )
        self.elections_won = Counter(
            "chat_elections_won", "Times this replica became primary.", registry=r
        )
        self.step_downs = Counter(
            "chat_step_downs", "Times this replica stopped being primary.", registry=r
        )
        self.in_sync_shrinks = Counter(
            "chat_in_sync_shrinks",
            "Secondaries that left this primary's in-sync set.",
            registry=r,
        )
        self.in_sync_expands = Counter(
            "chat_in_sync_expands",
            "Secondaries that joined this primary's in-sync set.",
            registry=r,
        )
        self.streams_opened = Counter(
            "chat_replication_streams_opened",
            "Replication streams this replica opened to a primary (each reconnect is one).",
            registry=r,
        )
        self.database_errors = Counter(
            "chat_database_errors",
            "Writes or stores the database refused or failed.",
            ["operation"],
            registry=r,
        )
        self.delivery_seconds = Histogram(
            "chat_delivery_latency_seconds",
            "From a message's commit (its sent_at) to its push to a live subscriber.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.storage_seconds = Histogram(
            "chat_storage_operation_seconds",
            "Each operation on this replica's database (a commit with its statements, a read), "
            "start to end.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.send_seconds = Histogram(
            "chat_send_latency_seconds",
            "Send calls answered OK (acknowledged by every in-sync replica), start to reply.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.session_requests = Counter(
            "chat_session_requests",
            "Sends and acks answered on Session streams, by status code (the streams themselves "
            "are counted as RPCs by grpc_server_*).",
            ["request", "grpc_code"],
            registry=r,
        )
        # Exported (at 0) before the first Session request, as prometheus-client advises for
        # known labels: an alert or a rate over it has a series from the start.
        self._session_children: dict[tuple[str, str], Any] = {
            (kind, "OK"): self.session_requests.labels(kind, "OK") for kind in SESSION_KINDS
        }
        labels = ["grpc_type", "grpc_service", "grpc_method"]
        self.grpc_started = Counter(
            "grpc_server_started", "RPCs started on the server.", labels, registry=r
        )
        self.grpc_handled = Counter(
            "grpc_server_handled",
            "RPCs completed on the server, by status code.",
            [*labels, "grpc_code"],
            registry=r,
        )
        self.grpc_seconds = Histogram(
            "grpc_server_handling_seconds",
            "RPC handling time on the server (a stream: until it ends).",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self._was_primary = False
        self._server: Any = None

    # -- protocol events -------------------------------------------------------------------

    def observe_effect(self, effect: fx.Effect) -> None:
        match effect:
            case fx.RequestVotes():
                self.elections_held.inc()
            case fx.SetRole(role):
                primary = role is Role.PRIMARY
                if primary and not self._was_primary:
                    self.elections_won.inc()
                self._was_primary = primary
            case fx.StepDown():
                self.step_downs.inc()
            case fx.OpenStream():
                self.streams_opened.inc()
            case fx.LogNote(event="in_sync_joined"):
                self.in_sync_expands.inc()
            case fx.LogNote(event="in_sync_left"):
                self.in_sync_shrinks.inc()
            case _:
                pass

    def session_answered(self, request: str, code: str, seconds: float) -> None:
        """A send or ack answered on a Session stream, with its status code's name."""
        key = (request, code)
        child = self._session_children.get(key)
        if child is None:
            child = self._session_children[key] = self.session_requests.labels(request, code)
        child.inc()
        if request == "send" and code == "OK":
            self.send_seconds.observe(seconds)

    # -- serving ---------------------------------------------------------------------------

    def add_state(self, collect: Callable[[], Iterable[Metric]]) -> None:
        """Gauges computed at each scrape by `collect`."""
        self.registry.register(_StateCollector(collect))

    def serve(self, address: str) -> None:
        host, port = parse_host_port(address, "metrics_address")
        try:
            self._server, _thread = start_http_server(port, host, registry=self.registry)
        except OSError as exc:
            raise OSError(f"cannot serve metrics on {address}: {exc.strerror}") from exc

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


class _StateCollector(Collector):
    def __init__(self, collect: Callable[[], Iterable[Metric]]) -> None:
        self._collect = collect

    def collect(self) -> Iterator[Metric]:
        yield from self._collect()

    def describe(self) -> Iterator[Metric]:
        return iter(())  # computed at scrape time: nothing to check at registration


def gauge(name: str, documentation: str, value: float | None = None) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)


if TYPE_CHECKING:
    _Interceptor = grpc.ServerInterceptor[Any, Any]  # generic only in the type stubs
else:
    _Interceptor = grpc.ServerInterceptor


class _MethodMetrics:
    """One RPC method's metric children, resolved once (`.labels()` hashes and locks on every
    call), and the wrappers that count and time its calls."""

    def __init__(self, m: ReplicaMetrics, full: str, kind: str, is_send: bool) -> None:
        service, _, method = full.lstrip("/").rpartition("/")
        self._labels = (kind, service, method)
        self._m = m
        self._kind = kind
        self._started = m.grpc_started.labels(kind, service, method)
        self._seconds = m.grpc_seconds.labels(kind, service, method)
        self._handled: dict[grpc.StatusCode, Any] = {}
        self._send_seconds = m.send_seconds if is_send else None

    def finished(self, began: float, code: grpc.StatusCode) -> None:
        took = time.perf_counter() - began
        handled = self._handled.get(code)
        if handled is None:
            handled = self._handled[code] = self._m.grpc_handled.labels(*self._labels, code.name)
        handled.inc()
        self._seconds.observe(took)
        if self._send_seconds is not None and code is grpc.StatusCode.OK:
            self._send_seconds.observe(took)

    def unary(self, inner: Callable[[Any, grpc.ServicerContext], Any]) -> Any:
        def unary_unary(request: Any, context: grpc.ServicerContext) -> Any:
            self._started.inc()
            began = time.perf_counter()
            try:
                reply = inner(request, context)
            except BaseException:
                self.finished(began, _code_of(context, grpc.StatusCode.UNKNOWN))
                raise
            self.finished(began, _code_of(context, grpc.StatusCode.OK))
            return reply

        return unary_unary

    def streamed(self, inner: Callable[[Any, grpc.ServicerContext], Any]) -> Any:
        """The handler of a server or bidi stream (its request is a message or an iterator),
        counted when the stream ends: CANCELLED when the client left."""

        def behaviour(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            self._started.inc()
            began = time.perf_counter()
            try:
                yield from inner(request, context)
            except GeneratorExit:
                self.finished(began, grpc.StatusCode.CANCELLED)
                raise
            except BaseException:
                self.finished(began, _code_of(context, grpc.StatusCode.UNKNOWN))
                raise
            self.finished(began, _code_of(context, grpc.StatusCode.OK))

        return behaviour


def _code_of(context: grpc.ServicerContext, default: grpc.StatusCode) -> grpc.StatusCode:
    code = context.code()  # type: ignore[attr-defined]  # set by abort / set_code
    return code if isinstance(code, grpc.StatusCode) else default


class MetricsInterceptor(_Interceptor):
    """Counts and times every RPC by service, method and status code. A method's wrapped
    handler is built once and reused while the handler beneath it is the same object (the
    servicers' are; the peer-certificate check makes one per call, wrapped afresh)."""

    def __init__(self, metrics: ReplicaMetrics, send_method: str) -> None:
        self._m = metrics
        self._send_method = send_method
        # Method -> (the handler beneath, the one wrapping it).
        self._wrapped: dict[str, tuple[Any, grpc.RpcMethodHandler[Any, Any]]] = {}
        self._methods: dict[str, _MethodMetrics] = {}

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        full = handler_call_details.method  # "/chat.v1.Chat/Send"
        cached = self._wrapped.get(full)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._wrap(full, handler)
        self._wrapped[full] = (handler, wrapped)
        return wrapped

    def _metrics_of(self, full: str, kind: str) -> _MethodMetrics:
        found = self._methods.get(full)
        if found is None:
            found = _MethodMetrics(self._m, full, kind, full == self._send_method)
            self._methods[full] = found
        return found

    def _wrap(
        self, full: str, handler: grpc.RpcMethodHandler[Any, Any]
    ) -> grpc.RpcMethodHandler[Any, Any]:
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._metrics_of(full, "unary").unary(handler.unary_unary),
                handler.request_deserializer,
                handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._metrics_of(full, "server_stream").streamed(handler.unary_stream),
                handler.request_deserializer,
                handler.response_serializer,
            )
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                self._metrics_of(full, "bidi_stream").streamed(handler.stream_stream),
                handler.request_deserializer,
                handler.response_serializer,
            )
        return handler  # client streaming: this service has none
