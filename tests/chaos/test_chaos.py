"""The short chaos run inside `make test`: every fault once, in turn, under concurrent load,
then the exactly-once and convergence checks. `make chaos` runs the long random version
(tests/chaos/runner.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chaos.faults import MEMBERSHIP_FAULTS, faults_for
from tests.chaos.runner import run_chaos

pytestmark = pytest.mark.slow


def test_every_fault_under_load_loses_and_duplicates_nothing(backend: str, tmp_path: Path) -> None:
    rounds = len(faults_for(backend))
    report = run_chaos(
        tmp_path / "cluster",
        rounds=rounds,
        backend=backend,
        seed=20261126,
        schedule="cycle",
        max_fault_seconds=5.0,  # (a stalled or slow database: `make chaos` holds them longer)
    )
    print(report.summary())
    assert report.ok, report.summary()
    assert len(report.rounds) == rounds
    assert {r.fault for r in report.rounds} == {f.name for f in faults_for(backend)}
    assert report.acknowledged >= 20 * rounds, "too little load to prove anything"


def test_membership_faults_under_load_lose_and_duplicate_nothing(tmp_path: Path) -> None:
    """Replicas added, removed and replaced (each change through the Admin API, a removed
    replica stopping by itself), mixed with SIGKILLs and pauses, every fault at least once.
    (SQLite only here, for make test's time: `make chaos CHAOS_ARGS="--faults ..."` runs them
    on MySQL.)"""
    backend = "sqlite"
    names = [*MEMBERSHIP_FAULTS, "kill_one", "pause_primary"]
    report = run_chaos(
        tmp_path / "cluster",
        rounds=len(names) + 1,
        backend=backend,
        seed=20261206,
        fault_names=names,
        schedule="cycle",
        overlap=0.25,
        max_fault_seconds=5.0,
    )
    print(report.summary())
    assert report.ok, report.summary()
    assert {r.fault for r in report.rounds} == set(names)
    assert report.members is not None and report.members != [0, 1, 2]
