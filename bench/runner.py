"""Runs the phases on each backend, baselines first, and turns measurements into figures."""

from __future__ import annotations

import os
import statistics
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench import catchup, failover, latency, membership, path, scale, throughput, users
from bench.baselines import Rate, commit_rate, grpc_noop_rate
from bench.cluster import REPLICAS, BenchCluster
from bench.cpu import CLIENTS, DATABASE_SERVER, CpuMeter, mysql_server_pid
from bench.databases import Databases
from bench.results import Figure, Results, Target
from bench.sizes import Sizes
from bench.stats import percentile
from client.library import ChatClient

PHASES = ("throughput", "latency", "failover", "path", "catchup", "membership", "scale")
# A full run leaves out the scale and membership phases unless asked for (`--only scale`,
# `--only catchup,membership`): their 10^6-event logs take minutes per backend to write and
# catch up on. Smoke runs do everything.
DEFAULT_PHASES = ("throughput", "latency", "failover", "path", "catchup")
SETUP_TIMEOUT = 60.0
FAILOVER_TIMEOUT = 30.0
MB = 1e6

# The goals set for later work (docs/bench.md); measured and shown, not optimised for yet.
THROUGHPUT_TARGET = Target(">=", 1.0, "ratio")  # 32 senders vs single-row commits, MySQL
KILL_P50_TARGET = Target("<=", 100)
KILL_MAX_TARGET = Target("<=", 500)
STOP_MAX_TARGET = Target("<=", 1500)
CATCHUP_TARGET = Target(">=", 20_000)
# Sends while a new replica catches up, against the same senders just before it was added.
MEMBERSHIP_SEND_TARGET = Target(">=", 0.7, "ratio")
LATENCY_P50_TARGET = Target("<=", 5)
LATENCY_P99_TARGET = Target("<=", 25)
RSS_TARGET = Target("<=", 150)
# ms of CPU per acknowledged send at 32 senders, every process together (MySQL): a third of
# the 2.2 ms measured before issue 11's work (docs/bench.md).
CPU_PER_SEND_TARGET = Target("<=", 0.73)
SEND_P50_TARGET = Target("<=", 2)  # ms: one sender, sends one after another (MySQL)
SCALE_PAGE_TARGET = Target("<=", 5)  # ms: any history page
SCALE_PREFIX_TARGET = Target("<=", 2)  # ms: ListAccounts by a literal prefix
SCALE_HISTORY_TARGET = Target("<=", 60)  # s: a whole history
SCALE_DRAIN_TARGET = Target(">=", 30_000)  # messages/s: a Subscribe's backlog
SCALE_REPAIR_TARGET = Target("<=", 2000)  # ms: 5 divergent events taken back
SCALE_REPLAY_TARGET = {"sqlite": Target(">=", 50_000), "mysql": Target(">=", 25_000)}


@dataclass(frozen=True)
class Options:
    sizes: Sizes
    backends: tuple[str, ...]
    phases: frozenset[str]
    work_dir: Path
    mysql_url: str
    tag: str
    # The load's clients send over their Session stream (the library's default), or with a
    # unary call per send (--client-calls unary), to compare the two.
    session_stream: bool = True


def _rate_details(rate: Rate) -> dict[str, object]:
    return {
        "operations": rate.operations,
        "seconds": round(rate.seconds, 3),
        "each": rate.durations.as_dict(),
    }


def _mb(kb: int) -> float:
    return kb * 1024 / MB


class Runner:
    def __init__(self, options: Options, results: Results, say: Callable[[str], None]) -> None:
        self.options = options
        self.sizes = options.sizes
        self.results = results
        self.say = say
        self.failed = False
        # Something happened that the figures do not show (e.g. a leadership change nobody
        # caused); the replica logs are kept to look into it.
        self.anomalies: list[str] = []
        self._database_pid: int | None = None  # the MySQL server's, for its CPU time

    def run(self) -> None:
        for backend in self.options.backends:
            databases = Databases(
                backend, self.options.work_dir, self.options.mysql_url, self.options.tag
            )
            self._database_pid = (
                mysql_server_pid(self.options.mysql_url) if backend == "mysql" else None
            )
            try:
                with self._phase(backend, "commit baselines"):
                    self._commit_baselines(backend, databases)
                with self._phase(backend, "cluster"):
                    self._live_cluster(backend, databases)
                if "path" in self.options.phases:
                    with self._phase(backend, "critical path"):
                        self._critical_path(backend, databases)
                if "catchup" in self.options.phases:
                    with self._phase(backend, "catchup"):
                        self._catchup(backend, databases)
                if "membership" in self.options.phases:
                    with self._phase(backend, "membership"):
                        self._membership(backend, databases)
                if "scale" in self.options.phases:
                    with self._phase(backend, "scale"):
                        self._scale(backend, databases)
            finally:
                databases.cleanup()

    @contextmanager
    def _phase(self, backend: str, phase: str) -> Iterator[None]:
        began = time.monotonic()
        self.say(f"[{backend}] {phase} ...")
        try:
            yield
        except Exception as exc:
            self.failed = True
            first_line = next(iter(str(exc).splitlines()), "")
            self.results.errors.append(
                {
                    "backend": backend,
                    "phase": phase,
                    "error": f"{exc.__class__.__name__}: {first_line}",
                    "traceback": traceback.format_exc(),
                }
            )
            self.say(f"[{backend}] {phase} FAILED:\n{traceback.format_exc()}")
        else:
            self.say(f"[{backend}] {phase} done in {time.monotonic() - began:.1f}s")

    # -- baselines -----------------------------------------------------------------------

    def _commit_baselines(self, backend: str, databases: Databases) -> None:
        sizes = self.sizes
        batched = f"batched insert ({sizes.batch_rows} rows/commit)"
        for key, title, rows_per_commit in (
            ("commit_single", "single-row commit", 1),
            ("commit_batched", batched, sizes.batch_rows),
        ):
            engine = databases.migrated(key)
            meter = self._cpu_meter({})
            meter.start()
            try:
                rate = commit_rate(
                    engine,
                    rows_per_commit=rows_per_commit,
                    seconds=sizes.commit_seconds,
                    max_rows=max(sizes.commit_max_rows, rows_per_commit),
                )
            finally:
                engine.dispose()
            use = meter.use()
            self.results.add(
                _baseline(f"{key}.{backend}", title, backend, rate.per_second, "rows/s", rate)
            )
            self.say(f"[{backend}] {title}: {rate.per_second:,.0f} rows/s")
            if rows_per_commit == 1:
                per = use.per_operation_ms(rate.operations)
                self.results.add(
                    _baseline(
                        f"cpu_per_commit.{backend}",
                        "CPU per single-row commit (committer + database server)",
                        backend,
                        sum(per.values()),
                        "ms",
                        None,
                        {"per_process_ms": _rounded(per)},
                        _cpu_note(per),
                    )
                )

    # -- one cluster for the gRPC baseline, idle memory, throughput, latency, failover ---

    def _live_cluster(self, backend: str, databases: Databases) -> None:
        urls = [databases.url(f"live_{i}") for i in range(REPLICAS)]
        base_dir = self.options.work_dir / f"live-{backend}"
        with BenchCluster(base_dir, urls) as cluster:
            cluster.start_all()
            primary = cluster.wait_primary(SETUP_TIMEOUT)
            cluster.wait_in_sync(primary, SETUP_TIMEOUT)
            self._idle_rss(backend, cluster)
            rate = grpc_noop_rate(
                cluster.address(primary),
                seconds=self.sizes.grpc_seconds,
                max_calls=self.sizes.grpc_max_calls,
            )
            self.results.add(
                _baseline(
                    f"grpc_noop.{backend}",
                    "no-op gRPC call (health Check)",
                    backend,
                    rate.per_second,
                    "calls/s",
                    rate,
                )
            )
            self.say(f"[{backend}] no-op gRPC call: {rate.per_second:,.0f} calls/s")
            if not self.options.phases & {"throughput", "latency", "failover"}:
                return
            self._load_phases(backend, cluster)

    def _critical_path(self, backend: str, databases: Databases) -> None:
        """Sends one after another on a cluster whose replicas trace every step of a write
        (its own cluster: the tracing is not in the other phases' figures)."""
        urls = [databases.url(f"path_{i}") for i in range(REPLICAS)]
        base_dir = self.options.work_dir / f"path-{backend}"
        with BenchCluster(base_dir, urls, trace_spans=True) as cluster:
            cluster.start_all()
            primary = cluster.wait_primary(SETUP_TIMEOUT)
            cluster.wait_in_sync(primary, SETUP_TIMEOUT)
            users.register(cluster.addresses, ["path_sender", "path_recipient"])
            (client,) = users.logged_in_clients(
                cluster.addresses, ["path_sender"], session_stream=self.options.session_stream
            )
            try:
                run = path.run_path(
                    client,
                    "path_recipient",
                    self.sizes.path_sends,
                    [cluster.processes.spans_path(i) for i in range(REPLICAS)],
                    primary,
                )
            finally:
                client.close()
        if not run.traced:
            raise RuntimeError("no send's steps were found in the replicas' spans")
        grpc_figure = self.results.figures.get(f"grpc_noop.{backend}")
        call_ms = 1000 / grpc_figure.value if grpc_figure and grpc_figure.value > 0 else None
        spans = {
            title: {
                "p50_ms": round(percentile(values, 50), 3),
                "p90_ms": round(percentile(values, 90), 3),
            }
            for title, values in run.spans_ms.items()
        }
        shown = ", ".join(f"{title} {run.p50(title):.2f}" for title in run.spans_ms)
        self.results.compared(
            f"critical_path.{backend}",
            "send p50, 1 sender, one after another (critical path traced)",
            backend,
            percentile(run.call_ms, 50),
            "ms",
            f"grpc_noop.{backend}",
            baseline_value=call_ms,
            baseline_title="no-op gRPC call",
            baseline_unit="ms",
            target=SEND_P50_TARGET if backend == "mysql" else None,
            details={
                "sends": run.sends,
                "traced": run.traced,
                "call_p90_ms": round(percentile(run.call_ms, 90), 3),
                "spans": spans,
            },
            note=f"p50 of each span: {shown} ms",
        )
        self.say(
            f"[{backend}] critical path of a send (p50 {percentile(run.call_ms, 50):.2f} ms, "
            f"{run.traced}/{run.sends} traced):\n"
            + "\n".join(
                f"    {title:<32} p50 {s['p50_ms']:6.2f} ms  p90 {s['p90_ms']:6.2f} ms"
                for title, s in spans.items()
            )
        )

    def _idle_rss(self, backend: str, cluster: BenchCluster) -> None:
        rss = {i: cluster.rss_kb(i) or 0 for i in range(REPLICAS)}
        self.results.add(
            _baseline(
                f"replica_idle_rss.{backend}",
                "idle replica RSS (mean of 3)",
                backend,
                statistics.fmean(_mb(kb) for kb in rss.values()),
                "MB",
                None,
                {"replicas_mb": {str(i): round(_mb(kb), 1) for i, kb in rss.items()}},
                "VmRSS " + ", ".join(f"{_mb(kb):.1f}" for kb in rss.values()) + " MB",
            )
        )

    def _anomaly(self, backend: str, text: str) -> None:
        self.anomalies.append(f"{backend}: {text}")
        self.say(f"[{backend}] ANOMALY: {text}")

    def _check_same_primary(self, backend: str, cluster: BenchCluster, before: int) -> None:
        """No phase before the failover trials kills anything: the primary must not change."""
        primary = cluster.primary()
        epoch = None if primary is None else cluster.epoch_of(primary)
        if epoch != before:
            self._anomaly(
                backend,
                f"the primary changed without a fault: epoch {before} -> {epoch} "
                f"(primary now {primary})",
            )

    def _load_phases(self, backend: str, cluster: BenchCluster) -> None:
        sizes = self.sizes
        senders = [f"bench_s{i:02d}" for i in range(sizes.max_senders)]
        recipients = [f"bench_r{i}" for i in range(4)]
        latency_recipient = "bench_latency"
        failover_recipient = "bench_failover"
        users.register(
            cluster.addresses, [*senders, *recipients, latency_recipient, failover_recipient]
        )
        clients = users.logged_in_clients(
            cluster.addresses,
            [*senders, latency_recipient],
            session_stream=self.options.session_stream,
        )
        sender_clients, recipient_client = clients[:-1], clients[-1]
        primary = cluster.wait_primary(SETUP_TIMEOUT)
        epoch = cluster.epoch_of(primary)
        try:
            if "throughput" in self.options.phases:
                with self._phase(backend, "throughput"):
                    self._throughput(backend, cluster, primary, sender_clients, recipients)
            if "latency" in self.options.phases:
                with self._phase(backend, "latency"):
                    self._latency(backend, sender_clients, recipient_client, latency_recipient)
            self._check_same_primary(backend, cluster, epoch or 0)
            if "failover" in self.options.phases:
                with self._phase(backend, "failover"):
                    self._failover(backend, cluster, sender_clients[0], failover_recipient)
        finally:
            for client in clients:
                client.close()

    def _cpu_meter(self, replicas: dict[str, int]) -> CpuMeter:
        """A meter of the named replica processes, the database server (MySQL) and this
        process (the bench's clients, or the committer of a baseline)."""
        pids = dict(replicas)
        if self._database_pid is not None:
            pids[DATABASE_SERVER] = self._database_pid
        pids[CLIENTS] = os.getpid()
        return CpuMeter(pids)

    def _throughput(
        self,
        backend: str,
        cluster: BenchCluster,
        primary: int,
        clients: list[ChatClient],
        recipients: list[str],
    ) -> None:
        replicas = {"primary": cluster.pid(primary)}
        for index in range(REPLICAS):
            if index != primary:
                replicas[f"secondary {index}"] = cluster.pid(index)
        for count in self.sizes.sender_counts:
            meter = self._cpu_meter(replicas)
            meter.start()
            run = throughput.run_throughput(
                clients[:count], recipients, self.sizes.throughput_seconds, f"{count}-senders"
            )
            per = meter.use().per_operation_ms(run.completed)
            self._cpu_per_send(backend, count, run, per)
            plural = "sender" if count == 1 else "senders"
            self.results.compared(
                f"send_throughput.{backend}.senders_{count}",
                f"send throughput, {count} {plural}",
                backend,
                run.per_second,
                "msg/s",
                f"commit_single.{backend}",
                target=THROUGHPUT_TARGET if backend == "mysql" and count == 32 else None,
                details={
                    "senders": count,
                    "seconds": run.seconds,
                    "acknowledged": run.acknowledged,
                    "errors": run.errors,
                    "error_sample": run.error_sample,
                    "send_latency": run.send_latency.as_dict(),
                },
                note=f"send p50 {run.send_latency.p50_ms:.1f} ms, p99 "
                f"{run.send_latency.p99_ms:.1f} ms, {run.errors} errors",
            )
            self.say(
                f"[{backend}] {count} {plural}: {run.per_second:,.0f} msg/s "
                f"(send p50 {run.send_latency.p50_ms:.1f} ms, {run.errors} errors)"
            )

    def _cpu_per_send(
        self, backend: str, count: int, run: throughput.ThroughputRun, per: dict[str, float]
    ) -> None:
        plural = "sender" if count == 1 else "senders"
        self.results.compared(
            f"cpu_per_send.{backend}.senders_{count}",
            f"CPU per acknowledged send, {count} {plural} (all processes)",
            backend,
            sum(per.values()),
            "ms",
            f"cpu_per_commit.{backend}",
            target=CPU_PER_SEND_TARGET if backend == "mysql" and count == 32 else None,
            details={"per_process_ms": _rounded(per), "sends": run.completed},
            note=_cpu_note(per),
        )
        self.say(f"[{backend}] {count} {plural}: CPU per send {_cpu_note(per)}")

    def _latency(
        self,
        backend: str,
        senders: list[ChatClient],
        recipient_client: ChatClient,
        recipient: str,
    ) -> None:
        sizes = self.sizes
        run = latency.run_latency(
            senders[: sizes.latency_senders],
            recipient_client,
            recipient,
            rate=sizes.latency_rate,
            seconds=sizes.latency_seconds,
            label="latency",
        )
        grpc = self.results.figures.get(f"grpc_noop.{backend}")
        call_ms = 1000 / grpc.value if grpc is not None and grpc.value > 0 else None
        details = {
            "rate": run.rate,
            "seconds": run.seconds,
            "scheduled": run.scheduled,
            "skipped": run.skipped,
            "acknowledged": run.acknowledged,
            "received": run.received,
            "lost": run.lost,
            "errors": run.errors,
            "achieved_rate": round(run.achieved_rate, 1),
            "max_behind_schedule_ms": round(run.max_behind_schedule_ms, 3),
            "delivery": run.delivery.as_dict(),
            "send_latency": run.send_latency.as_dict(),
            "paced_sender_threads": len(senders[: sizes.latency_senders]),
        }
        rate = f"{sizes.latency_rate:g} msg/s"
        for name, value, target in (
            ("p50", run.delivery.p50_ms, LATENCY_P50_TARGET),
            ("p99", run.delivery.p99_ms, LATENCY_P99_TARGET),
        ):
            self.results.compared(
                f"delivery_latency_{name}.{backend}",
                f"delivery latency {name} at {rate}",
                backend,
                value,
                "ms",
                f"grpc_noop.{backend}",
                baseline_value=call_ms,
                baseline_title="no-op gRPC call",
                baseline_unit="ms",
                target=target,
                details=details,
                note=f"achieved {run.achieved_rate:.0f} msg/s, {run.skipped} skipped, "
                f"{run.lost} lost, send p50 {run.send_latency.p50_ms:.1f} ms",
            )
        self.say(
            f"[{backend}] delivery at {rate}: p50 {run.delivery.p50_ms:.1f} ms, "
            f"p99 {run.delivery.p99_ms:.1f} ms ({run.received}/{run.acknowledged} received)"
        )

    def _failover(
        self, backend: str, cluster: BenchCluster, client: ChatClient, recipient: str
    ) -> None:
        trials: dict[failover.FaultKind, list[failover.FailoverTrial]] = {
            "sigkill": [],
            "sigstop": [],
        }
        with failover.ContinuousSender(client, recipient, "failover") as sender:
            for kind, done in trials.items():
                for n in range(self.sizes.failover_trials):
                    trial = failover.run_trial(cluster, sender, kind, FAILOVER_TIMEOUT)
                    done.append(trial)
                    self.say(
                        f"[{backend}] {kind} trial {n + 1}: first ack after "
                        f"{trial.failover_ms:.0f} ms (election seen after "
                        f"{trial.election_ms or 0:.0f} ms)"
                    )
        steady = [
            t.steady_send_p50_ms
            for done in trials.values()
            for t in done
            if t.steady_send_p50_ms is not None
        ]
        self.results.add(
            _baseline(
                f"steady_send.{backend}",
                "send latency before the fault (p50)",
                backend,
                statistics.median(steady) if steady else 0.0,
                "ms",
                None,
                {"per_trial_ms": [round(s, 3) for s in steady]},
                "the failover client, 2 s before each fault",
            )
        )
        targets: dict[failover.FaultKind, tuple[Target | None, Target]] = {
            "sigkill": (KILL_P50_TARGET, KILL_MAX_TARGET),
            "sigstop": (None, STOP_MAX_TARGET),
        }
        for kind, done in trials.items():
            times = [t.failover_ms for t in done]
            elections = [t.election_ms for t in done if t.election_ms is not None]
            note = "trials " + ", ".join(f"{t:.0f}" for t in times) + " ms"
            if elections:
                note += f"; new primary seen p50 {percentile(elections, 50):.0f} ms"
            details = {
                "trials": [t.as_dict() for t in done],
                "client": {
                    "timeout_s": users.CLIENT_TIMEOUT,
                    "attempt_timeout_s": users.CLIENT_ATTEMPT_TIMEOUT,
                },
            }
            for name, value, target in (
                ("p50", percentile(times, 50), targets[kind][0]),
                ("max", max(times), targets[kind][1]),
            ):
                self.results.compared(
                    f"failover_{kind}_{name}.{backend}",
                    f"failover after {kind.upper()} ({name}, {len(times)} trials)",
                    backend,
                    value,
                    "ms",
                    f"steady_send.{backend}",
                    target=target,
                    details=details,
                    note=note,
                )

    # -- catch-up ------------------------------------------------------------------------

    def _catchup(self, backend: str, databases: Databases) -> None:
        wanted = catchup.scenarios(self.sizes)
        began = time.monotonic()
        urls = catchup.prepare(databases, wanted, self.sizes.seed_batch)
        self.say(f"[{backend}] catch-up logs written in {time.monotonic() - began:.1f}s")
        runs: list[catchup.CatchupRun] = []
        for scenario in wanted:
            timeout = 60 + scenario.missing / 200  # bounded even at 200 events/s
            run = catchup.run_catchup(
                databases,
                scenario,
                urls[scenario.name],
                self.options.work_dir / f"catchup-{backend}-{scenario.name}",
                timeout,
                lambda text: self.say(f"[{backend}] {text}"),
            )
            runs.append(run)
            self._catchup_figures(backend, run, runs[0])
            self.say(
                f"[{backend}] catch-up of {scenario.missing:,} of {scenario.log_size:,}: "
                f"{run.per_second:,.0f} events/s, peak RSS "
                f"{max(_mb(kb) for kb in run.peak_rss_kb.values()):.0f} MB"
            )

    def _catchup_figures(
        self, backend: str, run: catchup.CatchupRun, first: catchup.CatchupRun
    ) -> None:
        s = run.scenario
        details: dict[str, object] = {
            "log_size": s.log_size,
            "missing": s.missing,
            "lagging_replica": catchup.LAGGING,
            "primary": run.primary,
            "caught_up_events": run.caught_up_events,
            "seconds": round(run.seconds, 3),
            "launch_to_level_s": round(run.launch_to_level_s, 3),
            "extra_elections": run.extra_elections,
            "cpu_s": {str(i): round(cpu, 3) for i, cpu in run.cpu_s.items()},
            "lagging_cpu_ms_per_event": _round_or_none(run.lagging_cpu_ms_per_event, 4),
        }
        note = f"{run.seconds:.2f} s"
        if run.lagging_cpu_ms_per_event is not None:
            note += f", lagging replica CPU {run.lagging_cpu_ms_per_event * 1000:.0f} µs/event"
        if run.extra_elections:
            note += f"; {run.extra_elections} unprovoked election(s)"
            self._anomaly(
                backend,
                f"catch-up {s.name}: {run.extra_elections} election(s) with no fault injected",
            )
        if run is not first and first.per_second > 0:
            versus = run.per_second / first.per_second
            details[f"rate_vs_{first.scenario.name}"] = round(versus, 3)
            note += f"; {versus:.2f}x the rate with a {first.scenario.log_size:,} log"
        self.results.compared(
            f"catchup_rate.{backend}.{s.name}",
            f"catch-up, {s.missing:,} missing of {s.log_size:,}",
            backend,
            run.per_second,
            "events/s",
            f"commit_batched.{backend}",
            target=CATCHUP_TARGET,
            details=details,
            note=note,
        )
        peak = {i: _mb(kb) for i, kb in run.peak_rss_kb.items()}
        roles = {
            i: "primary" if i == run.primary else "lagging" if i == catchup.LAGGING else "secondary"
            for i in range(REPLICAS)
        }
        self.results.compared(
            f"catchup_peak_rss.{backend}.{s.name}",
            "peak replica RSS in that catch-up (max of 3)",
            backend,
            max(peak.values()),
            "MB",
            f"replica_idle_rss.{backend}",
            target=RSS_TARGET,
            details={
                "vm_hwm_mb": {str(i): round(mb, 1) for i, mb in peak.items()},
                "sampled_vm_rss_mb": {
                    str(i): round(_mb(kb), 1) for i, kb in run.sampled_peak_rss_kb.items()
                },
                "roles": {str(i): role for i, role in roles.items()},
            },
            note="VmHWM " + ", ".join(f"{roles[i]} {mb:.0f}" for i, mb in peak.items()) + " MB",
        )

    # -- membership ------------------------------------------------------------------------

    def _membership(self, backend: str, databases: Databases) -> None:
        sizes = self.sizes
        template = membership.LogTemplate(databases, sizes.seed_batch)
        try:
            for size in sorted(sizes.membership_sizes):
                run = membership.run_size(
                    databases,
                    template,
                    size,
                    senders=sizes.membership_senders,
                    window=sizes.membership_window_s,
                    base_dir=self.options.work_dir / f"membership-{backend}-{size}",
                    database_pid=self._database_pid,
                    say=lambda text: self.say(f"[{backend}] {text}"),
                )
                self._membership_figures(backend, run)
        finally:
            template.close()

    def _catchup_cpu_per_event(self, backend: str) -> float | None:
        """The restarted secondary's CPU per event in this run's first catch-up, if run."""
        for scenario in catchup.scenarios(self.sizes):
            figure = self.results.figures.get(f"catchup_rate.{backend}.{scenario.name}")
            if figure is not None:
                value = figure.details.get("lagging_cpu_ms_per_event")
                return value if isinstance(value, float) else None
        return None

    def _membership_figures(self, backend: str, run: membership.SizeRun) -> None:
        n = run.size
        # The restarted secondary's catch-up of the same run when there is one (its first
        # scenario: the whole log missing); else the batched-insert baseline, as it has.
        restarted = next(
            (
                f"catchup_rate.{backend}.{s.name}"
                for s in catchup.scenarios(self.sizes)
                if f"catchup_rate.{backend}.{s.name}" in self.results.figures
            ),
            f"commit_batched.{backend}",
        )
        sends = f"{self.sizes.membership_senders} senders"
        restarted_cpu = self._catchup_cpu_per_event(backend)
        idle_key = f"member_join_rate.{backend}.n_{n}"
        for key, join, baseline, what in (
            (idle_key, run.idle, restarted, "idle"),
            (
                f"member_join_rate_loaded.{backend}.n_{n}",
                run.loaded.join,
                idle_key,
                f"{sends} sending",
            ),
        ):
            details: dict[str, object] = {**join.as_dict(), "seed_s": round(run.seed_s, 3)}
            learner_cpu = join.learner_cpu_ms_per_event
            # CPU per event holds on a shared machine, where the rates move with the load.
            versus = learner_cpu / restarted_cpu if learner_cpu and restarted_cpu else None
            if versus is not None:
                details["learner_cpu_vs_restarted_secondary"] = round(versus, 3)
            note = _join_note(join, versus)
            if join.elections:
                note += f"; {join.elections} unprovoked election(s)"
                self._anomaly(
                    backend,
                    f"member join ({what}, {n:,}-event log): {join.elections} election(s) with "
                    "no fault injected",
                )
            self.results.compared(
                key,
                f"member add -> promotable learner, {n:,}-event log ({what})",
                backend,
                join.per_second,
                "events/s",
                baseline,
                target=CATCHUP_TARGET,
                details=details,
                note=note,
            )
        before, during = run.loaded.before, run.loaded.during
        before_key = f"member_send_before.{backend}.n_{n}"
        self.results.add(
            _baseline(
                before_key,
                f"send throughput just before member add ({sends}, {n:,}-event log)",
                backend,
                before.per_second,
                "msg/s",
                None,
                {
                    **_send_details(before),
                    "cpu_s": _rounded(run.loaded.cpu_before_s),
                },
                f"{before.seconds:.1f} s window; send p50 {before.send_latency.p50_ms:.1f} ms; "
                + membership.cpu_note(run.loaded.cpu_before_s, before.seconds),
            )
        )
        self.results.compared(
            f"member_send_during.{backend}.n_{n}",
            f"send throughput while that learner catches up ({sends})",
            backend,
            during.per_second,
            "msg/s",
            before_key,
            target=MEMBERSHIP_SEND_TARGET,
            details=_send_details(during),
            note=f"{during.seconds:.1f} s window; send p50 {during.send_latency.p50_ms:.1f} ms, "
            f"p99 {during.send_latency.p99_ms:.1f} ms, {during.errors} errors",
        )

    # -- scale -----------------------------------------------------------------------------

    def _scale(self, backend: str, databases: Databases) -> None:
        small, large = self.sizes.scale_sizes
        runs = [
            scale.run_size(
                databases,
                size,
                self.options.work_dir / f"scale-{backend}-{size}",
                lambda text: self.say(f"[{backend}] {text}"),
            )
            for size in (small, large)
        ]
        for run in runs:
            self._scale_figures(backend, run, runs[0])

    def _scale_figures(self, backend: str, run: scale.ScaleRun, small: scale.ScaleRun) -> None:
        """Each figure at the small size beside its same-run baseline; at the large size beside
        the same figure at the small size: the ratio is the growth ratio."""
        n = run.size
        noop = f"grpc_noop.{backend}"
        figure = _ScaleFigures(self.results, backend, run, small).record
        noop_ms = self.results.value(noop)
        noop_ms = 1000 / noop_ms if noop_ms else None
        figure(
            "replay_rate",
            "start-up replay of the whole log",
            run.replay_rate,
            "events/s",
            f"commit_batched.{backend}",
            target=SCALE_REPLAY_TARGET.get(backend),
            note=f"{run.replay_events:,} events in {run.replay_s:.2f} s, VmHWM "
            f"{run.replay_rss_mb:.0f} MB",
        )
        figure(
            "replay_rss",
            "replica peak RSS after that replay",
            run.replay_rss_mb,
            "MB",
            f"replica_idle_rss.{backend}",
            target=RSS_TARGET,
        )
        for what, title, target in (
            ("history_newest", "first history page (100), newest first", SCALE_PAGE_TARGET),
            ("history_oldest", "first history page (100), oldest first", SCALE_PAGE_TARGET),
            ("list_prefix", f"ListAccounts {scale.PREFIX!r} (10 matches)", SCALE_PREFIX_TARGET),
            ("list_substring", f"ListAccounts {scale.SUBSTRING!r} (a scan)", None),
            ("login", f"login with {n:,} unread (shows {run.unread_shown:,})", None),
        ):
            figure(what, title, run.ms[what], "ms", noop, noop_ms, target)
        figure(
            "history_all",
            "whole history read, page by page",
            run.history_s,
            "s",
            noop,
            noop_ms and noop_ms / 1000,
            SCALE_HISTORY_TARGET,
            note=f"{run.history_rate:,.0f} messages/s",
        )
        figure(
            "drain_rate",
            "Subscribe draining the whole backlog",
            run.drain_rate,
            "messages/s",
            f"commit_batched.{backend}",
            target=SCALE_DRAIN_TARGET,
        )
        figure(
            "repair",
            f"{scale.TAIL} divergent events taken back and truncated",
            run.repair_ms,
            "ms",
            noop,
            noop_ms,
            SCALE_REPAIR_TARGET,
            note=f"projections {run.repair_how}",
        )


@dataclass(frozen=True)
class _ScaleFigures:
    """Records the figures of one scale run (`run`) of the two, `small` being the first."""

    results: Results
    backend: str
    run: scale.ScaleRun
    small: scale.ScaleRun

    def record(
        self,
        what: str,
        title: str,
        value: float,
        unit: str,
        baseline: str,
        baseline_value: float | None = None,
        target: Target | None = None,
        note: str = "",
    ) -> None:
        """At the small size, beside `baseline` (or `baseline_value`, derived from it); at the
        large size, beside the same figure at the small size instead, with the growth noted."""
        n = self.run.size
        grows = self.run is not self.small
        key = f"scale_{what}.{self.backend}"
        if grows:
            baseline, baseline_value = f"{key}.n_{self.small.size}", None
            small_value = self.results.value(baseline)
            if small_value:
                note = (note + "; " if note else "") + f"growth {value / small_value:.2f}x"
        self.results.compared(
            f"{key}.n_{n}",
            f"{title}, {n:,} accounts + messages",
            self.backend,
            value,
            unit,
            baseline,
            baseline_value=baseline_value,
            baseline_title=None if grows or baseline_value is None else "a no-op gRPC call",
            baseline_unit=None if grows or baseline_value is None else unit,
            target=target,
            details={"accounts": n, "messages": n, "log_events": self.run.events},
            note=note,
        )


def _join_note(join: membership.JoinRun, cpu_vs_restarted: float | None) -> str:
    """e.g. "4.31 s: add 12 ms, first event 0.10 s, level 3.70 s, promotion wait 0.61 s; ..."."""

    def at(seconds: float | None) -> str:
        return "never" if seconds is None else f"{seconds:.2f} s"

    note = (
        f"{join.seconds:.2f} s: add {join.add_s * 1000:.0f} ms, first event "
        f"{at(join.first_event_s)}, level {at(join.level_s)}, promotion wait "
        f"{at(join.promotion_wait_s)}; {membership.cpu_note(join.cpu_s, join.seconds)}"
    )
    if join.learner_cpu_ms_per_event is not None:
        note += f"; learner CPU {join.learner_cpu_ms_per_event * 1000:.0f} µs/event"
        if cpu_vs_restarted is not None:
            note += f" ({cpu_vs_restarted:.2f}x a restarted secondary's)"
    note += (
        f"; {join.stream_restarts} stream restart(s), longest stall {join.longest_stall_s:.2f} s"
    )
    return note


def _send_details(run: throughput.ThroughputRun) -> dict[str, object]:
    return {
        "senders": run.senders,
        "seconds": round(run.seconds, 3),
        "acknowledged": run.acknowledged,
        "errors": run.errors,
        "error_sample": run.error_sample,
        "send_latency": run.send_latency.as_dict(),
    }


def _round_or_none(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def _rounded(per: dict[str, float]) -> dict[str, float]:
    return {name: round(ms, 4) for name, ms in per.items()}


def _cpu_note(per: dict[str, float]) -> str:
    """e.g. "primary 1.00, secondary 1 0.25, ..., bench clients 0.35 ms"."""
    if not per:
        return "no process could be measured"
    return ", ".join(f"{name} {ms:.2f}" for name, ms in per.items()) + " ms"


def _baseline(
    key: str,
    title: str,
    backend: str,
    value: float,
    unit: str,
    rate: Rate | None,
    details: dict[str, object] | None = None,
    note: str = "",
) -> Figure:
    if rate is not None and not note:
        each = rate.durations
        note = f"each p50 {each.p50_ms:.2f} ms, p99 {each.p99_ms:.2f} ms"
    return Figure(
        key=key,
        title=title,
        backend=backend,
        value=value,
        unit=unit,
        details={**(_rate_details(rate) if rate is not None else {}), **(details or {})},
        note=note,
    )
