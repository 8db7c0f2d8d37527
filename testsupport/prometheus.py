"""Prometheus and promtool for the tests of deploy/prometheus: the binaries `make
prometheus-tools` unpacks under .venv, else those on PATH; and a Prometheus server of a test's
own (loopback, its own port and data directory), stopped with the test."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from testsupport.harness import free_port, wait_until

REPO = Path(__file__).resolve().parents[1]
UNPACKED = REPO / ".venv" / "prometheus" / "usr" / "bin"


def tool(name: str) -> str | None:
    """The path of `prometheus` or `promtool`, or None where there is none."""
    unpacked = UNPACKED / name
    return str(unpacked) if unpacked.is_file() else shutil.which(name)


class PrometheusServer:
    """`prometheus` scraping `targets` (HOST:PORT of /metrics) every second as the job
    "chat-replicas", evaluating `rules` (a rule file) every second."""

    def __init__(self, binary: str, base_dir: Path, targets: list[str], rules: Path) -> None:
        self.base_dir = base_dir
        self.port = free_port()
        base_dir.mkdir(parents=True, exist_ok=True)
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(rules)],
            "scrape_configs": [
                {"job_name": "chat-replicas", "static_configs": [{"targets": targets}]}
            ],
        }
        (base_dir / "prometheus.yml").write_text(yaml.safe_dump(config))
        log = open(base_dir / "prometheus.log", "wb")  # noqa: SIM115 -- the child holds it
        self.process = subprocess.Popen(
            [
                binary,
                f"--config.file={base_dir / 'prometheus.yml'}",
                f"--storage.tsdb.path={base_dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        wait_until(self._ready, 60, lambda: f"prometheus never got ready: {self.log_tail()}")

    def _ready(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(
                f"prometheus exited with {self.process.returncode}: {self.log_tail()}"
            )
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2):
                return True
        except OSError:
            return False

    def log_tail(self) -> str:
        return (self.base_dir / "prometheus.log").read_text()[-3000:]

    def api(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}{query}"
        with urllib.request.urlopen(url, timeout=5) as reply:
            body = json.load(reply)
        assert body["status"] == "success", body
        return body["data"]

    def alert_states(self) -> dict[str, set[str]]:
        """Each active alert's name: the states of its instances (pending, firing)."""
        states: dict[str, set[str]] = {}
        for alert in self.api("alerts")["alerts"]:
            states.setdefault(alert["labels"]["alertname"], set()).add(alert["state"])
        return states

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
