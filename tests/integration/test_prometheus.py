"""The alert rules and the dashboard against a real Prometheus (Debian's, `make
prometheus-tools`) scraping a real three-replica cluster: every metric they name is one the
replicas export; every dashboard query runs; a secondary down fires the under-replicated and
replica-down alerts; with every replica down ChatNoPrimary goes pending, and it resolves once
they are back. (The rules are loaded with the other `for:` durations cut to 2 s: promtool's
unit tests pin the real ones and the firing of each alert, alerts_test.yml.)"""

from __future__ import annotations

import re
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import require_prometheus_tool
from tests.integration.cluster_checks import HOSTS, SETTINGS, register_users, wait_for_primary
from tests.test_alert_rules import RULES, expressions, metric_names
from testsupport.harness import ClusterProcesses, wait_until
from testsupport.prometheus import PrometheusServer

pytestmark = pytest.mark.slow
WATCHED = {"ChatNoPrimary", "ChatTwoPrimaries", "ChatUnderReplicated", "ChatReplicaDown"}


def exported(cluster: ClusterProcesses, index: int) -> set[str]:
    address = cluster.specs[index].metrics_address
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    return {s.name for family in text_string_to_metric_families(text) for s in family.samples}


def test_alerts_and_dashboard_on_a_real_prometheus(
    cluster_processes: Callable[..., ClusterProcesses], tmp_path: Path
) -> None:
    binary = require_prometheus_tool("prometheus")
    cluster = cluster_processes(len(HOSTS), hosts=HOSTS, settings=SETTINGS, metrics=True)
    cluster.start_all()
    primary = wait_for_primary(cluster)
    register_users(cluster, ["alice"])  # (a Send-free call or two: grpc_server_* appear)
    missing = metric_names() - exported(cluster, primary)
    assert not missing, f"the rules or the dashboard name metrics no replica exports: {missing}"

    # Every `for:` cut to 2 s but ChatNoPrimary's 10 s: it is seen pending while the replicas
    # are down, and resolved once they are back.
    quick = tmp_path / "alerts.yml"
    quick.write_text(re.sub(r"for: (?!10s)\d+[smh]", "for: 2s", RULES.read_text()))
    targets = [str(spec.metrics_address) for spec in cluster.specs]
    prometheus = PrometheusServer(binary, tmp_path / "prometheus", targets, quick)
    try:
        wait_until(
            lambda: (
                len(prometheus.api("query", query='up{job="chat-replicas"} == 1')["result"]) == 3
            ),
            30,
            "prometheus never scraped all three replicas",
        )
        for expr in expressions():  # every dashboard and rule query runs
            prometheus.api("query", query=expr)
        # A healthy cluster: none of these active (once the first scrapes are evaluated).
        wait_until(
            lambda: not prometheus.alert_states().keys() & WATCHED,
            20,
            lambda: f"alerts active on a healthy cluster: {prometheus.alert_states()}",
        )

        secondary = next(i for i in range(len(HOSTS)) if i != primary)
        cluster.kill(secondary)
        wait_until(
            lambda: (
                {"ChatUnderReplicated", "ChatReplicaDown"}
                <= {name for name, s in prometheus.alert_states().items() if "firing" in s}
            ),
            30,
            lambda: f"under-replicated and replica-down never fired: {prometheus.alert_states()}",
        )

        for index in range(len(HOSTS)):  # every replica down: no primary, nothing scraped
            if cluster.is_running(index):
                cluster.kill(index)
        wait_until(
            lambda: "pending" in prometheus.alert_states().get("ChatNoPrimary", set()),
            20,
            lambda: f"no primary never went pending: {prometheus.alert_states()}",
        )
        cluster.start_all()
        wait_for_primary(cluster)
        wait_until(
            lambda: not prometheus.alert_states().keys() & WATCHED,
            30,
            lambda: f"the alerts never resolved: {prometheus.alert_states()}",
        )
    finally:
        prometheus.close()
