"""`python -m replica.launcher` (what `make run` starts), driven as a person would: it says a
replica serves only once it does, reports at once a replica that dies and how, restarts it
on request, and exits non-zero with one line when nothing could start."""

from __future__ import annotations

import os
import queue
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from client import AdminClient, ChatError, ClientSettings
from testsupport.harness import REPO_ROOT, free_port, wait_until

pytestmark = pytest.mark.slow

WAIT = 60.0


class Launched:
    def __init__(self, tmp_path: Path, ports: list[int], *flags: str) -> None:
        config = tmp_path / "cluster.toml"
        lines = ['cluster_secret = "launcher-test-secret"']
        for index, port in enumerate(ports):
            lines += ["", "[[replicas]]", f"index = {index}", f'address = "127.0.0.1:{port}"']
        config.write_text("\n".join(lines) + "\n")
        self.data_dir = tmp_path / "data"
        env = {k: v for k, v in os.environ.items() if not k.startswith("CHAT_")}
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "replica.launcher",
                "--config",
                str(config),
                "--data-dir",
                str(self.data_dir),
                *flags,
            ],
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        assert self.process.stdout is not None
        threading.Thread(target=self._read, args=(self.process.stdout,), daemon=True).start()

    def _read(self, stream: object) -> None:
        for line in stream:  # type: ignore[attr-defined]
            self.lines.put(line.rstrip("\n"))

    def expect(self, text: str, timeout: float = WAIT) -> str:
        """The next launcher line containing `text` (replica output is skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no line with {text!r} within {timeout}s:\n" + self.tail())
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            self.seen.append(line)
            if line.startswith("launcher | ") and text in line:
                return line

    def tail(self) -> str:
        return "\n".join(self.seen[-30:])

    def send(self, command: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()

    def pid(self, index: int) -> int:
        return int((self.data_dir / f"replica-{index}.pid").read_text())

    def started_pids(self) -> list[int]:
        return [
            int(line.rsplit("pid ", 1)[1].split(",")[0])
            for line in self.seen
            if line.startswith("launcher | ") and ": starting, pid " in line
        ]

    def close(self) -> None:
        """Stop the launcher as Ctrl-C would; whatever it started must be gone afterwards."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        while True:  # drain what it printed, for the pids it started
            try:
                self.seen.append(self.lines.get(timeout=0.5))
            except queue.Empty:
                break
        for pid in self.started_pids():
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def launched(tmp_path: Path) -> Iterator[list[Launched]]:
    made: list[Launched] = []
    yield made
    for one in made:
        one.close()


def alive(pid: int) -> bool:
    """Running (a zombie waiting for its reaper counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_it_reports_serving_deaths_and_restarts_truthfully(
    tmp_path: Path, launched: list[Launched]
) -> None:
    ports = [free_port("127.0.0.1") for _ in range(3)]
    run = Launched(tmp_path, ports)
    launched.append(run)
    run.expect("all 3 replicas serving")
    for index, port in enumerate(ports):  # each said so before, in whatever order
        said = [line for line in run.seen if f"launcher | replica {index}: serving" in line]
        assert said == [
            f"launcher | replica {index}: serving at 127.0.0.1:{port} (pid {run.pid(index)})"
        ]
    victim = run.pid(1)
    os.kill(victim, signal.SIGKILL)
    began = time.monotonic()
    run.expect(f"replica 1 (pid {victim}) was killed by SIGKILL", timeout=5)
    assert time.monotonic() - began < 2, "the death was reported late"
    assert not (run.data_dir / "replica-1.pid").exists()
    run.send("restart 1")
    run.expect("replica 1: serving")
    assert run.pid(1) != victim
    run.send("status")
    run.expect("replica 2: serving")
    pids = [run.pid(i) for i in range(3)]
    run.process.send_signal(signal.SIGTERM)
    assert run.process.wait(30) == 0
    assert not [pid for pid in pids if alive(pid)], "replicas outlived the launcher"
    assert not list(run.data_dir.glob("*.pid"))
    assert stat.S_IMODE(run.data_dir.stat().st_mode) == 0o700
    assert "open to other users" not in "\n".join(run.seen)


def test_a_killed_launcher_takes_its_replicas_with_it(
    tmp_path: Path, launched: list[Launched]
) -> None:
    run = Launched(tmp_path, [free_port("127.0.0.1") for _ in range(2)])
    launched.append(run)
    run.expect("all 2 replicas serving")
    pids = [run.pid(0), run.pid(1)]
    os.kill(run.process.pid, signal.SIGKILL)  # no chance to stop them itself
    run.process.wait(10)
    deadline = time.monotonic() + 20
    while [p for p in pids if alive(p)] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [p for p in pids if alive(p)], "replicas outlived a SIGKILLed launcher"


def test_restart_on_exit_brings_a_dead_replica_back(
    tmp_path: Path, launched: list[Launched]
) -> None:
    run = Launched(tmp_path, [free_port("127.0.0.1")], "--restart-on-exit", "0.2")
    launched.append(run)
    run.expect("all 1 replicas serving")
    victim = run.pid(0)
    os.kill(victim, signal.SIGKILL)
    run.expect("was killed by SIGKILL", timeout=5)
    run.expect("replica 0: restarting in 0.2s", timeout=5)
    run.expect("replica 0: serving")
    assert run.pid(0) != victim


def test_with_every_port_taken_it_exits_non_zero_with_one_line(
    tmp_path: Path, launched: list[Launched]
) -> None:
    taken = []
    for _ in range(2):
        holder = socket.socket()
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken.append(holder)
    try:
        run = Launched(tmp_path, [s.getsockname()[1] for s in taken])
        launched.append(run)
        code = run.process.wait(WAIT)
        assert run.process.stderr is not None
        errors = run.process.stderr.read().strip().splitlines()
    finally:
        for holder in taken:
            holder.close()
    assert code == 1
    assert len(errors) == 1, errors
    assert errors[0].startswith("error: no replica could start: replica 0 exited with code 1")
    assert "replica 1 exited with code 1" in errors[0]
    assert "serving" not in "\n".join(run.seen)


def test_status_shows_learners_joined_elsewhere_and_members_removed(
    tmp_path: Path, launched: list[Launched]
) -> None:
    ports = [free_port("127.0.0.1") for _ in range(3)]
    run = Launched(tmp_path, ports)
    launched.append(run)
    run.expect("all 3 replicas serving")
    joiner_address = f"127.0.0.1:{free_port('127.0.0.1')}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHAT_")}
    env["CHAT_CLUSTER_SECRET"] = "launcher-test-secret"
    joiner = subprocess.Popen(
        [sys.executable, "-m", "replica", "--index", "3", "--address", joiner_address,
         "--join", f"127.0.0.1:{ports[0]}", "--data-dir", str(tmp_path / "joiner")],
        cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    try:
        with AdminClient(
            [f"127.0.0.1:{p}" for p in ports], "launcher-test-secret", ClientSettings(timeout=20)
        ) as admin:
            wait_until(lambda: _added(admin, joiner_address), 20, "replica 3 was never added")
            run.send("status")
            run.expect(f"replica 3: a learner at {joiner_address} (joined; not run by this")
            primary = admin.list_members().primary_index
            removed = next(i for i in range(3) if i != primary)
            admin.remove_member(removed)
            # It stopped by itself, and the launcher says why.
            line = run.expect(f"replica {removed} (pid")
            assert "exited with code 0" in line and "removed from the cluster" in line, line
            run.send("status")
            run.expect(f"replica {removed}: no longer a member (removed)")
    finally:
        joiner.kill()
        joiner.wait(10)


def _added(admin: AdminClient, address: str) -> bool:
    try:
        admin.add_member(3, address)
    except ChatError as exc:
        return "in use" in str(exc)
    return True
