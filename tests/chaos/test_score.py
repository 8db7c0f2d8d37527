"""The chaos checker itself: it must see a lost, a duplicated and an invented message."""

from __future__ import annotations

import pytest

from tests.chaos.faults import faults_for
from tests.chaos.runner import ChaosReport, RoundResult, score
from tests.integration.cluster_checks import SendLog


def report_for(delivered: list[str], ids: dict[str, int]) -> ChaosReport:
    log = SendLog(acknowledged={"a#1": 10, "a#2": 11, "b#1": 12}, failed=["b#2"])
    report = ChaosReport("sqlite", 1, rounds_planned=1, converged=True)
    report.rounds.append(RoundResult(1, 0, "kill_one", "SIGKILL replica 0", 0.1, 1.0))
    score(report, log, delivered, ids)
    return report


def test_exactly_once_passes() -> None:
    report = report_for(["a#1", "a#2", "b#1", "b#2"], {"a#1": 10, "a#2": 11, "b#1": 12})
    assert report.ok, report.summary()
    assert (report.acknowledged, report.unacknowledged_attempts, report.delivered) == (3, 1, 4)


def test_a_lost_acknowledged_send_fails() -> None:
    report = report_for(["a#1", "b#1"], {"a#1": 10, "b#1": 12})
    assert (report.lost, report.ok) == (1, False)
    assert any("a#2 (id 11)" in f for f in report.failures)


def test_a_duplicate_fails() -> None:
    report = report_for(["a#1", "a#2", "a#2", "b#1"], {"a#1": 10, "a#2": 11, "b#1": 12})
    assert (report.duplicated, report.ok) == (1, False)


def test_an_invented_message_and_a_wrong_id_fail() -> None:
    report = report_for(["a#1", "a#2", "b#1", "zz"], {"a#1": 10, "a#2": 99, "b#1": 12})
    assert (report.invented, report.wrong_ids, report.ok) == (1, 1, False)


def test_an_unfinished_run_fails() -> None:
    report = report_for(["a#1", "a#2", "b#1"], {"a#1": 10, "a#2": 11, "b#1": 12})
    report.rounds_planned = 2
    assert not report.ok


def test_a_fault_that_leaves_too_few_replicas_for_min_insync_is_not_drawn() -> None:
    """With min_insync 2 a lone survivor rightly acknowledges nothing: kill_two would wait for
    progress in vain, so it is not drawn, and naming it is a usage error."""
    assert "kill_two" in {f.name for f in faults_for("mysql")}
    drawn = {f.name for f in faults_for("mysql", min_insync=2)}
    assert "kill_two" not in drawn and {"kill_one", "restart_mariadb"} <= drawn
    assert "kill_one" not in {f.name for f in faults_for("mysql", min_insync=3)}
    with pytest.raises(ValueError, match="with min_insync 2, kill_two leave"):
        faults_for("mysql", ["kill_one", "kill_two"], min_insync=2)
