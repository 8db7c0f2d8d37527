"""The files that hold every message and password hash are the replica user's alone: created
0700 / 0600 (SQLite's -wal and -shm follow the main file), and looser existing ones are named
at start-up."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import sqlalchemy as sa

from replica.config import ClusterConfig, resolve_cluster_secret
from replica.storage.database import loose_permissions, make_engine, upgrade_schema
from testsupport.harness import REPO_ROOT


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_new_sqlite_database_and_its_directory_are_private(tmp_path: Path) -> None:
    os.umask(0o022)  # the usual umask: without care the files would be 0644
    db = tmp_path / "data" / "replica-0.db"
    engine = make_engine(f"sqlite:///{db}")
    try:
        upgrade_schema(engine)
        with engine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE t (x INTEGER)"))
        with engine.connect() as conn:  # WAL mode: a -wal and a -shm file now exist
            conn.execute(sa.text("SELECT * FROM t")).all()
            assert Path(f"{db}-wal").exists() and Path(f"{db}-shm").exists()
            assert mode(Path(f"{db}-wal")) == 0o600
            assert mode(Path(f"{db}-shm")) == 0o600
    finally:
        engine.dispose()
    assert mode(db.parent) == 0o700
    assert mode(db) == 0o600
    resolve_cluster_secret(ClusterConfig(), db.parent)
    assert mode(db.parent / "cluster.secret") == 0o600
    assert loose_permissions([db.parent, db, db.parent / "cluster.secret"]) == []


def test_looser_existing_permissions_are_named_with_the_fix(tmp_path: Path) -> None:
    db = tmp_path / "replica-0.db"
    db.write_bytes(b"")
    db.chmod(0o644)
    tmp_path.chmod(0o755)
    found = loose_permissions([tmp_path, db, tmp_path / "missing"])
    assert found == [
        f"{tmp_path} is open to other users (mode 0755); it holds messages or secrets:"
        f" chmod 700 {tmp_path}",
        f"{db} is open to other users (mode 0644); it holds messages or secrets: chmod 600 {db}",
    ]


def test_a_replica_warns_at_start_up_about_a_world_readable_database(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    db = data / "replica-0.db"
    db.write_bytes(b"")
    db.chmod(0o644)
    config = tmp_path / "one.toml"
    config.write_text(
        'cluster_secret = "a-test-secret-of-32-characters!!"\n'
        '[[replicas]]\nindex = 0\naddress = "127.0.0.1:1"\n'
    )
    # Constructing the node opens the database and checks; it need not serve.
    code = (
        "import logging, sys\n"
        "logging.basicConfig(level=logging.WARNING, stream=sys.stdout)\n"
        "from pathlib import Path\n"
        "from replica.config import ReplicaSettings, load_cluster_config\n"
        "from replica.server.node import ReplicaNode\n"
        f"s = ReplicaSettings(0, load_cluster_config({str(config)!r}),"
        f" 'sqlite:///{db}', Path({str(data)!r}))\n"
        "ReplicaNode(s).engine.dispose()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert f"{db} is open to other users (mode 0644)" in done.stdout
    assert f"chmod 600 {db}" in done.stdout
