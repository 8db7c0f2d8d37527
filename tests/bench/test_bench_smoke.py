"""The benchmark suite: its fast log writer makes what applying the events makes, and a smoke
run (`python -m bench --smoke`) reports every figure with sane types. No timing is asserted:
the figures are measurements, not pass/fail criteria."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

import eventlog
import projections
from bench.databases import Databases
from bench.seed import LogSeeder
from bench.sizes import SMOKE
from tests.conftest import MYSQL_SERVER_URL, DatabaseFactory
from testsupport.databases import iter_table_rows
from testsupport.harness import REPO_ROOT

SMOKE_TIMEOUT = 300
MEMBERSHIP_SIZES = SMOKE.membership_sizes


def _state(engine: sa.Engine) -> tuple[list[tuple[Any, ...]], list[tuple[str, list[Any]]]]:
    with engine.connect() as conn:
        log = [tuple(r) for r in conn.execute(sa.select(eventlog.events).order_by("seq"))]
        return log, list(iter_table_rows(conn))


def test_seeded_log_is_what_applying_its_events_makes(databases: DatabaseFactory) -> None:
    seeded = databases.engine()
    LogSeeder(seeded, batch=7).extend_to(40)
    with seeded.connect() as conn:
        events = eventlog.read_events(conn, 0, 1000)
    applied = databases.engine()
    with applied.begin() as conn:
        eventlog.append_events(conn, events)
        projections.apply_events(conn, events)
    assert len(events) == 40
    assert _state(seeded) == _state(applied)


def test_copied_database_holds_the_same_log(backend: str, tmp_path: Path) -> None:
    databases = Databases(backend, tmp_path, MYSQL_SERVER_URL, "t" + tmp_path.name[-6:])
    try:
        source = databases.migrated("source")
        seeder = LogSeeder(source, batch=10)
        seeder.extend_to(25)
        copy = databases.reader(databases.copy(source, "copy"))
        assert _state(copy) == _state(source)
        seeder.extend_to(30)  # the source still takes writes after a copy
        assert len(_state(source)[0]) == 30
    finally:
        databases.cleanup()


def _expected_figures(backend: str) -> list[str]:
    keys = [
        f"commit_single.{backend}",
        f"commit_batched.{backend}",
        f"grpc_noop.{backend}",
        f"replica_idle_rss.{backend}",
        f"steady_send.{backend}",
        f"delivery_latency_p50.{backend}",
        f"delivery_latency_p99.{backend}",
    ]
    keys += [f"send_throughput.{backend}.senders_{n}" for n in (1, 8, 32)]
    keys += [f"cpu_per_commit.{backend}", f"critical_path.{backend}"]
    keys += [f"cpu_per_send.{backend}.senders_{n}" for n in (1, 8, 32)]
    keys += [
        f"failover_{kind}_{stat}.{backend}"
        for kind in ("sigkill", "sigstop")
        for stat in ("p50", "max")
    ]
    keys += [
        f"catchup_{what}.{backend}.log_{multiple}x"
        for what in ("rate", "peak_rss")
        for multiple in (1, 3)
    ]
    keys += [
        f"scale_{what}.{backend}.n_{n}"
        for what in (
            "replay_rate",
            "replay_rss",
            "history_newest",
            "history_oldest",
            "list_prefix",
            "list_substring",
            "login",
            "history_all",
            "drain_rate",
            "repair",
        )
        for n in (200, 1000)
    ]
    keys += [
        f"member_{what}.{backend}.n_{n}"
        for what in ("join_rate", "join_rate_loaded", "send_before", "send_during")
        for n in MEMBERSHIP_SIZES
    ]
    return keys


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@pytest.mark.slow
def test_smoke_run_reports_every_figure(backend: str, tmp_path: Path) -> None:
    output = tmp_path / "results"
    command = [
        sys.executable,
        "-m",
        "bench",
        "--smoke",
        "--backend",
        backend,
        "--output-dir",
        str(output),
        "--work-dir",
        str(tmp_path / "work"),
        "--mysql-url",
        MYSQL_SERVER_URL,
    ]
    done = subprocess.run(
        command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=SMOKE_TIMEOUT
    )
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr[-6000:]}"
    written = sorted(p.name for p in output.iterdir())
    assert "smoke-latest.json" in written and len(written) == 2, written
    document = json.loads((output / "smoke-latest.json").read_text())
    assert document["errors"] == []
    assert document["meta"]["mode"] == "smoke"
    assert document["meta"]["machine"]["nproc"] >= 1
    figures = document["figures"]
    missing = [key for key in _expected_figures(backend) if key not in figures]
    assert not missing, f"figures missing: {missing}"
    for key, figure in figures.items():
        assert figure["backend"] == backend, key
        assert isinstance(figure["title"], str) and figure["title"] in done.stdout, key
        assert isinstance(figure["unit"], str) and figure["unit"], key
        assert _is_number(figure["value"]) and figure["value"] >= 0, (key, figure["value"])
        assert isinstance(figure["details"], dict), key
        if figure["baseline"] is not None:
            assert figure["baseline"]["key"] in figures, key
            assert _is_number(figure["ratio"]), (key, figure["ratio"])
        if figure["target"] is not None:
            assert isinstance(figure["passed"], bool), key
    for key in _expected_figures(backend):
        if key.startswith(
            (
                "send_throughput",
                "cpu_per_send",
                "delivery",
                "failover",
                "catchup",
                "scale",
                "member_join",
                "member_send_during",
            )
        ):
            assert figures[key]["baseline"] is not None, key
    # Every replica's CPU is in the per-send figure, and it adds up.
    for n in (1, 8, 32):
        cpu = figures[f"cpu_per_send.{backend}.senders_{n}"]
        parts = cpu["details"]["per_process_ms"]
        assert {"primary", "bench clients"} <= set(parts), parts
        assert sum(1 for name in parts if name.startswith("secondary")) == 2, parts
        assert cpu["value"] == pytest.approx(sum(parts.values()), rel=1e-3)
    # Every traced send has every span of its critical path.
    traced = figures[f"critical_path.{backend}"]["details"]
    assert traced["traced"] == traced["sends"] > 0, traced
    assert len(traced["spans"]) == 12 and all(s["p50_ms"] >= 0 for s in traced["spans"].values())
    # Each new replica was promoted (accepted once it held the whole seeded log), and the
    # senders were acknowledged while it caught up.
    for n in MEMBERSHIP_SIZES:
        for what in ("join_rate", "join_rate_loaded"):
            join = figures[f"member_{what}.{backend}.n_{n}"]["details"]
            assert join["events"] >= n and join["level_s"] is not None, join
            assert join["promotion_attempts"] >= 1 and "learner" in join["cpu_s"], join
        assert figures[f"member_send_during.{backend}.n_{n}"]["details"]["acknowledged"] > 0
    # The repair took the tail back from undo information, not by a rebuild.
    for n in (200, 1000):
        assert "projections undone" in figures[f"scale_repair.{backend}.n_{n}"]["note"]
