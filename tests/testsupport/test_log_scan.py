"""The harness fails a test whose replicas logged a traceback: a replica that says "stopped"
but left a dying thread's traceback behind is a failure, not a pass."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from testsupport.harness import ClusterProcesses, ReplicaProcessError

DYING_THREAD = (
    "import threading, time\n"
    "def die(): raise ValueError('Cannot invoke RPC: Channel closed!')\n"
    "threading.Thread(target=die, name='probe-check').start()\n"
    "time.sleep(0.2)\n"
    "print('replica 0: stopped', flush=True)\n"
)


def run_as_replica(cluster: ClusterProcesses, code: str) -> None:
    """Run `code` where replica 0's process would run, its output in replica 0's log."""
    cluster.launch_prefixes = [[sys.executable, "-c", code, "--"]]
    cluster.start(0, wait=False)
    cluster.wait_exit(0, 10)


def test_a_traceback_in_a_replicas_log_fails_the_close(tmp_path: Path) -> None:
    cluster = ClusterProcesses(tmp_path / "c", 1)
    run_as_replica(cluster, DYING_THREAD)
    assert "probe-check" in cluster.tracebacks()[0]
    with pytest.raises(ReplicaProcessError, match="a traceback in replica 0's log"):
        cluster.close()


def test_a_clean_log_closes_quietly(tmp_path: Path) -> None:
    cluster = ClusterProcesses(tmp_path / "c", 1)
    run_as_replica(cluster, "print('replica 0: stopped')")
    assert cluster.tracebacks() == {}
    cluster.close()
