"""The critical path of one send at 1 sender, as measured spans: the bench times each call,
the replicas (started with --trace-spans, replica/storage/spans.py) mark each step of the write, and
every timestamp is CLOCK_MONOTONIC, which all processes on this machine share.

A send's path goes through the secondary whose ack came last (acknowledgement waits for
every in-sync secondary): its streaming, store and ack spans are the ones shown."""

from __future__ import annotations

import bisect
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.stats import percentile
from client.library import ChatClient

# Marks that cover every seq up to theirs (the rest belong to one event).
_THROUGH = ("local_commit", "committed", "sent_to_", "acked_by_", "received_batch", "stored",
            "ack_queued")  # fmt: skip

# The primary streams a batch as soon as it is decided and commits it meanwhile: the local
# append/apply/commit span runs beside the five from "decided -> streamed" to "ack ->
# primary", and the commit point waits for the later of the two ("ready": the slowest ack or
# the local commit, whichever came last).
SPANS = (
    ("client -> primary", "call", "received"),
    ("wait for the writer", "received", "locked"),
    ("decide (reads)", "locked", "decided"),
    ("decided -> streamed", "decided", "sent"),
    ("stream -> secondary", "sent", "received_batch"),
    ("secondary stores and commits", "received_batch", "stored"),
    ("secondary queues its ack", "stored", "ack_queued"),
    ("ack -> primary", "ack_queued", "acked"),
    ("local append, apply, commit (beside)", "decided", "local_commit"),
    ("ack and local commit -> commit point", "ready", "committed"),
    ("commit point -> writer woken", "committed", "woken"),
    ("reply -> client", "woken", "returned"),
)


class _Marks:
    """One replica's marks: per-event ones by (name, seq); through-marks as time-ordered
    lists, so that "the first `stored` covering seq 41" is a search."""

    def __init__(self, path: Path) -> None:
        self.events: dict[tuple[str, int], int] = {}
        through: dict[str, list[tuple[int, int]]] = defaultdict(list)
        for line in path.read_text(encoding="ascii").splitlines():
            name, seq, ns = line.split()
            if name.startswith(_THROUGH):
                through[name].append((int(ns), int(seq)))
            else:
                self.events.setdefault((name, int(seq)), int(ns))
        # For each through-mark: times in order, and the running max of the seqs covered.
        self._times: dict[str, list[int]] = {}
        self._covered: dict[str, list[int]] = {}
        for name, marks in through.items():
            marks.sort()
            highest, covered = 0, []
            for _, seq in marks:
                highest = max(highest, seq)
                covered.append(highest)
            self._times[name] = [t for t, _ in marks]
            self._covered[name] = covered

    def first_covering(self, name: str, seq: int) -> int | None:
        covered = self._covered.get(name)
        if covered is None:
            return None
        i = bisect.bisect_left(covered, seq)
        return self._times[name][i] if i < len(covered) else None


@dataclass(frozen=True)
class PathRun:
    sends: int
    traced: int  # sends whose every step was found in the marks
    call_ms: list[float]  # each send's whole call
    spans_ms: dict[str, list[float]]  # span title -> one value per traced send

    def p50(self, title: str) -> float:
        return percentile(self.spans_ms[title], 50)


def run_path(
    client: ChatClient,
    recipient: str,
    sends: int,
    spans_files: Sequence[Path],
    primary: int,
    *,
    settle_timeout: float = 10.0,
) -> PathRun:
    """`sends` sends one after another, then their spans from the replicas' marks."""
    calls: list[tuple[int, int, int]] = []  # (seq, began, returned) in ns
    for n in range(sends):
        began = time.monotonic_ns()
        seq = client.send(recipient, f"critical path message {n}")
        calls.append((seq, began, time.monotonic_ns()))
    last_seq = calls[-1][0]
    secondaries = [i for i in range(len(spans_files)) if i != primary]
    marks = _wait_for_marks(spans_files, primary, secondaries, last_seq, settle_timeout)
    spans: dict[str, list[float]] = {title: [] for title, _, _ in SPANS}
    for seq, began, returned in calls:
        times = _times_of(seq, began, returned, marks, primary, secondaries)
        if times is None:
            continue
        for title, start, end in SPANS:
            spans[title].append((times[end] - times[start]) / 1e6)
    return PathRun(
        sends=sends,
        traced=len(spans[SPANS[0][0]]),
        call_ms=[(returned - began) / 1e6 for _, began, returned in calls],
        spans_ms=spans,
    )


def _wait_for_marks(
    files: Sequence[Path], primary: int, secondaries: list[int], last_seq: int, timeout: float
) -> dict[int, _Marks]:
    """The replicas write their marks every 0.1 s: read until the last send's are there."""
    deadline = time.monotonic() + timeout
    while True:
        marks = {i: _Marks(path) for i, path in enumerate(files) if path.exists()}
        if (
            primary in marks
            and ("woken", last_seq) in marks[primary].events
            and all(
                i in marks and marks[i].first_covering("ack_queued", last_seq) is not None
                for i in secondaries
            )
        ):
            return marks
        if time.monotonic() > deadline:
            return marks
        time.sleep(0.05)


def _times_of(
    seq: int,
    began: int,
    returned: int,
    marks: dict[int, _Marks],
    primary: int,
    secondaries: list[int],
) -> dict[str, int] | None:
    p = marks.get(primary)
    if p is None:
        return None
    times: dict[str, int | None] = {"call": began, "returned": returned}
    for name in ("received", "locked", "decided", "woken"):
        times[name] = p.events.get((name, seq))
    for name in ("local_commit", "committed"):
        times[name] = p.first_covering(name, seq)
    # The secondary whose ack reached the primary last is on the critical path.
    acked = {i: p.first_covering(f"acked_by_{i}", seq) for i in secondaries}
    known = {i: t for i, t in acked.items() if t is not None and i in marks}
    if not known:
        return None
    critical = max(known, key=lambda i: known[i])
    s = marks[critical]
    times["acked"] = known[critical]
    times["sent"] = p.first_covering(f"sent_to_{critical}", seq)
    for name in ("received_batch", "stored", "ack_queued"):
        times[name] = s.first_covering(name, seq)
    if any(t is None for t in times.values()):
        return None
    found = {name: t for name, t in times.items() if t is not None}
    found["ready"] = max(found["acked"], found["local_commit"])
    return found
