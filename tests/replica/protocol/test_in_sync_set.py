"""The primary's in-sync set: when a secondary may be dropped from it, on logical time; and the
primary's recent-events cache."""

from __future__ import annotations

import datetime as dt
import itertools

from eventlog import Event
from projections import EventTypes
from replica.protocol import ProtocolConfig
from replica.protocol.effects import AdvanceCommit, Effect, SendEvents, SendHeartbeat
from replica.protocol.in_sync import InSyncSet
from replica.replication.primary import RecentEvents

CONFIG = ProtocolConfig(0, (0, 1, 2), peer_timeout=0.6, insync_timeout=1.0)
AWAKE = 1.0  # past the 1.5 x peer_timeout window a new primary waits before dropping anyone
STREAMS = {1: 101, 2: 102}


def event(seq: int) -> Event:
    return Event(seq, 3, EventTypes.EPOCH_STARTED, {}, None, dt.datetime(2030, 1, 1))


def committed(out: list[Effect]) -> list[int]:
    return [e.seq for e in out if isinstance(e, AdvanceCommit)]


def set_with_two_secondaries() -> tuple[InSyncSet, float]:
    now = 100.0
    iss = InSyncSet(CONFIG, 3, 0, 0, [1, 2], now)
    out: list[Effect] = []
    for i in (1, 2):
        iss.hello(i, STREAMS[i])
        iss.acked(i, STREAMS[i], 0, True, now, out)
    iss.started(1, now, out)  # the epoch_started event
    for i in (1, 2):
        iss.acked(i, STREAMS[i], 1, True, now, out)
    assert iss.commit_point == 1
    now += AWAKE
    for i in (1, 2):
        iss.acked(i, STREAMS[i], 1, True, now, out)  # heartbeats' acks: listening till now
    return iss, now


def test_a_secondary_whose_process_is_gone_leaves_at_once() -> None:
    iss, now = set_with_two_secondaries()
    out: list[Effect] = []
    iss.disconnected(1, STREAMS[1], now)
    iss.appended(2, now, out)
    iss.acked(2, STREAMS[2], 2, True, now, out)
    assert iss.commit_point == 1, "committed without the in-sync secondary 1"
    iss.evaluate(now, {1}, out)
    assert not iss.told_in_sync(1)
    assert iss.told_in_sync(2)
    assert iss.commit_point == 2
    assert committed(out) == [2]


def test_a_member_seen_dead_long_after_its_last_ack_may_have_voted_and_counts_unheard() -> None:
    """Its disk keeps any vote it cast: silent for most of a peer timeout before it was seen
    dead, it may have helped elect a newer epoch, so it leaves unconfirmed (the primary may
    not go on alone on its account); seen dead right after an ack, it could not have."""
    iss, now = set_with_two_secondaries()
    out: list[Effect] = []
    iss.disconnected(1, STREAMS[1], now)
    iss.evaluate(now + 0.1, {1}, out)  # a tenth of a second after its last ack
    assert not iss.told_in_sync(1) and iss.unconfirmed() == []
    iss, now = set_with_two_secondaries()
    iss.disconnected(1, STREAMS[1], now)
    iss.evaluate(now + CONFIG.peer_timeout, {1}, out)  # a whole peer timeout after
    assert not iss.told_in_sync(1) and iss.unconfirmed() == [1]


def test_a_silent_secondary_that_is_not_known_gone_waits_out_the_timeout() -> None:
    iss, now = set_with_two_secondaries()
    out: list[Effect] = []
    iss.disconnected(1, STREAMS[1], now)
    iss.evaluate(now + 0.5, (), out)
    assert iss.told_in_sync(1), "dropped before insync_timeout: it may still vouch"
    iss.evaluate(now + 1.1, (), out)
    assert not iss.told_in_sync(1)


def test_a_connected_secondary_is_not_dropped_for_a_refused_probe() -> None:
    # Its stream is up, so whatever refused the probe, this member is alive (e.g. restarted).
    iss, now = set_with_two_secondaries()
    iss.evaluate(now, {1}, [])
    assert iss.told_in_sync(1)


def test_a_primary_just_awake_drops_no_one() -> None:
    iss = InSyncSet(CONFIG, 3, 0, 0, [1, 2], 100.0)
    iss.hello(1, 7)
    iss.acked(1, 7, 0, True, 100.0, [])
    iss.disconnected(1, 7, 100.0)
    iss.evaluate(100.0, {1}, [])
    assert iss.told_in_sync(1), "a primary may have been paused: it must step down, not shrink"


def test_nothing_commits_before_the_primarys_own_epoch_started() -> None:
    """Acks of an older epoch's events alone commit nothing (Raft's figure 8; see
    tests/replica/protocol/test_scenarios.py for the history that loses a write without it)."""
    iss = InSyncSet(CONFIG, 6, 4, 2, [1], 100.0)
    out: list[Effect] = []
    iss.hello(1, 7)
    iss.acked(1, 7, 4, True, 100.0, out)
    assert iss.commit_point == 2 and committed(out) == []
    iss.started(5, 100.0, out)
    iss.acked(1, 7, 5, True, 100.0, out)
    assert committed(out) == [5]


def test_a_secondary_that_joins_behind_the_commit_point_is_told_once_it_holds_it() -> None:
    """It joins on the ack of a batch that reached the log's end when sent; meanwhile the
    primary, alone in sync (min_insync = 1), committed more. Counted from its join, it must
    not be told it is in sync -- and vouch -- before it holds what was committed without it."""
    iss, now = set_with_two_secondaries()
    out: list[Effect] = []
    iss.disconnected(1, STREAMS[1], now)
    iss.disconnected(2, STREAMS[2], now)
    iss.evaluate(now, {1, 2}, out)  # both gone: the primary commits alone
    iss.appended(3, now, out)
    assert iss.commit_point == 3
    iss.hello(1, 201)
    iss.acked(1, 201, 1, False, now, out)  # it starts behind, at seq 1
    iss.next_send(1, 201, now, out)  # seqs 2-3: the log's end as sent
    iss.appended(5, now, out)
    assert iss.commit_point == 5, "committed alone"
    iss.acked(1, 201, 3, False, now, out)  # caught up as of sending: it joins
    assert iss.members[1].in_sync, "counted from its join"
    assert not iss.told_in_sync(1), "told in sync while it lacks committed seqs 4-5"
    iss.appended(6, now, out)
    assert iss.commit_point == 5, "nothing more commits without it"
    iss.acked(1, 201, 5, False, now, out)
    assert iss.told_in_sync(1)
    iss.acked(1, 201, 6, True, now, out)
    assert iss.commit_point == 6


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


def test_an_ack_on_a_stream_that_was_replaced_counts_for_nothing() -> None:
    """What a secondary said on its old stream answers words from before the new one: a late
    ack there must neither move its acked seq (nor the commit point) nor confirm anything."""
    iss, now = set_with_two_secondaries()
    out: list[Effect] = []
    iss.appended(3, now, out)
    iss.acked(2, STREAMS[2], 3, True, now, out)
    new_stream = 201
    iss.hello(1, new_stream)
    iss.acked(1, new_stream, 1, True, now, out)  # reconnected: its log ends at 1
    iss.acked(1, STREAMS[1], 3, True, now, out)  # the old stream's ack, arriving late
    assert iss.commit_point == 1, "a replaced stream's ack committed what the new one lacks"
    assert [m.acked_seq for m in iss.statuses() if m.index == 1] == [1]


def test_the_cache_holds_an_event_by_its_epoch_not_by_its_seq_alone() -> None:
    """A batch of an older tenure, streamed while a newer tenure began, then failed: its events
    sit in the cache at the seqs the new tenure writes next. What the new tenure writes there
    replaces them -- and everything after them -- instead of being taken for already held."""
    recent = RecentEvents(capacity=10)
    old_term = [
        Event(s, 3, EventTypes.EPOCH_STARTED, {}, None, dt.datetime(2030, 1, 1)) for s in (1, 2, 3)
    ]
    recent.add(old_term)
    started = Event(1, 6, EventTypes.EPOCH_STARTED, {}, None, dt.datetime(2030, 1, 1))
    recent.add([started])
    assert [(e.seq, e.epoch) for e in recent.after(0, 10) or []] == [(1, 6)]
    recent.add([started])  # (the same event again, once durable: kept once)
    recent.add([Event(2, 6, EventTypes.EPOCH_STARTED, {}, None, dt.datetime(2030, 1, 1))])
    assert [(e.seq, e.epoch) for e in recent.after(0, 10) or []] == [(1, 6), (2, 6)]


def heartbeat_times(iss: InSyncSet, start: float, seconds: float, tick: float) -> list[float]:
    """Ticks every `tick` seconds from `start` for `seconds`: when secondary 1's stream was
    sent a heartbeat (each tick asks it what to send, as the executor does)."""
    sent: list[float] = []
    for n in range(round(seconds / tick)):
        now = start + n * tick
        out: list[Effect] = []
        iss.next_send(1, STREAMS[1], now, out)
        sent += [now for e in out if isinstance(e, SendHeartbeat)]
    return sent


def test_an_idle_stream_hears_heartbeats_half_as_often_and_a_write_wakes_it() -> None:
    """Heartbeats and their acks are most of an idle cluster's CPU: a stream sent no events
    for idle_after hears one every idle_heartbeat_interval instead of every heartbeat
    interval -- still within every threshold that reads them (the quiet one here)."""
    iss, now = set_with_two_secondaries()
    tick = CONFIG.heartbeat_interval + 0.001  # (the executor's ticks come that far apart or more)
    out: list[Effect] = []
    iss.appended(2, now, out)
    iss.next_send(1, STREAMS[1], now, out)
    assert [e.through_seq for e in out if isinstance(e, SendEvents)] == [2]
    busy = heartbeat_times(iss, now + tick, CONFIG.idle_after - 2 * tick, tick)
    assert len(busy) == round(CONFIG.idle_after / tick) - 2, busy  # every tick
    idle_from = now + CONFIG.idle_after
    idle = heartbeat_times(iss, idle_from, 2.0, tick)
    gaps = [b - a for a, b in itertools.pairwise(idle)]
    assert len(idle) == round(2.0 / (2 * tick)), idle  # every other tick
    assert max(gaps) <= 2 * tick + 1e-9 and max(gaps) < 0.7 * CONFIG.stream_quiet_after, gaps
    # A write: its events go at once, and its commit point follows within a heartbeat.
    now = idle_from + 2.0
    out = []
    iss.appended(3, now, out)
    iss.next_send(1, STREAMS[1], now, out)
    assert [e.through_seq for e in out if isinstance(e, SendEvents)] == [3]
    assert heartbeat_times(iss, now + tick, 5 * tick, tick) == [now + n * tick for n in range(1, 6)]


def test_idle_heartbeats_never_come_more_often_nor_past_the_thresholds() -> None:
    """Whatever the configuration: no more often than busy ones, and at least one and a half
    per quiet threshold and two and a half per vouch window."""
    for heartbeat, peer, insync in [(0.1, 0.6, 1.0), (0.1, 0.3, 1.0), (0.05, 2.0, 0.2), (1, 6, 10)]:
        config = ProtocolConfig(
            0, (0, 1, 2), heartbeat_interval=heartbeat, peer_timeout=peer, insync_timeout=insync
        )
        idle = config.idle_heartbeat_interval
        assert config.heartbeat_interval <= idle <= 2 * config.heartbeat_interval
        if idle > config.heartbeat_interval:
            assert idle * 1.5 <= config.stream_quiet_after + 1e-9
            assert idle * 2.5 <= config.vouch_window + 1e-9
