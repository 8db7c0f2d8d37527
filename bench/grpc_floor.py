"""The floor Python gRPC sets on this machine: CPU per no-op call of a bare grpcio server (its
own process) and its client, for a unary call and for one message on an open bidirectional
stream, one caller and 32 at once. `python -m bench.grpc_floor [--rounds 3 --seconds 4]`.

What a send costs beyond these is ours (docs/bench.md, "The floor gRPC sets")."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc

SERVICE = "floor.Echo"
TICKS = os.sysconf("SC_CLK_TCK")


def _echo_stream(requests: Iterator[bytes], _context: Any) -> Iterator[bytes]:
    yield from requests


def serve(port_file: str) -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=80))
    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Unary": grpc.unary_unary_rpc_method_handler(lambda request, _context: request),
            "Stream": grpc.stream_stream_rpc_method_handler(_echo_stream),
        },
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    with open(port_file, "w") as f:
        f.write(str(port))
    server.wait_for_termination()


def process_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


@dataclass(frozen=True)
class Floor:
    kind: str
    callers: int
    calls: int
    seconds: float
    server_ms: float  # CPU per call
    client_ms: float

    @property
    def rate(self) -> float:
        return self.calls / self.seconds


def _unary_loop(channel: grpc.Channel, until: float, counts: list[int], i: int) -> None:
    call = channel.unary_unary(f"/{SERVICE}/Unary")
    payload = b"x" * 64
    n = 0
    while time.monotonic() < until:
        call(payload, timeout=5)
        n += 1
    counts[i] = n


class _PingPong:
    """One stream, one message in flight: the caller waits for each echo."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._next: bytes | None = None
        self.closed = False

    def requests(self) -> Iterator[bytes]:
        while True:
            with self._cond:
                while self._next is None and not self.closed:
                    self._cond.wait()
                if self.closed:
                    return
                message, self._next = self._next, None
            yield message

    def send(self, message: bytes) -> None:
        with self._cond:
            self._next = message
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify()


def _stream_loop(channel: grpc.Channel, until: float, counts: list[int], i: int) -> None:
    call = channel.stream_stream(f"/{SERVICE}/Stream")
    feed = _PingPong()
    replies = call(feed.requests())
    payload = b"x" * 64
    n = 0
    while time.monotonic() < until:
        feed.send(payload)
        next(replies)
        n += 1
    feed.close()
    for _ in replies:
        pass
    counts[i] = n


def measure(server_pid: int, port: int, kind: str, callers: int, seconds: float) -> Floor:
    loop: Callable[[grpc.Channel, float, list[int], int], None] = (
        _unary_loop if kind == "unary" else _stream_loop
    )
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    grpc.channel_ready_future(channel).result(timeout=10)
    loop(channel, time.monotonic() + 0.3, [0], 0)  # warm up
    counts = [0] * callers
    server_before, client_before = process_cpu(server_pid), time.process_time()
    began = time.monotonic()
    threads = [
        threading.Thread(target=loop, args=(channel, began + seconds, counts, i))
        for i in range(callers)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    took = time.monotonic() - began
    server = process_cpu(server_pid) - server_before
    client = time.process_time() - client_before
    channel.close()
    calls = sum(counts)
    return Floor(kind, callers, calls, took, 1000 * server / calls, 1000 * client / calls)


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except FileNotFoundError:
        return ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args(argv)
    port_file = f"/tmp/grpc-floor-{os.getpid()}.port"
    server = subprocess.Popen(
        [sys.executable, "-c", f"from bench.grpc_floor import serve; serve({port_file!r})"]
    )
    try:
        deadline = time.monotonic() + 20
        while not _read(port_file):
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError("the bare gRPC server did not start")
            time.sleep(0.05)
        port = int(_read(port_file))
        results = []
        print(
            f"{'round':>5} {'kind':>6} {'callers':>7} {'calls/s':>9} "
            f"{'server ms':>9} {'client ms':>9} {'total ms':>9}"
        )
        for round_ in range(1, args.rounds + 1):
            for kind in ("unary", "stream"):
                for callers in (1, 32):
                    f = measure(server.pid, port, kind, callers, args.seconds)
                    results.append({"round": round_, **f.__dict__, "rate": f.rate})
                    print(
                        f"{round_:>5} {kind:>6} {callers:>7} {f.rate:>9,.0f} "
                        f"{f.server_ms:>9.3f} {f.client_ms:>9.3f} "
                        f"{f.server_ms + f.client_ms:>9.3f}",
                        flush=True,
                    )
        if args.json:
            with open(args.json, "w") as out:
                json.dump(results, out, indent=1)
    finally:
        server.kill()
        server.wait()
        if os.path.exists(port_file):
            os.remove(port_file)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
