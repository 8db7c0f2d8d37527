"""Real replica processes for integration tests.

`ClusterProcesses` writes a cluster TOML file for N replicas, starts
`python -m replica --index N --config FILE --data-dir DIR [--db URL]` with output to one log
file per replica, waits for readiness by polling the gRPC health check, and kills every process
it started when closed (it is a context manager; the `cluster_processes` fixture closes it even
when a test fails).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from replica.config import TlsConfig

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SECRET = "integration-test-cluster-secret-0123456789"
DEFAULT_STARTUP_TIMEOUT = 30.0
POLL_INTERVAL = 0.05
# The harness's own channels reconnect within ~0.1 s of a restarted replica listening again
# (gRPC's default backoff waits a second or more after the first failure, longer after more:
# a short start-up state, such as NOT_SERVING during a replay, could pass unseen).
_PROBE_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.min_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 100),
)

T = TypeVar("T")


class ReplicaProcessError(RuntimeError):
    """A replica process did not reach the expected state; the message has its log tail."""


_HANDED_OUT: set[tuple[str, int]] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on `host` a moment ago (the OS picks it), and not one this
    process handed out before: a port closed again is free to the OS, which may pick it for
    the next call too (two replicas of one cluster were given the same port that way)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port = int(sock.getsockname()[1])
        if (host, port) not in _HANDED_OUT:
            _HANDED_OUT.add((host, port))
            return port
    raise RuntimeError(f"no fresh free port on {host} in 100 tries")


def wait_until(
    condition: Callable[[], T | None],
    timeout: float,
    message: str | Callable[[], str] = "condition not met",
    interval: float = POLL_INTERVAL,
) -> T:
    """Poll `condition` until it returns something truthy (which is returned), or raise
    TimeoutError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            text = message() if callable(message) else message
            raise TimeoutError(f"{text} (after {timeout:.1f}s)")
        time.sleep(interval)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        return f'"{escaped}"'
    raise TypeError(f"cannot write {value!r} to TOML")


@dataclass
class ReplicaSpec:
    index: int
    host: str
    port: int
    data_dir: Path
    log_path: Path
    db_url: str | None = None
    """Passed as --db; None lets the replica use SQLite in its data dir."""
    peer_port: int | None = None
    """Written as peer_address (set when the cluster has TLS)."""
    metrics_port: int | None = None
    """Written as metrics_address (set with ClusterProcesses(metrics=True))."""
    join: tuple[str, ...] = ()
    """Started with --join (these members' addresses) instead of the config file."""

    @property
    def metrics_address(self) -> str | None:
        return None if self.metrics_port is None else f"{self.host}:{self.metrics_port}"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def peer_address(self) -> str | None:
        return None if self.peer_port is None else f"{self.host}:{self.peer_port}"


@dataclass
class _Running:
    process: subprocess.Popen[bytes]
    log_file: Any


@dataclass(eq=False)
class ClusterProcesses:
    """N replica processes of one cluster. Indexes are 0..N-1; `hosts[i]` is replica i's
    listening host (e.g. 127.0.0.11-13 so that each replica has its own address)."""

    base_dir: Path
    replicas: int = 1
    hosts: Sequence[str] | None = None
    db_urls: Sequence[str | None] | None = None
    settings: Mapping[str, Any] = field(default_factory=dict)
    cluster_secret: str = DEFAULT_SECRET
    startup_timeout: float = DEFAULT_STARTUP_TIMEOUT
    env: Mapping[str, str] | None = None
    log_level: str = "INFO"
    tls: TlsConfig | None = None
    """Written as [tls], with a peer_address per replica; channel() then speaks TLS."""
    ports: Sequence[int] | None = None
    """Replica i listens on ports[i]; by default a free port of its host (which must then be
    an address of this namespace)."""
    metrics: bool = False
    """Each replica serves Prometheus metrics on a free port of its host (metrics_address)."""
    trace_spans: bool = False
    """Each replica records the steps of every write (replica/storage/spans.py) in spans_path(i)."""
    launch_prefixes: Sequence[Sequence[str]] | None = None
    """Replica i's command is prefixed with launch_prefixes[i] (e.g. `ip netns exec NS`,
    which execs: the pid is still the replica's)."""
    specs: list[ReplicaSpec] = field(init=False)
    config_path: Path = field(init=False)
    _running: dict[int, _Running] = field(init=False, default_factory=dict)
    _channels: dict[int, grpc.Channel] = field(init=False, default_factory=dict)
    _logs_checked: bool = field(init=False, default=False)
    _starts: dict[int, int] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        hosts = list(self.hosts or ["127.0.0.1"] * self.replicas)
        db_urls = list(self.db_urls or [None] * self.replicas)
        ports = list(self.ports or [None] * self.replicas)
        if len({len(hosts), len(db_urls), len(ports), self.replicas}) != 1:
            raise ValueError("hosts, db_urls and ports need one entry per replica")
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.specs = [
            ReplicaSpec(
                index=i,
                host=host,
                port=port or free_port(host),
                data_dir=self.base_dir / f"replica-{i}",
                log_path=self.base_dir / f"replica-{i}.log",
                db_url=db_url,
            )
            for i, (host, db_url, port) in enumerate(zip(hosts, db_urls, ports, strict=True))
        ]
        if self.tls is not None:
            for spec in self.specs:
                spec.peer_port = spec.port + 1 if self.ports else free_port(spec.host)
        if self.metrics:
            for spec in self.specs:
                spec.metrics_port = free_port(spec.host)
        self.config_path = self.base_dir / "cluster.toml"
        self.write_config()
        _LIVE.add(self)

    # -- configuration -------------------------------------------------------------------

    def write_config(self) -> None:
        """(Re)write the cluster TOML file (format: replica/config.py)."""
        lines = [f"cluster_secret = {_toml_value(self.cluster_secret)}"]
        # Tests use short passwords; the product's minimum (8) is tested where it is kept.
        settings = {"min_password_length": 1, **self.settings}
        lines += [f"{key} = {_toml_value(value)}" for key, value in settings.items()]
        if self.tls is not None:
            lines += ["", "[tls]"]
            lines += [
                f"{key} = {_toml_value(str(getattr(self.tls, key)))}"
                for key in ("cert_file", "key_file", "ca_file")
            ]
        for spec in self.specs:
            if spec.join:
                continue  # (joined the running cluster: not among the config's replicas)
            lines += ["", "[[replicas]]", f"index = {spec.index}"]
            lines.append(f"address = {_toml_value(spec.address)}")
            if spec.peer_address is not None:
                lines.append(f"peer_address = {_toml_value(spec.peer_address)}")
            if spec.metrics_address is not None:
                lines.append(f"metrics_address = {_toml_value(spec.metrics_address)}")
        self.config_path.write_text("\n".join(lines) + "\n")

    def address(self, index: int) -> str:
        return self.specs[index].address

    def add_joiner(self, host: str = "127.0.0.1", db_url: str | None = None) -> int:
        """A new replica (the next index) that joins the running cluster with --join through
        the replicas there are now; started with start(index) like the others."""
        return self.add_joiner_at(host, db_url=db_url, join=[s.address for s in self.specs])

    def add_joiner_at(
        self,
        host: str,
        *,
        port: int | None = None,
        db_url: str | None = None,
        join: Sequence[str],
        launch_prefix: Sequence[str] = (),
    ) -> int:
        """Like add_joiner, at a given port (default: a free one of `host`, which must then be
        an address of this namespace), joining through `join` (the members there are now),
        and run behind `launch_prefix` (e.g. a test host's `ip netns exec NS`)."""
        index = len(self.specs)
        spec = ReplicaSpec(
            index=index,
            host=host,
            port=port or free_port(host),
            data_dir=self.base_dir / f"replica-{index}",
            log_path=self.base_dir / f"replica-{index}.log",
            db_url=db_url,
            join=tuple(join),
        )
        if self.tls is not None:
            spec.peer_port = spec.port + 1 if port else free_port(host)
        if self.metrics:
            spec.metrics_port = free_port(host)
        if self.launch_prefixes is not None or launch_prefix:
            earlier = self.launch_prefixes or [[] for _ in self.specs]
            self.launch_prefixes = [*earlier, list(launch_prefix)]
        self.specs.append(spec)
        self.replicas = len(self.specs)
        return index

    def rejoin_through(self, index: int, join: Sequence[str]) -> None:
        """Replica `index` (started with --join) asks `join` for the membership when it is
        next started: the members it joined through may have been removed since."""
        spec = self.specs[index]
        if not spec.join:
            raise ValueError(f"replica {index} starts from the config file, not with --join")
        spec.join = tuple(join)

    @property
    def addresses(self) -> list[str]:
        return [s.address for s in self.specs]

    # -- processes -----------------------------------------------------------------------

    def command(self, index: int) -> list[str]:
        spec = self.specs[index]
        prefix = list(self.launch_prefixes[index]) if self.launch_prefixes else []
        if spec.join:
            where = ["--join", ",".join(spec.join), "--address", spec.address]
            if spec.peer_address is not None:
                where += ["--peer-address", spec.peer_address]
            if spec.metrics_address is not None:
                where += ["--metrics-address", spec.metrics_address]
            if self.tls is not None:
                # (for [tls]; its replicas are ignored)
                where += ["--config", str(self.config_path)]
        else:
            where = ["--config", str(self.config_path)]
        cmd = [
            *prefix,
            sys.executable,
            "-m",
            "replica",
            "--index",
            str(index),
            *where,
            "--data-dir",
            str(spec.data_dir),
            "--log-level",
            self.log_level,
        ]
        if spec.db_url is not None:
            cmd += ["--db", spec.db_url]
        if self.trace_spans:
            cmd += ["--trace-spans", str(self.spans_path(index))]
        return cmd

    def spans_path(self, index: int) -> Path:
        return self.base_dir / f"spans-{index}.txt"

    def _environment(self) -> dict[str, str]:
        # The harness alone decides configuration: no CHAT_* from the developer's shell.
        env = {k: v for k, v in os.environ.items() if not k.startswith("CHAT_")}
        env["PYTHONUNBUFFERED"] = "1"
        # (for a replica started with --join, which reads no config file)
        env["CHAT_CLUSTER_SECRET"] = self.cluster_secret
        env.update(self.env or {})
        return env

    def start(self, index: int, *, wait: bool = True) -> subprocess.Popen[bytes]:
        """Start replica `index` (again, after kill/terminate) and, unless wait=False, wait
        until its health check answers SERVING."""
        if self.is_running(index):
            raise ReplicaProcessError(f"replica {index} is already running")
        old = self._running.pop(index, None)
        if old is not None:
            old.log_file.close()
        spec = self.specs[index]
        spec.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        starts = self._starts.get(index, 0) + 1
        self._starts[index] = starts
        log_file = open(spec.log_path, "ab")  # noqa: SIM115 -- closed when the replica is replaced or closed
        log_file.write(f"==== harness: start #{starts} of replica {index} ====\n".encode())
        log_file.flush()
        process = subprocess.Popen(
            self.command(index),
            cwd=REPO_ROOT,
            env=self._environment(),
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            # Its own process group: a Ctrl-C in the terminal reaches pytest, which then kills
            # replicas deliberately, instead of reaching every replica at once.
            start_new_session=True,
        )
        self._running[index] = _Running(process, log_file)
        if wait:
            self.wait_healthy(index)
        return process

    def start_all(self, *, wait: bool = True) -> None:
        for spec in self.specs:
            self.start(spec.index, wait=False)
        if wait:
            for spec in self.specs:
                self.wait_healthy(spec.index)

    def process(self, index: int) -> subprocess.Popen[bytes]:
        running = self._running.get(index)
        if running is None:
            raise ReplicaProcessError(f"replica {index} was never started")
        return running.process

    def is_running(self, index: int) -> bool:
        running = self._running.get(index)
        return running is not None and running.process.poll() is None

    def returncode(self, index: int) -> int | None:
        return self.process(index).poll()

    def wait_exit(self, index: int, timeout: float) -> int:
        """Wait until replica `index` exits by itself; its exit code."""
        try:
            return self.process(index).wait(timeout)
        except subprocess.TimeoutExpired:
            raise ReplicaProcessError(
                f"replica {index} did not exit within {timeout:.1f}s\n{self.log_tail(index)}"
            ) from None

    def kill(self, index: int) -> int:
        """SIGKILL replica `index` and reap it; its exit code (-9 unless it had exited)."""
        process = self.process(index)
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
        return process.wait(10)

    def kill_together(self, indexes: list[int]) -> list[int]:
        """SIGKILL these replicas at once, then reap them; their exit codes. Each is stopped
        (SIGSTOP) before any is killed: a killed replica's connections reset at once, and a
        peer still running may react within milliseconds -- elect, vote -- while this process
        is descheduled between two signals (seen on a loaded machine); a stopped one is only
        silent, which its peers notice after the peer timeout, long after the last SIGKILL."""
        processes = [self.process(index) for index in indexes]
        alive = [process for process in processes if process.poll() is None]
        for process in alive:
            process.send_signal(signal.SIGSTOP)
        for process in alive:
            process.send_signal(signal.SIGKILL)
        return [process.wait(10) for process in processes]

    def terminate(self, index: int, timeout: float = 15.0) -> int:
        """SIGTERM replica `index` and wait for it to exit; its exit code. A replica that
        ignores SIGTERM is killed, and that is an error."""
        process = self.process(index)
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout)
        except subprocess.TimeoutExpired:
            # Where it hangs: a replica dumps every thread's stack on SIGUSR1 (faulthandler).
            process.send_signal(signal.SIGUSR1)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(1.0)
            process.kill()
            process.wait(10)
            raise ReplicaProcessError(
                f"replica {index} did not exit within {timeout:.1f}s of SIGTERM; killed it "
                f"(its threads' stacks, dumped first, end its log)\n{self.log_tail(index, 120)}"
            ) from None

    def close(self, *, check_logs: bool = True) -> None:
        """Kill every process still running and close channels and log files. Then, with
        `check_logs`, fail (ReplicaProcessError) if any replica's log holds a traceback: a
        replica reports every failure it expects in one line, so a traceback is a bug --
        also one that did no other harm (a thread dying as the process stops)."""
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()
        _LIVE.discard(self)
        # Every process gets its SIGKILL before any wait, so one slow reap delays no kill.
        for running in self._running.values():
            if running.process.poll() is None:
                running.process.kill()
        for running in self._running.values():
            running.process.wait(10)
            running.log_file.close()
        found = self.tracebacks() if check_logs and not self._logs_checked else {}
        self._logs_checked = True
        if found:
            raise ReplicaProcessError(
                "\n".join(f"a traceback in replica {i}'s log:\n{text}" for i, text in found.items())
            )

    def tracebacks(self) -> dict[int, str]:
        """Each replica whose log holds a traceback: the first one, with the line before it."""
        found: dict[int, str] = {}
        for spec in self.specs:
            if spec.index not in self._running:
                continue  # never started by this harness
            lines = self.log_text(spec.index).splitlines()
            for number, line in enumerate(lines):
                if line.startswith(TRACEBACK) or line.startswith("Exception in thread"):
                    found[spec.index] = "\n".join(lines[max(0, number - 1) : number + 30])
                    break
        return found

    def __enter__(self) -> ClusterProcesses:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close(check_logs=exc_type is None)

    # -- readiness -----------------------------------------------------------------------

    def channel(self, index: int) -> grpc.Channel:
        """A channel to replica `index`, kept open until close()."""
        channel = self._channels.get(index)
        if channel is None:
            if self.tls is None:
                channel = grpc.insecure_channel(self.address(index), options=_PROBE_OPTIONS)
            else:
                ca = grpc.ssl_channel_credentials(self.tls.ca_file.read_bytes())
                channel = grpc.secure_channel(self.address(index), ca, _PROBE_OPTIONS)
            self._channels[index] = channel
        return channel

    def health_status(self, index: int, service: str = "", timeout: float = 0.5) -> int | None:
        """The health check's status, or None when the replica does not answer."""
        stub = health_pb2_grpc.HealthStub(self.channel(index))
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError:
            return None
        return int(reply.status)

    def wait_healthy(self, index: int, timeout: float | None = None, service: str = "") -> None:
        """Poll replica `index`'s health check until SERVING. Raises ReplicaProcessError with
        the log tail if the process exits first or the deadline passes."""
        timeout = self.startup_timeout if timeout is None else timeout
        process = self.process(index)
        deadline = time.monotonic() + timeout
        while True:
            if self.health_status(index, service) == health_pb2.HealthCheckResponse.SERVING:
                return
            code = process.poll()
            if code is not None:
                raise ReplicaProcessError(
                    f"replica {index} exited with code {code} before it was healthy\n"
                    f"{self.log_tail(index)}"
                )
            if time.monotonic() >= deadline:
                raise ReplicaProcessError(
                    f"replica {index} at {self.address(index)} was not healthy within "
                    f"{timeout:.1f}s\n{self.log_tail(index)}"
                )
            time.sleep(POLL_INTERVAL)

    # -- logs ----------------------------------------------------------------------------

    def log_text(self, index: int) -> str:
        path = self.specs[index].log_path
        return path.read_text(errors="replace") if path.exists() else ""

    def log_tail(self, index: int, lines: int = 40) -> str:
        tail = self.log_text(index).splitlines()[-lines:]
        header = f"---- last {len(tail)} lines of {self.specs[index].log_path} ----"
        return "\n".join([header, *tail])


TRACEBACK = "Traceback (most recent call last)"

# Belt and braces: processes of a harness that was never closed die with the test run.
_LIVE: weakref.WeakSet[ClusterProcesses] = weakref.WeakSet()


@atexit.register
def _kill_leftovers() -> None:
    for cluster in list(_LIVE):
        cluster.close(check_logs=False)


def live_clusters() -> list[ClusterProcesses]:
    """Harnesses not closed yet (for failure reports)."""
    return sorted(_LIVE, key=lambda c: str(c.base_dir))
