"""The alerting rules and the dashboard an operator loads (deploy/prometheus/alerts.yml,
deploy/grafana/chat-cluster.json): valid to promtool, every alert pinned by a promtool unit test
(alerts_test.yml) that passes, and each alert documented. (Their metric names against what a
replica really exports, and the alerts against a real Prometheus: tests/integration/
test_prometheus.py.)"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import yaml

from tests.conftest import require_prometheus_tool

REPO = Path(__file__).resolve().parents[1]
RULES = REPO / "deploy" / "prometheus" / "alerts.yml"
RULE_TESTS = REPO / "deploy" / "prometheus" / "alerts_test.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "chat-cluster.json"
# The metrics the rules and the dashboard may name: a replica's (chat_*, grpc_server_*) and
# Prometheus' own `up`.
METRIC = re.compile(r"\b(chat_[a-z_]+|grpc_server_[a-z_]+)\b")


def promtool() -> str:
    return require_prometheus_tool("promtool")


def alerts() -> dict[str, dict[str, object]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {rule["alert"]: rule for group in groups for rule in group["rules"]}


def expressions() -> list[str]:
    """Every PromQL expression of the rules and of the dashboard's panels."""
    dashboard = json.loads(DASHBOARD.read_text())
    return [str(rule["expr"]) for rule in alerts().values()] + [
        target["expr"] for panel in dashboard["panels"] for target in panel["targets"]
    ]


def metric_names() -> set[str]:
    return {name for expr in expressions() for name in METRIC.findall(expr)}


def test_promtool_accepts_the_rules() -> None:
    done = subprocess.run(
        [promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in done.stdout


def test_every_alert_has_a_unit_test_and_they_pass() -> None:
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    fired = {
        case["alertname"]
        for group in tests
        for case in group["alert_rule_test"]
        if case["exp_alerts"]
    }
    quiet = {
        case["alertname"]
        for group in tests
        for case in group["alert_rule_test"]
        if not case["exp_alerts"]
    }
    # Each alert is seen to fire, and not to fire (yet) where it must not.
    assert fired == set(alerts()) == quiet
    done = subprocess.run(
        [promtool(), "test", "rules", str(RULE_TESTS)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_each_alert_has_a_severity_a_summary_a_runbook_and_a_line_in_the_docs() -> None:
    docs = (REPO / "docs" / "operations.md").read_text()
    for name, rule in alerts().items():
        assert rule["labels"] in ({"severity": "page"}, {"severity": "warn"}), name
        annotations = rule["annotations"]
        assert isinstance(annotations, dict) and set(annotations) == {"summary", "runbook"}, name
        assert f"`{name}`" in docs, f"{name} is not in docs/operations.md"


def test_the_dashboard_is_a_grafana_dashboard_of_the_replicas_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "chat-cluster" and dashboard["panels"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}"
    # What it must show (issue 26): roles, epoch, commit point and lag, the in-sync set,
    # latency, gRPC codes, elections and step-downs.
    shown = metric_names()
    for name in (
        "chat_role",
        "chat_epoch",
        "chat_committed_seq",
        "chat_replica_lag_events",
        "chat_replica_in_sync",
        "chat_send_latency_seconds_bucket",
        "chat_delivery_latency_seconds_bucket",
        "grpc_server_handled_total",
        "chat_elections_won_total",
        "chat_step_downs_total",
    ):
        assert name in shown, name
