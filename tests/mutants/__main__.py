"""`make mutants`: apply each known-wrong change (catalog.py) to a copy of the repository and
check that the fast unit tests of the protocol and its shell, and the hypothesis model, catch
it.

For every mutant it runs the unit tests (tests/replica/protocol but the model -- the core, the
executor, its ports, commit tenures -- the peers' and the writer's streaming) and the model
(tests/replica/protocol/test_model.py, a fixed seed, up to --model-seconds), both whatever the
other found, and prints what caught it: the failing unit tests, and how many examples and
seconds the model took (not run for a mutant in code the model does not run: the writer's
SQL, the gRPC streams). Exits 1 if any mutant survived both, or if the model alone caught fewer
than 80% of those in code it runs. First it runs the model unmutated, with the same seed and
budget: a failure there would "catch" every mutant whose run lasts longer, so it stops the
run.

    python -m tests.mutants [--only NAME,...] [--model-seconds 240] [--jobs 2]
                            [--model-only | --unit-only]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from tests.mutants.catalog import MUTANTS, Mutant

REPO = Path(__file__).resolve().parents[2]
# (Not the catalog's own test: a mutated copy no longer matches its mutant, so it would
# "catch" every one.)
MODEL_TEST = "tests/replica/protocol/test_model.py"
UNIT_TESTS = (
    "tests/replica/protocol",
    "tests/replica/test_peers.py",
    "tests/replica/test_stream_before_commit.py",
    "tests/properties/test_request_ids.py",
    "tests/replica/test_storage_watch.py",
    "--ignore",
    MODEL_TEST,
    "--ignore",
    "tests/replica/protocol/test_mutant_catalog.py",
)
MODEL_SHARE = 0.8  # of the mutants, the model alone must catch at least this share
SEED = "20261201"


@dataclass
class Verdict:
    mutant: Mutant
    unit_failures: list[str]
    model_caught: bool
    model_examples: int | None
    model_seconds: float
    model_message: str

    @property
    def caught(self) -> bool:
        return bool(self.unit_failures) or self.model_caught


def tracked_files() -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return [line for line in out.splitlines() if line and (REPO / line).is_file()]


def snapshot(into: Path) -> None:
    """The repository's files as they are now (edits made during the run do not leak in)."""
    for name in tracked_files():
        target = into / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, target)


def check_catalog(base: Path, mutants: list[Mutant]) -> None:
    """Every mutant still applies and its code still compiles -- checked before a run that
    takes most of an hour, not in the middle of it."""
    for mutant in mutants:
        try:
            mutant.apply(base)
        except ValueError as exc:
            raise SystemExit(str(exc)) from exc


def mutated_copy(base: Path, mutant: Mutant, into: Path) -> None:
    shutil.copytree(base, into, dirs_exist_ok=True)
    for file, text in mutant.apply(base).items():
        (into / file).write_text(text)


def pytest(cwd: Path, args: list[str], timeout: float) -> tuple[int | None, str, float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHAT_")}
    env["CHAT_MODEL_EXAMPLES"] = "1000000"
    env["CHAT_MODEL_SHRINK"] = "0"  # found is what counts; shrinking could outlast the budget
    started = time.monotonic()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as expired:
        output = expired.stdout or ""
        text = output.decode() if isinstance(output, bytes) else output
        return None, text, time.monotonic() - started
    return done.returncode, done.stdout + done.stderr, time.monotonic() - started


def model_args() -> list[str]:
    return [
        "-x",
        "--timeout=0",
        f"--hypothesis-seed={SEED}",
        "--hypothesis-show-statistics",
        MODEL_TEST,
    ]


def check_model_clean(base: Path, model_seconds: float) -> None:
    """The model, unmutated, with the seed and budget each mutant gets: if it fails, every
    mutant whose run lasts longer would be "caught" by that failure, not by its own change."""
    code, output, _ = pytest(base, model_args(), model_seconds)
    if code not in (0, None):
        print(output[-6000:])
        raise SystemExit(
            "the model fails without any mutant (seed "
            f"{SEED}, {model_seconds:.0f}s): fix it first -- its verdicts would be void"
        )


def judge(
    base: Path, mutant: Mutant, model_seconds: float, unit: bool = True, model: bool = True
) -> Verdict:
    with tempfile.TemporaryDirectory(prefix=f"mutant-{mutant.name}-") as tmp:
        root = Path(tmp)
        mutated_copy(base, mutant, root)
        unit_failures: list[str] = []
        if unit:
            code, output, _ = pytest(root, ["--timeout=120", *UNIT_TESTS], 180)
            if code not in (0, 1):
                # A mutant that breaks collection or times out tells nothing about the tests.
                raise SystemExit(f"mutant {mutant.name}: the unit tests did not run (exit {code})")
            unit_failures = re.findall(r"^FAILED (\S+)", output, re.M)
        if not model or mutant.beyond_model:
            verdict = Verdict(mutant, unit_failures, False, None, 0.0, "")
            caught = "caught" if verdict.caught else "SURVIVED"
            print(f"{mutant.name}: {caught} ({len(unit_failures)} unit failures)", flush=True)
            return verdict
        code, output, seconds = pytest(root, model_args(), model_seconds)
        examples = None
        found = re.search(r"during generate phase.*?(\d+) passing", output, re.S)
        if found:  # the examples that passed before the first failing one, and that one
            examples = int(found.group(1)) + 1
        message = ""
        if code not in (0, 1, None):
            raise SystemExit(f"mutant {mutant.name}: the model did not run (exit {code})")
        if code == 1:
            errors = [
                e
                for e in re.findall(r"^E\s+(\S.*)$", output, re.M)
                if "Violation" in e or "Error" in e
            ]
            message = errors[-1] if errors else output.strip().splitlines()[-1]
        verdict = Verdict(mutant, unit_failures, code == 1, examples, seconds, message)
        caught = "caught" if verdict.caught else "SURVIVED"
        print(
            f"{mutant.name}: {caught} ({len(unit_failures)} unit failures, model "
            f"{'caught' if verdict.model_caught else 'missed'} in {seconds:.0f}s)",
            flush=True,
        )
        return verdict


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.mutants", description=__doc__)
    parser.add_argument("--only", help="comma-separated mutant names")
    parser.add_argument("--model-seconds", type=float, default=240.0)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument(
        "--model-only",
        action="store_true",
        help="run only the model on each mutant (what it alone catches; no verdict on the whole)",
    )
    parser.add_argument(
        "--unit-only",
        action="store_true",
        help="run only the unit tests on each mutant (no verdict on the model's share)",
    )
    args = parser.parse_args()
    if args.model_only and args.unit_only:
        parser.error("--model-only and --unit-only exclude each other")
    mutants = list(MUTANTS)
    if args.only:
        wanted = set(args.only.split(","))
        unknown = wanted - {m.name for m in mutants}
        if unknown:
            parser.error(f"unknown mutants: {', '.join(sorted(unknown))}")
        mutants = [m for m in mutants if m.name in wanted]
    with tempfile.TemporaryDirectory(prefix="mutants-base-") as tmp:
        base = Path(tmp)
        snapshot(base)
        check_catalog(base, mutants)
        if not args.model_only:
            code, output, _ = pytest(base, ["--timeout=120", *UNIT_TESTS], 180)
            if code != 0:
                print(output)
                raise SystemExit("the unit tests fail without any mutant: fix them first")
        if not args.unit_only:
            check_model_clean(base, args.model_seconds)
        with ThreadPoolExecutor(args.jobs) as pool:
            verdicts = list(
                pool.map(
                    lambda m: judge(
                        base,
                        m,
                        args.model_seconds,
                        unit=not args.model_only,
                        model=not args.unit_only,
                    ),
                    mutants,
                )
            )
    print(f"\n{'mutant':30} {'where':6} {'unit tests':12} {'model':28}  what")
    for v in verdicts:
        unit = f"{len(v.unit_failures)} failed" if v.unit_failures else "passed"
        if args.unit_only or v.mutant.beyond_model:
            model = "not run" if args.unit_only else "beyond the model"
        elif v.model_caught:
            examples = "?" if v.model_examples is None else str(v.model_examples)
            model = f"caught: {examples} ex, {v.model_seconds:.0f}s"
        else:
            model = f"missed in {v.model_seconds:.0f}s"
        where = "shell" if v.mutant.shell else "core"
        print(f"{v.mutant.name:30} {where:6} {unit:12} {model:28}  {v.mutant.why}")
        for failure in v.unit_failures:
            print(f"{'':30}   unit: {failure.split('::', 1)[-1]}")
        if v.model_message:
            print(f"{'':30}   model: {v.model_message[:150]}")
    survivors = [v.mutant.name for v in verdicts if not v.caught]
    # (Mutants in code the model does not run count neither way.)
    reachable = [v for v in verdicts if not v.mutant.beyond_model]
    by_model = sum(1 for v in reachable if v.model_caught)
    shell = [v for v in verdicts if v.mutant.shell]
    print(
        f"\n{len(verdicts) - len(survivors)} of {len(verdicts)} mutants caught"
        f" ({len(shell) - sum(1 for v in shell if not v.caught)} of {len(shell)} in the shell);"
        + (
            " the model was not run"
            if args.unit_only
            else f" the model alone caught {by_model} of the {len(reachable)} in code it runs"
            f" ({by_model / max(1, len(reachable)):.0%})"
        )
        + (f"; SURVIVED: {', '.join(survivors)}" if survivors else "")
    )
    if args.model_only:
        return 0
    if args.unit_only:
        return 1 if any(not v.unit_failures for v in verdicts) else 0
    if survivors:
        return 1
    return 0 if args.only or by_model >= MODEL_SHARE * len(reachable) else 1


if __name__ == "__main__":
    sys.exit(main())
