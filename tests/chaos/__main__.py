"""`python -m tests.chaos --rounds 100 --backend mysql` (what `make chaos` runs).

On test hosts (root; see testsupport/netns.py), with the network faults:
`python -m tests.chaos --hosts netns --min-insync 2 --faults
partition_primary,isolate_primary,partition_secondary,partition_ring,one_way,flaky_link,kill_one,pause_primary`

Membership faults run only when named: `python -m tests.chaos --backend sqlite --faults
add_replica,remove_replica,replace_replica,kill_one,pause_primary` (replicas join, leave and
are replaced through the Admin API, keeping 2 to 5 voters; on test hosts a new replica takes a
host no member holds, of six).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from tests.chaos.faults import FAULTS, MEMBERSHIP_FAULTS, faults_for
from tests.chaos.runner import run_chaos


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__)
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--backend", choices=["sqlite", "mysql"], default="mysql")
    parser.add_argument("--seed", type=int, help="replay a run (printed in every report)")
    parser.add_argument(
        "--faults",
        help="comma-separated subset of: "
        + ", ".join(f.name for f in FAULTS)
        + " (default: every one that applies, but the membership faults: "
        + ", ".join(MEMBERSHIP_FAULTS)
        + ")",
    )
    parser.add_argument("--schedule", choices=["random", "cycle"], default="random")
    parser.add_argument("--senders", type=int, default=4)
    parser.add_argument(
        "--hosts",
        choices=["loopback", "netns"],
        default="loopback",
        help="replicas on 127.0.0.11-13, or each on a test host (network namespace) of its own",
    )
    parser.add_argument("--min-insync", type=int, choices=[1, 2, 3], default=1)
    parser.add_argument(
        "--overlap",
        type=float,
        default=0.25,
        help="share of rounds after which the next fault comes before the replicas are back"
        " in sync (default 0.25)",
    )
    parser.add_argument("--json", type=Path, help="also write the report here")
    parser.add_argument("--keep", action="store_true", help="keep replica logs and data")
    args = parser.parse_args(argv)
    fault_names = args.faults.split(",") if args.faults else None
    try:
        faults_for(
            args.backend, fault_names, network=args.hosts == "netns", min_insync=args.min_insync
        )
    except ValueError as exc:
        parser.error(str(exc))
    base = Path(tempfile.mkdtemp(prefix="chat-chaos-"))
    report = run_chaos(
        base / "cluster",
        rounds=args.rounds,
        backend=args.backend,
        seed=args.seed,
        fault_names=fault_names,
        schedule=args.schedule,
        senders=args.senders,
        hosts=args.hosts,
        min_insync=args.min_insync,
        overlap=args.overlap,
        progress=lambda line: print(line, flush=True),
    )
    print(report.summary())
    if args.json:
        args.json.write_text(report.to_json())
    if args.keep or not report.ok:
        print(f"replica logs and data: {base}")
    else:
        import shutil

        shutil.rmtree(base, ignore_errors=True)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
