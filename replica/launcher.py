"""Run a whole cluster on this machine and tell the truth about it: one
`python -m replica --index N` process per replica in the config, their output interleaved with
an index prefix. Each replica is reported as serving only once its health check says so, and
at once (with its exit code or signal) when it exits; a replica's PID is printed and written to
DATA_DIR/replica-N.pid. Type `restart N` (or pass --restart-on-exit SECONDS) to bring a replica
back; Ctrl-C (or SIGTERM) stops all. Exits non-zero, with one line saying why, when no replica
could start or every replica has exited.

    python -m replica.launcher [--config F] [--data-dir DIR] [--restart-on-exit S] [flags]
"""

from __future__ import annotations

import argparse
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protos import chat_pb2, chat_pb2_grpc
from replica.config import ClusterConfig, ConfigError, ReplicaAddress, load_cluster_config

COLOURS = ("\033[36m", "\033[33m", "\033[35m", "\033[32m", "\033[34m")
RESET = "\033[0m"
TICK = 0.1
HEALTH_TIMEOUT = 0.3
STOP_TIMEOUT = 15.0
COMMANDS = "`restart N` restarts replica N, `status` shows them all, Ctrl-C stops all"


@dataclass
class Supervised:
    """One replica and what the launcher knows of it."""

    replica: ReplicaAddress
    process: subprocess.Popen[bytes] | None = None
    serving: bool = False
    ever_served: bool = False
    restart_at: float | None = None
    exit_text: str = ""  # how it last exited, e.g. "exited with code 1: address in use"
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=20))
    pump: threading.Thread | None = None

    @property
    def index(self) -> int:
        return self.replica.index

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


def _stop_with_parent() -> None:
    """In the replica's process, before it runs: on Linux, ask for a SIGTERM when the launcher
    dies (even by SIGKILL), so no replica outlives the launcher that supervises it."""
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG


def exit_description(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with code {returncode}"


def last_error(lines: Sequence[str]) -> str:
    """The replica's own last word on why it stopped: its last ERROR line, without the log
    prefix (or nothing)."""
    for line in reversed(lines):
        if " ERROR " in line:
            return line.split(" ERROR ", 1)[1].split(": ", 1)[-1].strip()
    return ""


class Launcher:
    def __init__(
        self,
        cluster: ClusterConfig,
        command: Sequence[str],
        data_dir: Path,
        restart_delay: float | None,
        out: IO[str],
    ) -> None:
        self.cluster = cluster
        self.command = list(command)
        self.data_dir = data_dir
        self.restart_delay = restart_delay
        self.out = out
        self.colour = out.isatty() and "NO_COLOR" not in os.environ
        self.replicas = [Supervised(r) for r in cluster.replicas]
        self.commands: queue.Queue[str] = queue.Queue()
        self._lock = threading.Lock()
        self._channels: dict[int, grpc.Channel] = {}
        self._credentials = None
        if cluster.tls is not None:
            self._credentials = grpc.ssl_channel_credentials(cluster.tls.ca_file.read_bytes())
        self._announced_all = False

    # -- output --------------------------------------------------------------------------

    def say(self, text: str) -> None:
        with self._lock:
            self.out.write(f"launcher | {text}\n")
            self.out.flush()

    def _pump(self, r: Supervised, stream: IO[bytes]) -> None:
        prefix = f"replica {r.index} | "
        if self.colour:
            prefix = f"{COLOURS[r.index % len(COLOURS)]}{prefix}{RESET}"
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\n")
            r.tail.append(line)
            with self._lock:
                self.out.write(prefix + line + "\n")
                self.out.flush()

    # -- processes -----------------------------------------------------------------------

    def pid_file(self, r: Supervised) -> Path:
        return self.data_dir / f"replica-{r.index}.pid"

    def start(self, r: Supervised) -> None:
        cmd = [*self.command, "--index", str(r.index)]
        r.tail.clear()
        r.serving = False
        r.restart_at = None
        r.process = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            start_new_session=True,  # Ctrl-C reaches the launcher, which stops each one
            preexec_fn=_stop_with_parent,
        )
        assert r.process.stdout is not None
        r.pump = threading.Thread(target=self._pump, args=(r, r.process.stdout), daemon=True)
        r.pump.start()
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.pid_file(r).write_text(f"{r.process.pid}\n")
        self.say(f"replica {r.index}: starting, pid {r.process.pid}, at {r.replica.address}")

    def _health(self, r: Supervised) -> bool:
        channel = self._channels.get(r.index)
        if channel is None:
            address = r.replica.address
            channel = (
                grpc.insecure_channel(address)
                if self._credentials is None
                else grpc.secure_channel(address, self._credentials)
            )
            self._channels[r.index] = channel
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=HEALTH_TIMEOUT
            )
        except grpc.RpcError:
            return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    def _exited(self, r: Supervised, returncode: int) -> None:
        assert r.process is not None
        if r.pump is not None:
            r.pump.join(1.0)  # its last lines, still in the pipe, say why
        reason = last_error(list(r.tail))
        r.exit_text = exit_description(returncode) + (f": {reason}" if reason else "")
        self.pid_file(r).unlink(missing_ok=True)
        r.serving = False
        self.say(f"replica {r.index} (pid {r.process.pid}) {r.exit_text}")
        channel = self._channels.pop(r.index, None)
        if channel is not None:
            channel.close()
        if self.restart_delay is not None:
            r.restart_at = time.monotonic() + self.restart_delay
            self.say(f"replica {r.index}: restarting in {self.restart_delay:g}s")
        r.process = None

    def status_lines(self) -> list[str]:
        lines = []
        for r in self.replicas:
            if r.running and r.process is not None:
                state = "serving" if r.serving else "starting"
                lines.append(
                    f"replica {r.index}: {state}, pid {r.process.pid}, {r.replica.address}"
                )
            else:
                lines.append(f"replica {r.index}: not running ({r.exit_text or 'not started'})")
        return lines + self._membership_lines()

    def _membership_lines(self) -> list[str]:
        """What the cluster says of its members beyond this launcher's processes: learners,
        replicas that joined elsewhere (`--join`), and launched ones no longer members."""
        reply = None
        for r in self.replicas:
            channel = self._channels.get(r.index)
            if channel is None or not r.serving:
                continue
            try:
                reply = chat_pb2_grpc.ChatStub(channel).ClusterStatus(  # type: ignore[no-untyped-call]
                    chat_pb2.ClusterStatusRequest(), timeout=HEALTH_TIMEOUT
                )
                break
            except grpc.RpcError:
                continue
        if reply is None:
            return []
        launched = {r.index for r in self.replicas}
        members = {m.index: m for m in reply.replicas}
        lines = []
        for m in sorted(reply.replicas, key=lambda m: m.index):
            kind = "learner" if m.learner else "voter"
            if m.index not in launched:
                lines.append(
                    f"replica {m.index}: a {kind} at {m.address} (joined; not run by this "
                    f"launcher), lag {m.lag}"
                )
            elif m.learner:
                lines.append(f"replica {m.index}: a learner (lag {m.lag})")
        lines += [
            f"replica {i}: no longer a member (removed)" for i in sorted(launched - set(members))
        ]
        return lines

    def _command(self, text: str) -> None:
        words = text.split()
        if not words:
            return
        if words[0] == "status" and len(words) == 1:
            for line in self.status_lines():
                self.say(line)
            return
        if words[0] == "restart" and len(words) == 2 and words[1].isdigit():
            r = next((r for r in self.replicas if r.index == int(words[1])), None)
            if r is None:
                self.say(f"no replica {words[1]} in this cluster")
                return
            if r.running:
                self.say(f"replica {r.index}: stopping it first")
                self._stop(r)
            self.start(r)
            return
        self.say(f"unknown command {text.strip()!r}: {COMMANDS}")

    def _stop(self, r: Supervised) -> None:
        if r.process is None:
            return
        if r.process.poll() is None:
            r.process.send_signal(signal.SIGTERM)
            try:
                r.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                r.process.kill()
                r.process.wait()
        self.pid_file(r).unlink(missing_ok=True)
        r.process = None
        r.serving = False
        r.exit_text = "stopped by the launcher"

    # -- the loop ------------------------------------------------------------------------

    def run(self, stopping: threading.Event) -> int:
        for r in self.replicas:
            self.start(r)
        while not stopping.is_set():
            now = time.monotonic()
            for r in self.replicas:
                if r.process is not None:
                    returncode = r.process.poll()
                    if returncode is not None:
                        self._exited(r, returncode)
                    elif not r.serving and self._health(r):
                        r.serving = r.ever_served = True
                        self.say(
                            f"replica {r.index}: serving at {r.replica.address}"
                            f" (pid {r.process.pid})"
                        )
                elif r.restart_at is not None and now >= r.restart_at:
                    self.start(r)
            if not self._announced_all and all(r.serving for r in self.replicas):
                self._announced_all = True
                self.say(f"all {len(self.replicas)} replicas serving; {COMMANDS}")
            while True:
                try:
                    self._command(self.commands.get_nowait())
                except queue.Empty:
                    break
            if all(r.process is None and r.restart_at is None for r in self.replicas):
                return self._all_gone()
            stopping.wait(TICK)
        self.stop_all()
        return 0

    def _all_gone(self) -> int:
        if not any(r.ever_served for r in self.replicas):
            reasons = "; ".join(f"replica {r.index} {r.exit_text}" for r in self.replicas)
            print(f"error: no replica could start: {reasons}", file=sys.stderr, flush=True)
        else:
            print("error: every replica has exited", file=sys.stderr, flush=True)
        self.close()
        return 1

    def stop_all(self) -> None:
        for r in self.replicas:
            if r.running and r.process is not None:
                r.process.send_signal(signal.SIGTERM)
        for r in self.replicas:
            self._stop(r)
        self.close()

    def close(self) -> None:
        for r in self.replicas:
            if r.pump is not None:
                r.pump.join(5)
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()


def _read_commands(launcher: Launcher, stream: IO[str]) -> None:
    for line in stream:
        launcher.commands.put(line)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m replica.launcher",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", default=os.environ.get("CHAT_CONFIG"), help="cluster TOML file")
    parser.add_argument(
        "--data-dir",
        default=os.environ.get("CHAT_DATA_DIR", "data"),
        help="the replicas' data directory, where the PID files go too (default: data)",
    )
    parser.add_argument(
        "--restart-on-exit",
        type=float,
        default=None,
        metavar="SECONDS",
        help="restart a replica that exits, after this delay (default: leave it down)",
    )
    args, extra = parser.parse_known_args(argv)
    if args.restart_on_exit is not None and args.restart_on_exit < 0:
        print("error: --restart-on-exit takes a delay of 0 seconds or more", file=sys.stderr)
        return 2
    try:
        cluster = load_cluster_config(args.config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    command = [sys.executable, "-m", "replica", "--data-dir", args.data_dir, *extra]
    if args.config:
        command += ["--config", args.config]
    launcher = Launcher(cluster, command, Path(args.data_dir), args.restart_on_exit, sys.stdout)
    stopping = threading.Event()

    def stop(signum: int, _frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    threading.Thread(target=_read_commands, args=(launcher, sys.stdin), daemon=True).start()
    return launcher.run(stopping)


if __name__ == "__main__":
    sys.exit(main())
