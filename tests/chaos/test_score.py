"""The chaos checker itself: it must see a lost, a duplicated and an invented message."""

from __future__ import annotations

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
