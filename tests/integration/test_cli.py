"""The CLI driven as a subprocess against a real three-replica cluster, as a script would."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import eventlog
from bench import scale
from projections import EventTypes
from replica.storage.database import make_engine, upgrade_schema
from tests.integration.cluster_checks import (
    db_url,
    replica_state,
    wait_all_running_follow,
    wait_for_primary,
)
from testsupport.harness import REPO_ROOT, ClusterProcesses

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterProcesses]:
    made = ClusterProcesses(tmp_path_factory.mktemp("cli-cluster"), 3)
    try:
        made.start_all()
        wait_all_running_follow(made, wait_for_primary(made))
        yield made
    finally:
        made.close()


def run_cli(
    cluster: ClusterProcesses, *args: str, password: str | None = "pw-1234", timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHAT_")}
    env["CHAT_SERVERS"] = ",".join(cluster.addresses)
    if password is not None:
        env["CHAT_PASSWORD"] = password
    return subprocess.run(
        [sys.executable, "-m", "client", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=timeout,
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"exit {result.returncode}: {result.stderr}"
    return result.stdout


def one_line_error(result: subprocess.CompletedProcess[str], *words: str) -> str:
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got: {result.stderr!r}"
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def test_register_send_read_list_history(cluster: ClusterProcesses) -> None:
    ok(run_cli(cluster, "register", "alice"))
    ok(run_cli(cluster, "register", "bob"))
    ok(run_cli(cluster, "send", "--user", "alice", "--to", "bob", "hello bob"))
    ok(run_cli(cluster, "send", "--user", "alice", "--to", "bob", "tabs\tand\nlines"))
    lines = ok(run_cli(cluster, "read", "--user", "bob")).splitlines()
    assert [line.split("\t")[2:] for line in lines] == [
        ["alice", "hello bob"],
        ["alice", "tabs\\tand\\nlines"],
    ]
    assert all(line.split("\t")[0].isdigit() for line in lines)
    for line in lines:  # SENT_AT: ISO 8601 UTC, within a minute of now
        sent = dt.datetime.fromisoformat(line.split("\t")[1].replace("Z", "+00:00"))
        assert abs((dt.datetime.now(dt.UTC) - sent).total_seconds()) < 60
    assert ok(run_cli(cluster, "read", "--user", "bob")) == "", "acked messages came again"
    assert ok(run_cli(cluster, "list", "a*")).split() == ["alice"]
    assert set(ok(run_cli(cluster, "list")).split()) >= {"alice", "bob"}
    history = ok(run_cli(cluster, "history", "--user", "bob", "--with", "alice")).splitlines()
    assert [h.split("\t")[2:4] for h in history] == [["alice", "bob"]] * 2


def test_read_wait_gets_a_live_message(cluster: ClusterProcesses) -> None:
    ok(run_cli(cluster, "register", "carol"))
    ok(run_cli(cluster, "register", "dan"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHAT_")}
    env.update(CHAT_SERVERS=",".join(cluster.addresses), CHAT_PASSWORD="pw-1234")
    reader = subprocess.Popen(
        [sys.executable, "-m", "client", "read", "--user", "dan", "--wait", "20"],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert reader.stdout is not None
        stdout = reader.stdout
        # A thread reads what the reader prints (a non-blocking read of a text pipe can fail
        # mid-character).
        lines: queue.SimpleQueue[str] = queue.SimpleQueue()
        threading.Thread(target=lambda: [lines.put(line) for line in stdout], daemon=True).start()
        deadline = time.monotonic() + 30
        sent = 0
        received = ""
        # Send until the reader prints one (it may not be subscribed yet for the first).
        while "live" not in received and time.monotonic() < deadline:
            sent += 1
            ok(run_cli(cluster, "send", "--user", "carol", "--to", "dan", f"live {sent}"))
            with contextlib.suppress(queue.Empty):
                received += lines.get(timeout=0.5)
        assert "\tcarol\tlive 1" in received
    finally:
        reader.kill()
        reader.wait()


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("register", "alice"), ["taken", "ALREADY_EXISTS"]),
        (("register", "no spaces"), ["not valid", "INVALID_ARGUMENT"]),
        (("send", "--user", "alice", "--to", "nobody", "hi"), ["nobody", "NOT_FOUND"]),
        (("send", "--user", "alice", "--to", "bob", "x" * 5000), ["4096", "INVALID_ARGUMENT"]),
        (("list", "a'; DROP TABLE accounts; --"), ["pattern", "INVALID_ARGUMENT"]),
        (("history", "--user", "alice", "--with", "ghost"), ["ghost", "NOT_FOUND"]),
    ],
)
def test_bad_input_is_one_line_and_changes_nothing(
    cluster: ClusterProcesses, args: tuple[str, ...], words: list[str]
) -> None:
    run_cli(cluster, "register", "alice")
    run_cli(cluster, "register", "bob")
    primary = wait_for_primary(cluster)
    before = replica_state(db_url(cluster, primary))[0]
    one_line_error(run_cli(cluster, *args), *words)
    engine = make_engine(db_url(cluster, primary), create_database=False)
    try:
        with engine.connect() as conn:
            appended = {e.type for e in eventlog.read_events(conn, before)}
    finally:
        engine.dispose()
    # The command logged in and out around the failure; nothing else was stored.
    assert appended <= {EventTypes.SESSION_OPENED, EventTypes.SESSION_CLOSED}


def test_wrong_password(cluster: ClusterProcesses) -> None:
    run_cli(cluster, "register", "erin")
    result = run_cli(cluster, "send", "--user", "erin", "--to", "erin", "hi", password="nope")
    one_line_error(result, "UNAUTHENTICATED")


def test_no_replica_reachable(cluster: ClusterProcesses) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "client", "--servers", "127.0.0.1:1", "--timeout", "1", "list"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    one_line_error(result, "127.0.0.1:1")


def test_status_table(cluster: ClusterProcesses) -> None:
    lines = ok(run_cli(cluster, "status")).splitlines()
    header = lines[0].lower()
    for column in ("index", "address", "role", "epoch", "lag", "in-sync"):
        assert column in header
    roles = [line.split()[2] for line in lines[1:4]]
    assert lines[4].startswith("primary: replica ")
    assert sorted(roles) == ["primary", "secondary", "secondary"]


def test_delete_account(cluster: ClusterProcesses) -> None:
    ok(run_cli(cluster, "register", "frank"))
    ok(run_cli(cluster, "delete-account", "--user", "frank"))
    assert "frank" not in ok(run_cli(cluster, "list", "f*")).split()
    one_line_error(run_cli(cluster, "read", "--user", "frank"), "UNAUTHENTICATED")


def test_send_survives_a_primary_kill(
    cluster: ClusterProcesses, request: pytest.FixtureRequest
) -> None:
    """Last in this module: it leaves another replica as primary."""
    ok(run_cli(cluster, "register", "gina"))
    primary = wait_for_primary(cluster)
    cluster.kill(primary)
    try:
        ok(run_cli(cluster, "send", "--user", "gina", "--to", "gina", "after the kill"))
        assert "after the kill" in ok(run_cli(cluster, "read", "--user", "gina"))
    finally:
        cluster.start(primary)


def test_thousands_of_messages_read_and_history_in_one_run(
    cluster_processes: Callable[..., ClusterProcesses], tmp_path: Path
) -> None:
    """A backlog of 2,500 (more than one ack request takes) clears in one `read`, and a
    2,500-message history prints whole, in order, page after page."""
    url = f"sqlite:///{tmp_path / 'seeded.db'}"
    engine = make_engine(url)
    upgrade_schema(engine)
    scale.seed(engine, 2500)  # 2,502 accounts, then 2,500 messages to RECIPIENT
    engine.dispose()
    single = cluster_processes(1, db_urls=[url])
    single.start_all()
    me = ["--user", scale.RECIPIENT]
    history = ok(run_cli(single, "history", *me, "--with", scale.SENDER, password=scale.PASSWORD))
    ids = [int(line.split("\t")[0]) for line in history.splitlines()]
    assert ids == list(range(2503, 2503 + 2500))
    read = ok(run_cli(single, "read", *me, password=scale.PASSWORD)).splitlines()
    assert [int(line.split("\t")[0]) for line in read] == ids
    assert ok(run_cli(single, "read", *me, password=scale.PASSWORD)) == "", "delivered again"
