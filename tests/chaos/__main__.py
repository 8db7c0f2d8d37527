"""`python -m tests.chaos --rounds 100 --backend mysql` (what `make chaos` runs)."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from tests.chaos.faults import FAULTS
from tests.chaos.runner import run_chaos


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__)
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--backend", choices=["sqlite", "mysql"], default="mysql")
    parser.add_argument("--seed", type=int, help="replay a run (printed in every report)")
    parser.add_argument(
        "--faults",
        help="comma-separated subset of: " + ", ".join(f.name for f in FAULTS),
    )
    parser.add_argument("--schedule", choices=["random", "cycle"], default="random")
    parser.add_argument("--senders", type=int, default=4)
    parser.add_argument("--json", type=Path, help="also write the report here")
    parser.add_argument("--keep", action="store_true", help="keep replica logs and data")
    args = parser.parse_args(argv)
    base = Path(tempfile.mkdtemp(prefix="chat-chaos-"))
    report = run_chaos(
        base / "cluster",
        rounds=args.rounds,
        backend=args.backend,
        seed=args.seed,
        fault_names=args.faults.split(",") if args.faults else None,
        schedule=args.schedule,
        senders=args.senders,
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
