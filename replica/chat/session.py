"""The machinery of a Session stream (the servicer's Session method adapts it to gRPC): the
state one stream shares between its threads, and the pool of workers that carry out its
requests.

A stream has three threads of its own besides the pool: gRPC's handler thread yields the
replies it takes from the stream's queue, a reader thread takes the client's requests and
hands each to the pool (so the requests of one stream run concurrently and the log writer
commits them together), and, while pushes are on, a pusher that puts the caller's messages
on the same queue. Threads are made per stream, never per request."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

from protos import chat_pb2
from replica import errors

log = logging.getLogger(__name__)

# What a stream's queue carries besides replies: None when the client closed its side and
# every request was answered, a ChatError when the stream is to end with that status.
StreamEnd = errors.ChatError | None


class SessionStream:
    """One open Session stream: its account, its replies and how many requests await theirs.

    `max_in_flight` requests may be carried out at once; `admit()` refuses one more. The
    handler thread drains `replies` (SessionReply messages, then one StreamEnd)."""

    __slots__ = (
        "_closing",
        "_in_flight",
        "_lock",
        "account_id",
        "ended",
        "max_in_flight",
        "pushes",
        "replies",
        "token",
    )

    def __init__(self, token: str, account_id: int, max_in_flight: int) -> None:
        self.token = token
        self.account_id = account_id
        self.max_in_flight = max_in_flight
        self.replies: queue.SimpleQueue[chat_pb2.SessionReply | StreamEnd] = queue.SimpleQueue()
        self.ended = threading.Event()  # the stream is over: stop pushing, drop late replies
        self.pushes: threading.Event | None = None  # set to stop the running pusher
        self._lock = threading.Lock()
        self._in_flight = 0
        self._closing = False  # the client closed its side

    def admit(self) -> bool:
        """Whether one more request may be carried out now (and count it if so)."""
        with self._lock:
            if self._in_flight >= self.max_in_flight:
                return False
            self._in_flight += 1
            return True

    def answered(self, reply: chat_pb2.SessionReply | None) -> None:
        """A request's result: queued for the client (None: none, the stream is ending), and
        its place freed."""
        if reply is not None:
            self.replies.put(reply)
        with self._lock:
            self._in_flight -= 1
            last = self._closing and self._in_flight == 0
        if last:
            self.replies.put(None)

    def client_done(self) -> None:
        """The client closed its side: the stream ends once every request is answered."""
        with self._lock:
            self._closing = True
            last = self._in_flight == 0
        if last:
            self.replies.put(None)

    def end(self, error: StreamEnd) -> None:
        self.replies.put(error)


class RequestWorkers:
    """At most `size` threads carrying out session requests, started as the load needs them
    and kept: a request waits in the queue while all are busy. Each request is a plain call
    `run(stream, request)` -- no future, no closure."""

    def __init__(
        self, run: Callable[[SessionStream, Any], None], size: int, name: str = "session"
    ) -> None:
        if size < 1:
            raise ValueError("at least one worker is needed")
        self._run = run
        self._size = size
        self._name = name
        self._work: queue.SimpleQueue[tuple[SessionStream, Any] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._started = 0
        self._idle = 0
        self._stopped = False

    def submit(self, stream: SessionStream, request: Any) -> None:
        self._work.put((stream, request))
        with self._lock:
            if self._idle > 0:
                self._idle -= 1  # that worker will take it
                return
            if self._started >= self._size or self._stopped:
                return  # the next worker to finish takes it
            self._started += 1
            number = self._started
        threading.Thread(
            target=self._serve, name=f"{self._name}-worker-{number}", daemon=True
        ).start()

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            started = self._started
        for _ in range(started):
            self._work.put(None)

    def _serve(self) -> None:
        work = self._work
        lock = self._lock
        run = self._run
        while True:
            item = work.get()
            if item is None:
                return
            try:
                run(*item)
            except Exception:  # a bug in one request must not take the worker with it
                log.exception("a session request failed unexpectedly")
                item[0].end(errors.Unavailable("the replica failed to answer a request"))
            with lock:
                self._idle += 1
