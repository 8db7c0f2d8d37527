"""The interactive client as a person uses it: two users chat in real terminals (tmux
send-keys / capture-pane) while replicas are killed; the chat carries on, with timestamps, a
line when the client moves to another replica, and a "reconnecting..." line while none
answers."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator

import pytest

from tests.integration.cluster_checks import (
    PASSWORD,
    SETTINGS,
    register_users,
    wait_all_running_follow,
    wait_for_primary,
)
from testsupport.harness import REPO_ROOT, ClusterProcesses

# `make test` installs tmux (host-tools); without it the test skips, except under CI.
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("tmux") is None and os.environ.get("CI") != "true",
        reason="needs tmux (apt-get install tmux, or make host-tools as root)",
    ),
]

STAMP = re.compile(r"\[\d\d:\d\d:\d\d\] <alice> ")


class Terminals:
    """A private tmux server (its own socket): one session per user."""

    def __init__(self) -> None:
        self.socket = f"chat-test-{uuid.uuid4().hex[:8]}"

    def tmux(self, *args: str) -> str:
        done = subprocess.run(
            ["tmux", "-L", self.socket, *args], capture_output=True, text=True, timeout=10
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    def open(self, name: str, servers: list[str]) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CHAT_")}
        command = f"cd {REPO_ROOT} && CHAT_SERVERS={','.join(servers)} {sys.executable} -m client"
        size = ["-x", "160", "-y", "50"]
        subprocess.run(
            ["tmux", "-L", self.socket, "new-session", "-d", "-s", name, *size, command],
            env=env,
            check=True,
            timeout=10,
        )

    def type(self, name: str, text: str) -> None:
        self.tmux("send-keys", "-t", name, "-l", text)
        self.tmux("send-keys", "-t", name, "Enter")

    def screen(self, name: str) -> str:
        return self.tmux("capture-pane", "-p", "-t", name, "-S", "-200")

    def wait_for(
        self, name: str, found: Callable[[str], bool], what: str, timeout: float = 20
    ) -> str:
        deadline = time.monotonic() + timeout
        while True:
            text = self.screen(name)
            if found(text):
                return text
            if time.monotonic() > deadline:
                raise AssertionError(f"{name}'s terminal never showed {what}:\n{text}")
            time.sleep(0.2)

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True, timeout=10)


@pytest.fixture
def terminals() -> Iterator[Terminals]:
    made = Terminals()
    yield made
    made.close()


def log_in(terminals: Terminals, name: str) -> None:
    terminals.wait_for(name, lambda t: "username:" in t, "the username prompt")
    terminals.type(name, name)
    terminals.wait_for(name, lambda t: "password:" in t, "the password prompt")
    terminals.type(name, PASSWORD)
    terminals.wait_for(name, lambda t: f"logged in as {name}" in t, "the login line")


def test_two_users_chat_through_kills_and_a_full_outage(
    cluster_processes: Callable[..., ClusterProcesses], terminals: Terminals
) -> None:
    cluster = cluster_processes(3, settings=SETTINGS)
    cluster.start_all()
    primary = wait_for_primary(cluster)
    wait_all_running_follow(cluster, primary)
    register_users(cluster, ["alice", "bob"])
    for name in ("alice", "bob"):
        terminals.open(name, cluster.addresses)
        log_in(terminals, name)
    terminals.type("alice", "/to bob")
    terminals.type("alice", "hello bob")
    screen = terminals.wait_for("bob", lambda t: "<alice> hello bob" in t, "alice's message")
    assert STAMP.search(screen), "an incoming message without its time"

    # The primary dies: the chat carries on, and says it moved.
    os.kill(cluster.process(primary).pid, signal.SIGKILL)
    terminals.type("alice", "still there?")
    terminals.wait_for("bob", lambda t: "<alice> still there?" in t, "the message after a kill")
    terminals.wait_for("bob", lambda t: "-- connected to replica at" in t, "a line saying it moved")

    # No replica at all: it says it is reconnecting, then that it is back.
    for index in range(3):
        if cluster.is_running(index):
            cluster.kill(index)
    terminals.wait_for("bob", lambda t: "reconnecting..." in t, "the reconnecting line")
    before = terminals.screen("bob").count("-- connected to replica at")
    cluster.start_all()
    wait_for_primary(cluster)
    terminals.wait_for(
        "bob",
        lambda t: t.count("-- connected to replica at") > before,
        "a line once a replica answers again",
        timeout=30,
    )
    terminals.type("alice", "back again")
    screen = terminals.wait_for("bob", lambda t: "<alice> back again" in t, "the chat after it")
    assert screen.count("<alice> hello bob") == 1, "a message shown twice"
    terminals.type("alice", "/quit")
    terminals.type("bob", "/quit")
