"""The short partition run inside `make test`: each network fault on test hosts (a network
namespace per replica, testsupport/netns.py) under concurrent load, for both min_insync values,
then the exactly-once and convergence checks. `make chaos` runs the long version:
`python -m tests.chaos --hosts netns --min-insync 2 --faults ...`."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chaos.faults import MEMBERSHIP_FAULTS, faults_for
from tests.chaos.runner import run_chaos
from tests.conftest import require_test_hosts

pytestmark = [pytest.mark.slow, pytest.mark.hosts]

NETWORK_FAULTS = [f.name for f in faults_for("sqlite", network=True) if f.network]


@pytest.mark.parametrize("min_insync", [1, 2])
def test_every_network_fault_loses_and_duplicates_nothing(min_insync: int, tmp_path: Path) -> None:
    require_test_hosts()
    report = run_chaos(
        tmp_path / "cluster",
        rounds=len(NETWORK_FAULTS),
        backend="sqlite",
        seed=20261202 + min_insync,
        fault_names=NETWORK_FAULTS,
        schedule="cycle",
        hosts="netns",
        min_insync=min_insync,
        overlap=0.25,
        max_fault_seconds=5.0,  # (slow_link: `make chaos` holds it longer)
    )
    print(report.summary())
    assert report.ok, report.summary()
    assert {r.fault for r in report.rounds} == set(NETWORK_FAULTS)
    assert report.acknowledged >= 20 * len(NETWORK_FAULTS), "too little load to prove anything"


def test_membership_faults_mixed_with_partitions_lose_and_duplicate_nothing(
    tmp_path: Path,
) -> None:
    """Replicas added, removed and replaced on test hosts (a new one on a host no member
    holds), between partitions of the primary and of a secondary."""
    require_test_hosts()
    names = [*MEMBERSHIP_FAULTS, "partition_primary", "partition_secondary"]
    report = run_chaos(
        tmp_path / "cluster",
        rounds=len(names) + 1,
        backend="sqlite",
        seed=20261206,
        fault_names=names,
        schedule="cycle",
        hosts="netns",
        overlap=0.25,
    )
    print(report.summary())
    assert report.ok, report.summary()
    assert {r.fault for r in report.rounds} == set(names)
