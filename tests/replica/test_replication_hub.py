"""ReplicationHub's in-sync set: when a secondary may be dropped from it, on a fake clock."""

from __future__ import annotations

import datetime as dt

from eventlog import Event
from projections import EventTypes
from replica.commit import CommitTracker
from replica.config import ClusterConfig
from replica.leader import RecentEvents, ReplicationHub

CONFIG = ClusterConfig(peer_timeout_ms=600, insync_timeout_ms=1000)
AWAKE = 1.0  # past the 1.5 x peer_timeout window a new primary waits before dropping anyone


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def event(seq: int) -> Event:
    return Event(seq, 3, EventTypes.EPOCH_STARTED, {}, None, dt.datetime(2030, 1, 1))


def hub_with_two_secondaries() -> tuple[ReplicationHub, CommitTracker, Clock, dict[int, int]]:
    clock = Clock()
    commits = CommitTracker()
    hub = ReplicationHub(0, CONFIG, commits, clock=clock)
    hub.activate(3, 0, voters=[1, 2])
    streams = {i: hub.open_stream(i) for i in (1, 2)}
    hub.on_appended([event(1)])
    for i in (1, 2):
        hub.on_ack(i, streams[i], 1, knows_in_sync=True)
    assert commits.committed_seq == 1
    clock.now += AWAKE
    return hub, commits, clock, streams


def test_a_secondary_whose_process_is_gone_leaves_at_once() -> None:
    hub, commits, _clock, streams = hub_with_two_secondaries()
    hub.close_stream(1, streams[1])
    hub.on_appended([event(2)])
    hub.on_ack(2, streams[2], 2, knows_in_sync=True)
    assert commits.committed_seq == 1, "committed without the in-sync secondary 1"
    hub.tick(gone={1})
    assert not hub.in_sync_of(1)
    assert hub.in_sync_of(2)
    assert commits.committed_seq == 2


def test_a_silent_secondary_that_is_not_known_gone_waits_out_the_timeout() -> None:
    hub, _commits, clock, streams = hub_with_two_secondaries()
    hub.close_stream(1, streams[1])
    clock.now += 0.5
    hub.tick()
    assert hub.in_sync_of(1), "dropped before insync_timeout: it may still vouch"
    clock.now += 0.6
    hub.tick()
    assert not hub.in_sync_of(1)


def test_a_connected_secondary_is_not_dropped_for_a_refused_probe() -> None:
    # Its stream is up, so whatever refused the probe, this member is alive (e.g. restarted).
    hub, _commits, _clock, _streams = hub_with_two_secondaries()
    hub.tick(gone={1})
    assert hub.in_sync_of(1)


def test_a_primary_just_awake_drops_no_one() -> None:
    clock = Clock()
    hub = ReplicationHub(0, CONFIG, CommitTracker(), clock=clock)
    hub.activate(3, 0, voters=[1, 2])
    stream = hub.open_stream(1)
    hub.close_stream(1, stream)
    hub.tick(gone={1})
    assert hub.in_sync_of(1), "a primary may have been paused: it must step down, not shrink"


def test_recent_events_serve_a_contiguous_run_and_nothing_else() -> None:
    recent = RecentEvents(capacity=5)
    assert recent.after(0, 10) is None
    recent.add([event(s) for s in range(1, 5)])  # 1..4
    assert [e.seq for e in recent.after(0, 10) or []] == [1, 2, 3, 4]
    assert [e.seq for e in recent.after(2, 1) or []] == [3]
    assert recent.after(4, 10) is None, "nothing after the newest"
    recent.add([event(s) for s in range(5, 8)])  # 1..7, capacity 5 keeps 3..7
    assert recent.after(1, 10) is None, "seq 2 was evicted: read it from the database"
    assert [e.seq for e in recent.after(2, 10) or []] == [3, 4, 5, 6, 7]
    recent.add([event(10)])  # a gap (8 and 9 never passed through here)
    assert recent.after(6, 10) is None, "never serve across a gap"
    assert [e.seq for e in recent.after(9, 10) or []] == [10]
