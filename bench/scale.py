"""Scale: what each user-facing call and each recovery step costs when the database holds N
accounts and N messages, at two sizes -- the growth ratio (large-size cost / small-size cost)
is about 1 for a path that costs what it returns, and about 10 for one that reads what is
stored.

Per size, one database gets a log of 2N+2 events written straight into it (bench.seed's way:
no projection rows), then:
- one replica process starts on it and replays the whole log into its projections before it
  serves (health NOT_SERVING meanwhile): its own log line gives the replay rate;
- through the client library, as a user would: login of an account with N unread messages,
  the first history page newest first and oldest first, ListAccounts by a literal prefix
  (10 matches at every size) and by a substring (a bounded scan of every name), the whole
  N-message history read page by page, and a Subscribe draining the N-message backlog;
- the replica stopped, a 5-event divergent tail is appended and applied as a deposed primary
  would have, then taken back and truncated exactly as a secondary does (projections.roll_back
  + eventlog.truncate_after, one transaction)."""

from __future__ import annotations

import datetime as dt
import itertools
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

import eventlog
import projections
from bench.cluster import HOST, SETTINGS
from bench.databases import Databases
from bench.memory import proc_status_kb
from client import ClientSettings
from client.library import ChatClient
from client.models import CaughtUp
from eventlog import Event
from projections import EventTypes
from protos.wire import MAX_PAGE_SIZE
from replica.chat.passwords import hash_password
from replica.storage.writer import utc_now
from testsupport.harness import ClusterProcesses

SENDER, RECIPIENT = "scale_sender", "scale_recipient"
PASSWORD = "scale-password"
PREFIX = "u000012*"  # u0000120 .. u0000129 at every size
SUBSTRING = "*99999*"
REPEATS = 20  # timed calls per quick figure (median)
TAIL = 5  # divergent events to take back
BATCH = 5000
_REPLAYED = re.compile(r"replayed (\d+) events in ([\d.]+)s")


@dataclass
class ScaleRun:
    size: int  # accounts, and messages
    events: int
    seed_s: float
    replay_events: int
    replay_s: float
    replay_rss_mb: float
    ms: dict[str, float] = field(default_factory=dict)  # call -> median milliseconds
    history_s: float = 0.0
    history_messages: int = 0
    drain_s: float = 0.0
    drained: int = 0
    unread_shown: int = 0
    repair_ms: float = 0.0
    repair_how: str = ""

    @property
    def replay_rate(self) -> float:
        return self.replay_events / self.replay_s if self.replay_s > 0 else 0.0

    @property
    def history_rate(self) -> float:
        return self.history_messages / self.history_s if self.history_s > 0 else 0.0

    @property
    def drain_rate(self) -> float:
        return self.drained / self.drain_s if self.drain_s > 0 else 0.0


def seed(engine: sa.Engine, size: int) -> int:
    """The log only: SENDER (seq 1), RECIPIENT (2), `size` accounts u0000000.., then `size`
    messages from SENDER to RECIPIENT. The projections stay empty. Returns the last seq."""
    password_hash = hash_password(PASSWORD)
    start = utc_now()
    names = [SENDER, RECIPIENT, *(f"u{i:07d}" for i in range(size))]
    body = "scale message " + "lorem ipsum dolor sit amet " * 2
    recipient_id = 2

    def event(seq: int) -> Event:
        at = start + dt.timedelta(microseconds=seq)
        payload: dict[str, Any]
        if seq <= len(names):
            payload = {"username": names[seq - 1], "password_hash": password_hash}
            return Event(seq, 1, EventTypes.ACCOUNT_REGISTERED, payload, f"scale{seq:027d}", at)
        payload = {
            "sender_id": 1,
            "sender": SENDER,
            "recipient_id": recipient_id,
            "recipient": RECIPIENT,
            "body": f"{body}{seq}",
        }
        return Event(seq, 1, EventTypes.MESSAGE_SENT, payload, f"scale{seq:027d}", at)

    last = len(names) + size
    for first in range(1, last + 1, BATCH):
        batch = [event(seq) for seq in range(first, min(last, first + BATCH - 1) + 1)]
        with engine.begin() as conn:
            eventlog.append_events(conn, batch, after_seq=first - 1)
    return last


def _median_ms(call: Callable[[], object], repeats: int = REPEATS) -> float:
    took = []
    for _ in range(repeats):
        began = time.perf_counter()
        call()
        took.append((time.perf_counter() - began) * 1000)
    return statistics.median(took)


def run_size(
    databases: Databases,
    size: int,
    base_dir: Path,
    say: Callable[[str], None] = lambda text: None,
) -> ScaleRun:
    url = databases.url(f"scale_{size}")
    engine = databases.migrated(f"scale_{size}")
    try:
        began = time.monotonic()
        last = seed(engine, size)
        seed_s = time.monotonic() - began
        say(f"scale {size:,}: {last:,} events written in {seed_s:.1f}s")
        with ClusterProcesses(
            base_dir, 1, hosts=[HOST], db_urls=[url], settings=SETTINGS, startup_timeout=60.0
        ) as cluster:
            cluster.start(0, wait=False)
            # NOT_SERVING while it replays: bounded even at 5,000 events/s.
            cluster.wait_healthy(0, timeout=60 + last / 5000)
            found = _REPLAYED.search(cluster.log_text(0))
            if found is None:
                raise RuntimeError("the replica did not log its replay\n" + cluster.log_tail(0))
            rss = proc_status_kb(cluster.process(0).pid, "VmHWM") or 0
            run = ScaleRun(
                size=size,
                events=last,
                seed_s=seed_s,
                replay_events=int(found.group(1)),
                replay_s=float(found.group(2)),
                replay_rss_mb=rss * 1024 / 1e6,
            )
            say(f"scale {size:,}: replayed {run.replay_events:,} at {run.replay_rate:,.0f}/s")
            with ChatClient(
                [cluster.address(0)], ClientSettings(timeout=120.0, attempt_timeout=120.0)
            ) as client:
                _user_calls(client, run, say)
            cluster.terminate(0)
        run.repair_ms, run.repair_how = _repair(engine)
        say(f"scale {size:,}: {TAIL}-event tail taken back in {run.repair_ms:.1f} ms")
        return run
    finally:
        engine.dispose()
        databases.drop(url)


def _user_calls(client: ChatClient, run: ScaleRun, say: Callable[[str], None]) -> None:
    login = client.login(RECIPIENT, PASSWORD)
    run.unread_shown = login.undelivered_count
    run.ms["login"] = _median_ms(lambda: client.login(RECIPIENT, PASSWORD), 5)

    def first_page(newest_first: bool) -> None:
        page = client.history(SENDER, page_size=100, newest_first=newest_first)
        got = list(itertools.islice(page, 100))
        if len(got) != 100:
            raise AssertionError(f"a history page held {len(got)} messages, not 100")

    run.ms["history_newest"] = _median_ms(lambda: first_page(True))
    run.ms["history_oldest"] = _median_ms(lambda: first_page(False))

    def prefix() -> None:
        names = list(client.list_accounts(PREFIX))
        if len(names) != 10:
            raise AssertionError(f"{PREFIX!r} matched {len(names)} accounts, not 10")

    run.ms["list_prefix"] = _median_ms(prefix)
    run.ms["list_substring"] = _median_ms(
        lambda: list(client.list_accounts(SUBSTRING, page_size=MAX_PAGE_SIZE)), 3
    )
    began = time.monotonic()
    run.history_messages = sum(1 for _ in client.history(SENDER, page_size=MAX_PAGE_SIZE))
    run.history_s = time.monotonic() - began
    if run.history_messages != run.size:
        raise AssertionError(f"history held {run.history_messages} of {run.size} messages")
    say(f"scale {run.size:,}: whole history read in {run.history_s:.1f}s")
    subscription = client.subscribe()
    began = time.monotonic()
    try:
        for item in subscription:
            if isinstance(item, CaughtUp):
                break
            run.drained += 1
    finally:
        subscription.cancel()
    run.drain_s = time.monotonic() - began
    if run.drained != run.size:
        raise AssertionError(f"the subscription drained {run.drained} of {run.size} messages")
    say(f"scale {run.size:,}: backlog drained at {run.drain_rate:,.0f}/s")


def _repair(engine: sa.Engine) -> tuple[float, str]:
    """A deposed primary's divergent tail, applied as its writer did, then taken back."""
    with engine.connect() as conn:
        last = eventlog.last_position(conn).seq
        template = next(
            e
            for e in eventlog.read_events(conn, last - 1000, 1000)
            if e.type == EventTypes.MESSAGE_SENT
        )
    tail = [
        Event(last + n, template.epoch, template.type, template.payload, None, template.created_at)
        for n in range(1, TAIL + 1)
    ]
    for event in tail:
        with engine.begin() as conn:
            eventlog.append_events(conn, [event])
            applier = projections.Applier(conn)
            applier.add(event)
            applier.finish()
    began = time.perf_counter()
    with engine.begin() as conn:
        how = projections.roll_back(conn, last)
        removed = eventlog.truncate_after(conn, last)
    took = (time.perf_counter() - began) * 1000
    if removed != TAIL:
        raise AssertionError(f"truncated {removed} events, not {TAIL}")
    return took, how.name.lower()
