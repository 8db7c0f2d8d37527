"""A TCP proxy for tests that can freeze or slow what passes through it: a database that
stops answering (a stuck disk or server: no byte forwarded, connections kept open) or
answers late, or a network link with delay but no loss.

It listens on loopback (or a test host's address) and forwards each accepted connection to
one target. `freeze()` holds every byte in both directions until `thaw()`; `delay(seconds)`
holds each chunk that long before forwarding it (per direction, in order: a round trip
costs twice). Threads only; everything stops with `close()`.

    with TcpProxy(("127.0.0.1", 3306)) as proxy:
        url = f"mysql+mysqlconnector://root@127.0.0.1:{proxy.port}/chat"
        proxy.freeze(); ...; proxy.thaw()
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections import deque
from types import TracebackType

CHUNK = 65536


class TcpProxy:
    def __init__(self, target: tuple[str, int], listen: tuple[str, int] = ("127.0.0.1", 0)):
        self.target = target
        self._server = socket.create_server(listen, reuse_port=False)
        self._server.settimeout(0.2)
        self.address = self._server.getsockname()[:2]
        self._cond = threading.Condition()
        self._frozen = False
        self._delay = 0.0
        self._closed = False
        self._sockets: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._start(self._accept, "proxy-accept")

    @property
    def port(self) -> int:
        return int(self.address[1])

    # -- faults --------------------------------------------------------------------------

    def freeze(self) -> None:
        """Forward nothing from now on (connections stay open; new ones are accepted and
        held too) until thaw()."""
        with self._cond:
            self._frozen = True

    def thaw(self) -> None:
        with self._cond:
            self._frozen = False
            self._cond.notify_all()

    def delay(self, seconds: float) -> None:
        """Hold every chunk `seconds` before forwarding it (0: forward at once)."""
        with self._cond:
            self._delay = seconds
            self._cond.notify_all()

    # -- plumbing --------------------------------------------------------------------------

    def _start(self, target: object, name: str, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)  # type: ignore[arg-type]
        self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            client.settimeout(None)
            for s in (client, upstream):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._cond:
                if self._closed:
                    client.close()
                    upstream.close()
                    return
                self._sockets.update((client, upstream))
            self._pipe(client, upstream)
            self._pipe(upstream, client)

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        """Read from `source` into a queue (stamped), and forward from the queue to `sink`
        when neither frozen nor still delayed."""
        queue: deque[tuple[float, bytes]] = deque()
        ended = threading.Event()

        def read() -> None:
            try:
                while True:
                    data = source.recv(CHUNK)
                    if not data:
                        break
                    with self._cond:
                        queue.append((time.monotonic(), data))
                        self._cond.notify_all()
            except OSError:
                pass
            finally:
                ended.set()
                with self._cond:
                    self._cond.notify_all()

        def write() -> None:
            try:
                while True:
                    with self._cond:
                        while not self._closed:
                            if queue and not self._frozen:
                                due = queue[0][0] + self._delay - time.monotonic()
                                if due <= 0:
                                    break
                                self._cond.wait(due)
                                continue
                            if not queue and ended.is_set():
                                break
                            self._cond.wait(0.5)
                        if self._closed or not queue:
                            break
                        _, data = queue.popleft()
                    sink.sendall(data)
            except OSError:
                pass
            finally:
                with contextlib.suppress(OSError):
                    sink.shutdown(socket.SHUT_WR)

        self._start(read, "proxy-read")
        self._start(write, "proxy-write")

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._frozen = False
            sockets = list(self._sockets)
            self._cond.notify_all()
        self._server.close()
        for s in sockets:
            with contextlib.suppress(OSError):
                s.close()

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
