"""The short chaos run inside `make test`: every fault once, in turn, under concurrent load,
then the exactly-once and convergence checks. `make chaos` runs the long random version
(tests/chaos/runner.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chaos.faults import faults_for
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
