"""The single writer: validate a command against the projections, append its event and apply
it in one transaction, then wait until it is committed before the caller replies."""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

import eventlog
import projections
from eventlog import Event
from replica.commit import CommitTracker
from replica.errors import Unavailable
from replica.role import RoleState

log = logging.getLogger(__name__)

Clock = Callable[[], dt.datetime]


def utc_now() -> dt.datetime:
    """Naive UTC: both backends store DATETIME without a zone."""
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


@dataclass(frozen=True)
class NewEvent:
    type: str
    payload: dict[str, Any]


# Reads the projections inside the writer's transaction; returns the event to append, None
# when the command changes nothing, or raises a ChatError.
Decide = Callable[[sa.Connection], NewEvent | None]


@dataclass(frozen=True)
class Outcome:
    event: Event | None
    duplicate: bool


class LogWriter:
    def __init__(
        self,
        engine: sa.Engine,
        role: RoleState,
        commits: CommitTracker,
        *,
        clock: Clock = utc_now,
        commit_timeout: float = 10.0,
        admission: Callable[[], None] = lambda: None,
    ) -> None:
        self._engine = engine
        self._role = role
        self._commits = commits
        self._clock = clock
        self._commit_timeout = commit_timeout
        self._admission = admission  # raises when writes must be refused (too few in sync)
        self._lock = threading.Lock()
        self._on_appended: list[Callable[[list[Event]], None]] = []

    @property
    def lock(self) -> threading.Lock:
        """Held while the log is written; replication holds it to truncate or append."""
        return self._lock

    def add_append_listener(self, listener: Callable[[list[Event]], None]) -> None:
        self._on_appended.append(listener)

    def execute(self, request_id: str | None, decide: Decide) -> Outcome:
        with self._lock:
            snap = self._role.require_primary()
            try:
                with self._engine.begin() as conn:
                    if request_id is not None:
                        existing = eventlog.find_by_request_id(conn, request_id)
                        if existing is not None:
                            outcome = Outcome(existing, duplicate=True)
                    if request_id is None or existing is None:
                        self._admission()
                        new = decide(conn)
                        if new is None:
                            return Outcome(None, duplicate=False)
                        seq = eventlog.last_position(conn).seq + 1
                        event = Event(
                            seq, snap.epoch, new.type, new.payload, request_id, self._clock()
                        )
                        eventlog.append_events(conn, [event])
                        projections.apply_events(conn, [event])
                        outcome = Outcome(event, duplicate=False)
            except sa.exc.OperationalError as exc:
                log.error("replica %d: storage error while writing: %s", self._role.index, exc)
                raise Unavailable("this replica's database is failing; retry shortly") from exc
            if not outcome.duplicate and outcome.event is not None:
                self._commits.appended([outcome.event])
                for listener in self._on_appended:
                    listener([outcome.event])
        if outcome.event is not None:
            self._commits.wait_committed(outcome.event.seq, self._commit_timeout)
        return outcome

    def append_system_event(self, new: NewEvent, epoch: int) -> Event:
        """An event the cluster writes itself (e.g. a new primary's epoch marker)."""
        with self._lock, self._engine.begin() as conn:
            seq = eventlog.last_position(conn).seq + 1
            event = Event(seq, epoch, new.type, new.payload, None, self._clock())
            eventlog.append_events(conn, [event])
            projections.apply_events(conn, [event])
        self._commits.appended([event])
        for listener in self._on_appended:
            listener([event])
        return event
