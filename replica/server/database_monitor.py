"""Watching a running replica's database: health says NOT_SERVING while it is stalled or lost,
and it is tried again with capped back-off until it answers.

A replica notices a database that stopped answering through the operations waiting on it
(replica/storage/watch.py: no progress). An idle replica has none, so after a failure nothing
would try again: this monitor does, reading the log's end at once, then after 0.1 s, then
twice as long each time up to MAX_RETRY; it logs the outage once, then every LOG_EVERY
seconds, and when the database answers again. Its own check may wait on a stuck database as
long as that lasts: health was set before it, and turns SERVING only once something
succeeded."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import sqlalchemy as sa

import eventlog
from replica.storage.database import database_location, storage_problem
from replica.storage.watch import StorageWatch

log = logging.getLogger(__name__)

CHECK_EVERY = 0.2  # how often the watch is looked at while the database works
FIRST_RETRY = 0.1
MAX_RETRY = 2.0
LOG_EVERY = 10.0


class DatabaseMonitor:
    def __init__(
        self,
        index: int,
        engine: sa.Engine,
        watch: StorageWatch,
        *,
        stalled_after: float,
        serving: Callable[[bool], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._index = index
        self._engine = engine
        self._watch = watch
        self._stalled_after = stalled_after
        self._serving = serving  # health: SERVING (True) or NOT_SERVING (False)
        self._clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._down_since: float | None = None  # (monotonic) while health says NOT_SERVING
        self._wall_down_since = ""
        self._logged_at = 0.0
        self._tries = 0
        self._problem = ""

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._run, name=f"database-monitor-{self._index}", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        delay = FIRST_RETRY
        while not self._stop.is_set():
            since = self._watch.busy_since()
            stalled_for = self._watch.stalled_for()
            if stalled_for >= self._stalled_after:
                self._lost(stalled_for)
            else:
                self._recovered()
            # Something failed and nothing is under way to find out whether it works again,
            # or it is stalled: try it (waiting as long as it takes), with back-off.
            if since is not None and (
                self._watch.running() == 0 or stalled_for >= self._stalled_after
            ):
                self._try_database()
                self._stop.wait(delay)
                delay = min(2 * delay, MAX_RETRY)
            else:
                delay = FIRST_RETRY
                self._stop.wait(CHECK_EVERY)

    def _lost(self, stalled_for: float) -> None:
        now = self._clock()
        if self._down_since is None:
            self._down_since = now - stalled_for
            self._wall_down_since = time.strftime(
                "%H:%M:%S", time.localtime(time.time() - stalled_for)
            )
            self._logged_at = now
            self._tries = 0
            self._serving(False)
            log.warning(
                "replica %d: its database at %s has made no progress for %.1fs: health is "
                "NOT_SERVING and its peers hear UNAVAILABLE until it answers again",
                self._index,
                database_location(self._engine),
                stalled_for,
            )
        elif now - self._logged_at >= LOG_EVERY:
            self._logged_at = now
            log.warning(
                "replica %d: still waiting for its database at %s since %s: %d tries%s",
                self._index,
                database_location(self._engine),
                self._wall_down_since,
                self._tries,
                f" ({self._problem})" if self._problem else " (no answer yet)",
            )

    def _try_database(self) -> None:
        """Read the log's end: what the replica's own work needs (a server that answers
        SELECT 1 may still miss a table, or be stuck on its disk)."""
        self._tries += 1
        try:
            with self._watch.operation(), self._engine.connect() as conn:
                eventlog.last_position(conn)
        except sa.exc.DBAPIError as exc:
            self._problem = storage_problem(exc)

    def _recovered(self) -> None:
        if self._down_since is None:
            return
        took = self._clock() - self._down_since
        self._down_since = None
        self._problem = ""
        self._serving(True)
        log.warning(
            "replica %d: its database answers again after %.1fs (%d tries): serving",
            self._index,
            took,
            self._tries,
        )
