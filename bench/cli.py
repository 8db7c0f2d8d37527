"""python -m bench [--smoke] [--backend sqlite|mysql|both] [--only PHASE[,PHASE]] ...

Prints a table of every figure beside its same-run baseline and target, and writes
bench/results/latest.json and a timestamped copy (smoke runs: smoke-latest.json, ...)."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import secrets
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

from sqlalchemy.engine import make_url

from bench.cluster import SETTINGS
from bench.databases import BACKENDS, mysql_version
from bench.machine import REPO_ROOT, load_average, machine_info
from bench.report import format_table, write_json
from bench.results import Results
from bench.runner import DEFAULT_PHASES, PHASES, Options, Runner
from bench.sizes import FULL, SMOKE

DEFAULT_MYSQL_URL = "mysql+mysqlconnector://root@127.0.0.1:3306"
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks the suite runs")
    parser.add_argument("--backend", choices=[*BACKENDS, "both"], default="both")
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="PHASE",
        help=f"run only these phases (repeat or comma-separate): {', '.join(PHASES)}; "
        "the baselines always run; without it: all but membership and scale (smoke runs: all)",
    )
    parser.add_argument(
        "--mysql-url",
        default=os.environ.get("CHAT_BENCH_MYSQL_URL", DEFAULT_MYSQL_URL),
        help="MySQL/MariaDB server URL without a database (loopback only)",
    )
    parser.add_argument("--output-dir", type=Path, default=REPO_ROOT / "bench" / "results")
    parser.add_argument(
        "--work-dir", type=Path, default=None, help="replica data and logs (default: a temp dir)"
    )
    parser.add_argument(
        "--keep-work-dir", action="store_true", help="keep replica logs (always kept on failure)"
    )
    parser.add_argument(
        "--catchup-missing",
        type=int,
        metavar="N",
        help="events the lagging replica misses (default 100,000; smoke 300)",
    )
    parser.add_argument(
        "--scale-sizes",
        metavar="SMALL,LARGE",
        help="accounts and messages of the scale phase's two datasets (default 100000,1000000)",
    )
    parser.add_argument(
        "--membership-sizes",
        metavar="N[,N...]",
        help="events in the log when the membership phase adds a replica (default 100000,1000000)",
    )
    parser.add_argument(
        "--client-calls",
        choices=("session", "unary"),
        default="session",
        help="how the load's clients send: over their Session stream (the client library's "
        "default) or a unary call per send",
    )
    parser.add_argument("--table", type=Path, metavar="JSON", help="print a saved run's table")
    parser.add_argument("--markdown", action="store_true", help="with --table: as Markdown")
    args = parser.parse_args(argv)
    phases = {p.strip() for value in args.only for p in value.split(",") if p.strip()}
    unknown = phases - set(PHASES)
    if unknown:
        parser.error(f"unknown phase(s) {', '.join(sorted(unknown))}; known: {', '.join(PHASES)}")
    args.phases = frozenset(phases or (PHASES if args.smoke else DEFAULT_PHASES))
    host = make_url(args.mysql_url).host or "localhost"
    if host not in LOOPBACK_HOSTS:
        parser.error(f"--mysql-url must point at a loopback address, not {host!r}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.table is not None:
        print(format_table(json.loads(args.table.read_text()), markdown=args.markdown))
        return 0
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    backends = tuple(BACKENDS) if args.backend == "both" else (args.backend,)
    if "mysql" in backends:
        try:
            mysql_version(args.mysql_url)
        except Exception as exc:  # any driver error: the server is not there
            print(
                f"MySQL at {args.mysql_url} is not reachable ({exc.__class__.__name__}: {exc}); "
                "start it or use --backend sqlite",
                file=sys.stderr,
            )
            return 2
    sizes = SMOKE if args.smoke else FULL
    if args.catchup_missing is not None:
        if args.catchup_missing < 10:
            print("--catchup-missing must be at least 10", file=sys.stderr)
            return 2
        sizes = replace(sizes, catchup_missing=args.catchup_missing)
    if args.scale_sizes:
        try:
            small, large = (int(v) for v in args.scale_sizes.split(","))
        except ValueError:
            print("--scale-sizes takes two numbers: SMALL,LARGE", file=sys.stderr)
            return 2
        if not 200 <= small < large:
            print("--scale-sizes needs 200 <= SMALL < LARGE", file=sys.stderr)
            return 2
        sizes = replace(sizes, scale_sizes=(small, large))
    if args.membership_sizes:
        try:
            membership_sizes = tuple(int(v) for v in args.membership_sizes.split(","))
        except ValueError:
            print("--membership-sizes takes numbers: N[,N...]", file=sys.stderr)
            return 2
        if not membership_sizes or min(membership_sizes) < 10:
            print("--membership-sizes needs sizes of at least 10", file=sys.stderr)
            return 2
        sizes = replace(sizes, membership_sizes=membership_sizes)
    work_dir = args.work_dir or Path(tempfile.mkdtemp(prefix="bench-"))
    work_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    started_at = dt.datetime.now(dt.UTC)

    def say(text: str) -> None:
        print(f"{time.monotonic() - started:7.1f}s {text}", file=sys.stderr, flush=True)

    results = Results()
    results.meta = {
        "mode": "smoke" if args.smoke else "full",
        "argv": sys.argv[1:] if argv is None else argv,
        "backends": list(backends),
        "phases": sorted(args.phases),
        "started_at": started_at.isoformat(timespec="seconds"),
        "load_average_at_start": load_average(),
        "machine": machine_info(args.mysql_url if "mysql" in backends else None),
        "sizes": asdict(sizes),
        "cluster_settings": SETTINGS,
        "client_calls": args.client_calls,
    }
    options = Options(
        sizes=sizes,
        backends=backends,
        phases=args.phases,
        work_dir=work_dir,
        mysql_url=args.mysql_url,
        tag=secrets.token_hex(3),
        session_stream=args.client_calls == "session",
    )
    runner = Runner(options, results, say)
    try:
        runner.run()
    finally:
        keep = args.keep_work_dir or runner.failed or bool(runner.anomalies)
        if keep:
            say(f"replica logs kept in {work_dir}")
        elif args.work_dir is None:
            shutil.rmtree(work_dir, ignore_errors=True)
    results.meta["anomalies"] = runner.anomalies
    results.meta["duration_s"] = round(time.monotonic() - started, 1)
    results.meta["load_average_at_end"] = load_average()
    document = results.as_dict()
    print(format_table(document))
    stamp = started_at.strftime("%Y%m%dT%H%M%SZ")
    path = write_json(document, args.output_dir, stamp, "smoke-" if args.smoke else "")
    say(f"wrote {path} and {path.with_name(path.name.split(stamp)[0] + 'latest.json')}")
    return 1 if runner.failed else 0
