"""A three-replica cluster of real processes on loopback (testsupport/harness.py starts them), and
the questions the bench asks it: who is primary, is everyone in sync, how much memory."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import grpc

from bench.memory import proc_status_kb
from client.channels import ChatStub
from protos import chat_pb2, chat_pb2_grpc
from testsupport.harness import ClusterProcesses, wait_until

HOST = "127.0.0.1"
REPLICAS = 3
# The documented defaults (README), written out so the results say what was measured.
SETTINGS: dict[str, int] = {
    "heartbeat_interval_ms": 100,
    "peer_timeout_ms": 600,
    "insync_timeout_ms": 1000,
    "min_insync": 1,
}
POLL = 0.02


class BenchCluster:
    def __init__(
        self, base_dir: Path, db_urls: Sequence[str], *, trace_spans: bool = False
    ) -> None:
        self.processes = ClusterProcesses(
            base_dir,
            REPLICAS,
            hosts=[HOST] * REPLICAS,
            db_urls=list(db_urls),
            settings=SETTINGS,
            startup_timeout=60.0,
            trace_spans=trace_spans,
        )
        self._stubs: dict[int, ChatStub] = {}

    def __enter__(self) -> BenchCluster:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._stubs.clear()
        self.processes.close()

    @property
    def addresses(self) -> list[str]:
        return self.processes.addresses

    def address(self, index: int) -> str:
        return self.processes.address(index)

    def pid(self, index: int) -> int:
        return self.processes.process(index).pid

    def running(self) -> list[int]:
        return [i for i in range(REPLICAS) if self.processes.is_running(i)]

    def start_all(self, *, wait: bool = True) -> None:
        self.processes.start_all(wait=wait)

    def status(self, index: int, timeout: float = 1.0) -> chat_pb2.ClusterStatusReply | None:
        stub = self._stubs.get(index)
        if stub is None:
            channel = self.processes.channel(index)
            stub = self._stubs[index] = chat_pb2_grpc.ChatStub(channel)  # type: ignore[no-untyped-call]
        try:
            return stub.ClusterStatus(chat_pb2.ClusterStatusRequest(), timeout=timeout)
        except grpc.RpcError:
            return None

    def role(self, index: int, timeout: float = 1.0) -> str | None:
        reply = self.status(index, timeout)
        if reply is None:
            return None
        return next((r.role for r in reply.replicas if r.index == index), None)

    def primary(self, among: Sequence[int] | None = None, timeout: float = 1.0) -> int | None:
        """The replica that says it is the primary, if exactly one of `among` does."""
        candidates = self.running() if among is None else list(among)
        primaries = [i for i in candidates if self.role(i, timeout) == "primary"]
        return primaries[0] if len(primaries) == 1 else None

    def epoch_of(self, index: int) -> int | None:
        """The epoch replica `index` reports for itself (None when it does not answer)."""
        reply = self.status(index)
        if reply is None:
            return None
        return next((int(r.epoch) for r in reply.replicas if r.index == index), None)

    def wait_primary(self, timeout: float, among: Sequence[int] | None = None) -> int:
        found = wait_until(
            lambda: _plus_one(self.primary(among)),
            timeout,
            lambda: "no single primary\n" + self.log_tails(),
            interval=POLL,
        )
        return found - 1

    def wait_in_sync(self, primary: int, timeout: float) -> None:
        """Until every running replica is in the primary's in-sync set, at its last seq."""

        def in_sync() -> bool:
            reply = self.status(primary)
            if reply is None:
                return False
            running = set(self.running())
            mine = next((r for r in reply.replicas if r.index == primary), None)
            if mine is None or mine.role != "primary":
                return False
            return all(
                r.in_sync and r.last_seq == mine.last_seq
                for r in reply.replicas
                if r.index in running
            )

        wait_until(
            in_sync,
            timeout,
            lambda: (
                f"replicas not in sync with {primary}: {self.status(primary)}\n" + self.log_tails()
            ),
            interval=POLL,
        )

    def rss_kb(self, index: int, field: str = "VmRSS") -> int | None:
        return proc_status_kb(self.pid(index), field)

    def log_tails(self, lines: int = 15) -> str:
        return "\n".join(self.processes.log_tail(i, lines) for i in range(REPLICAS))


def _plus_one(index: int | None) -> int | None:
    # wait_until wants a truthy value, and replica 0 is a valid answer.
    return None if index is None else index + 1
