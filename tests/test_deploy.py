"""What an operator installs: the `chat` and `chat-replica` commands (console scripts, the same
as `python -m client` and `python -m replica`) and the systemd unit that runs one replica per
instance (deploy/systemd/chat-replica@.service)."""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from replica.__main__ import parse_args
from testsupport.harness import free_port, wait_until

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # where pip put the package's console scripts
UNIT = REPO / "deploy" / "systemd" / "chat-replica@.service"
INSTALLED_AT = "/opt/chat/bin/chat-replica"  # where the unit expects the command


def run(
    *argv: str | Path, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in argv], capture_output=True, text=True, timeout=60, env=env, cwd=cwd
    )


def test_the_commands_are_installed_and_call_themselves_by_name() -> None:
    for command, shows in (("chat", "register"), ("chat-replica", "--index")):
        done = run(BIN / command, "--help")
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith(f"usage: {command} "), done.stdout
        assert shows in done.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package as `pip install .` leaves it, built from this checkout's tracked files
    alone and installed into a directory of its own (no editable link back to the checkout):
    what an operator gets. Its commands are in ./bin; run them with it on PYTHONPATH."""
    source = tmp_path_factory.mktemp("source")
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    for name in tracked:
        if (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    target = tmp_path_factory.mktemp("installed")
    done = run(
        sys.executable,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--no-deps",
        "--no-build-isolation",
        "--target",
        target,
        source,
    )
    assert done.returncode == 0, done.stderr
    return target


@pytest.mark.slow
def test_the_installed_package_serves_and_chats(installed: Path, tmp_path: Path) -> None:
    """A one-replica cluster started with the installed `chat-replica` (its schema migrated
    from the installed migrations), used with `chat`, stopped cleanly with SIGTERM."""
    env = {**os.environ, "PYTHONPATH": str(installed)}
    where = run(
        sys.executable, "-c", "import replica; print(replica.__file__)", env=env, cwd=tmp_path
    )
    assert where.stdout.startswith(str(installed)), where  # not this checkout
    address = f"127.0.0.1:{free_port()}"
    config = tmp_path / "cluster.toml"
    config.write_text(
        f'cluster_secret = "{os.urandom(16).hex()}"\n\n'
        f'[[replicas]]\nindex = 0\naddress = "{address}"\n'
    )
    log = open(tmp_path / "replica.log", "wb")  # noqa: SIM115 -- the child holds it
    replica = subprocess.Popen(
        [installed / "bin" / "chat-replica", "--index", "0", "--config", config],
        cwd=tmp_path,  # (its data directory: ./data)
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    log.close()
    env |= {"CHAT_SERVERS": address, "CHAT_PASSWORD": "a fine password"}
    chat = (installed / "bin" / "chat", "--quiet")
    try:
        wait_until(
            lambda: replica.poll() is None and run(*chat, "status", env=env).returncode == 0,
            60,
            lambda: f"chat status never answered: {(tmp_path / 'replica.log').read_text()}",
        )
        for user in ("alice", "bob"):
            assert run(*chat, "register", user, env=env).returncode == 0
        sent = run(*chat, "send", "--user", "alice", "--to", "bob", "hello, bob", env=env)
        assert sent.returncode == 0, sent.stderr
        read = run(*chat, "history", "--user", "bob", "--with", "alice", env=env)
        assert read.stdout.rstrip().endswith("\talice\tbob\thello, bob"), read
        replica.send_signal(signal.SIGTERM)
        assert replica.wait(30) == 0
    finally:
        if replica.poll() is None:
            os.killpg(replica.pid, signal.SIGKILL)
            replica.wait(10)
    assert "Traceback" not in (tmp_path / "replica.log").read_text()


def unit_settings() -> dict[str, str]:
    """The unit's `Key=Value` lines, by "Section.Key" (each key appears once)."""
    settings: dict[str, str] = {}
    section = ""
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
        elif line and not line.startswith("#"):
            key, _, value = line.partition("=")
            assert f"{section}.{key}" not in settings, f"{key} twice in [{section}]"
            settings[f"{section}.{key}"] = value
    return settings


def test_the_unit_runs_the_replica_of_its_instance_unprivileged_and_confined() -> None:
    unit = unit_settings()
    argv = shlex.split(unit["Service.ExecStart"].replace("%i", "2"))
    assert argv[0] == INSTALLED_AT
    args = parse_args(argv[1:])  # the flags the replica really takes
    assert (args.index, args.config) == (2, "/etc/chat/cluster.toml")
    # Its data directory is the one systemd makes for the instance, private to it.
    assert args.data_dir == "/var/lib/" + unit["Service.StateDirectory"].replace("%i", "2")
    assert unit["Service.StateDirectoryMode"] == "0700"
    assert unit["Service.User"] == "chat" and unit["Service.Restart"] == "on-failure"
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp"):
        assert unit[f"Service.{key}"] == "yes", key
    assert unit["Service.ProtectSystem"] == "strict"


def test_systemd_accepts_the_unit(tmp_path: Path) -> None:
    """`systemd-analyze verify` finds nothing to say (an unknown key or a bad value is only a
    warning to it: any output fails this), with the command where this test installed it."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace(INSTALLED_AT, str(BIN / "chat-replica")))
    done = run("systemd-analyze", "verify", tmp_path / "chat-replica@0.service")
    assert (done.returncode, done.stdout + done.stderr) == (0, "")
