"""The primary's view of its secondaries: the in-sync set, each one's acked position, what
each stream has been sent and told, and the commit point (Kafka acks=all).

A secondary may vouch in an election for holding every acknowledged event only while it is in
the set and knows it; so the set never shrinks behind a member's back: a connected member is
told first and removed when it confirms, and an unreachable one is removed only after
`insync_timeout` past the last "in sync" it was sent, while it stops vouching half of that
after the ack that word answered (ReplicaCore.vouches).

A member removed unheard (unreachable, or it never confirmed leaving) may still *claim* to be
in sync (ReplicaCore.claim) -- and the other replicas may elect on that claim, without this
primary (rules.electable). So while one may, nothing is acknowledged without an in-sync
secondary: alone, a primary acknowledges only once every other member is known to be out --
its process gone (connection refused), or it confirmed it knows it left."""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

from replica.protocol import rules
from replica.protocol.config import ProtocolConfig
from replica.protocol.effects import (
    AdvanceCommit,
    CommitStalled,
    Effect,
    EndStream,
    LogNote,
    MemberStatus,
    SendEvents,
    SendHeartbeat,
    WakeSenders,
)
from replica.protocol.membership import Membership


@dataclass(slots=True)
class ServedStream:
    stream_id: int
    connected: bool = False  # past its divergence exchange: its acks count
    acked_seq: int = 0
    sent_seq: int = 0
    # Ends of batches (or heartbeats) sent when they reached the end of the log: an ack of
    # one shows the secondary was caught up as of sending (under steady writes it is never
    # level with the log's end itself).
    tips: set[int] = field(default_factory=set)
    told_in_sync: bool | None = None
    last_sent_at: float = float("-inf")
    last_events_at: float = float("-inf")  # when it was last sent events (not a heartbeat)
    last_ack_id: int = 0  # echoed in every message sent (the secondary's vouch counts from it)


@dataclass(slots=True)
class Member:
    index: int
    stream: ServedStream | None = None
    acked_seq: int = 0
    # Counts for the commit point. A member leaves in two steps: it is told (`leaving_since`),
    # and it is removed once it acks that it knows, or once it has been unreachable too long.
    in_sync: bool = False
    leaving_since: float | None = None
    behind_since: float | None = None
    disconnected_at: float | None = None
    # The commit point when it entered the set. Counted from then on, it is told it is in
    # sync -- and may vouch -- only once it holds that far: it may have joined on the ack of a
    # batch that reached the log's end when sent, while the commit point went on without it.
    joined_at_commit: int = 0
    # Removed without hearing that it knows: it may still claim to be in sync, until it says
    # it does not on a stream opened after its removal (all that stream says is newer; a
    # removal unheard leaves it no stream: see evaluate).
    unconfirmed: bool = False
    last_ack_at: float = float("-inf")
    knows_in_sync: bool = False  # what its last ack said
    gone_at: float | None = None  # first seen dead (connection refused) while disconnected
    # Since when its lag has stayed within the promotion threshold (None: beyond it now): a
    # learner is promoted only once it keeps up (InSyncSet.promotion_refusal).
    keeping_up_since: float | None = None

    @property
    def connected(self) -> bool:
        return self.stream is not None and self.stream.connected

    @property
    def told_in_sync(self) -> bool:
        """What the member is told: in the set, holding every committed event, and not on
        its way out."""
        return (
            self.in_sync and self.leaving_since is None and self.acked_seq >= self.joined_at_commit
        )


class InSyncSet:
    def __init__(
        self,
        config: ProtocolConfig,
        epoch: int,
        last_seq: int,
        commit_point: int,
        voters: Iterable[int],
        now: float,
        membership: Membership | None = None,
    ) -> None:
        """Lead `epoch`. The replicas that voted start in the in-sync set: they keep vouching
        for their logs through the election, so nothing is acknowledged without them until
        they catch up or are removed. Only voters of `membership` ever join it: a learner
        follows and counts for nothing, and a replica being removed is told it is out."""
        self._config = config
        self.membership = membership or Membership.initial(config.members)
        self.epoch = epoch
        # The log's end as streamed (written by the writer, its local commit perhaps still
        # under way) and as durable here: only durable events can be acknowledged.
        self.last_seq = last_seq
        self.durable_seq = last_seq
        self.commit_point = commit_point
        # Where this primary's epoch_started event is, once durable. Nothing is committed
        # before it is: acks of an older epoch's events alone do not make them safe (a replica
        # whose last event is of an epoch between theirs and this one may still win an
        # election without them -- Raft's "figure 8"); committing this event commits them.
        self.epoch_start_seq: int | None = None
        self.stalled: str | None = None
        self.awake_since = now
        self.members: dict[int, Member] = {
            v: Member(
                v,
                in_sync=True,
                behind_since=now,
                disconnected_at=now,
                joined_at_commit=commit_point,
            )
            for v in voters
        }
        for m in self.members.values():
            if not self.membership.is_voter(m.index):
                m.leaving_since = now  # a voter being removed: told it is out from the start
        self._pending_streams: dict[int, int] = {}  # stream id -> secondary, before its 1st ack

    # -- the log and the commit point ------------------------------------------------------

    def started(self, seq: int, now: float, out: list[Effect]) -> None:
        """This primary's epoch_started event is durable at `seq`."""
        self.epoch_start_seq = seq
        self.appended(seq, now, out)

    def written(self, last_seq: int, now: float, out: list[Effect]) -> None:
        """The writer holds events up to `last_seq`: stream them (acknowledged only once
        appended() says they are durable here)."""
        if last_seq <= self.last_seq:
            return
        self.last_seq = last_seq
        limit = self._config.promotion_lag
        for m in self.members.values():
            if m.acked_seq < last_seq and m.behind_since is None:
                m.behind_since = now
            if m.keeping_up_since is not None and last_seq - m.acked_seq > limit:
                m.keeping_up_since = None
        out.append(WakeSenders())

    def appended(self, last_seq: int, now: float, out: list[Effect]) -> None:
        """Events up to `last_seq` are durable in this primary's log."""
        if last_seq <= self.durable_seq:
            return
        self.durable_seq = last_seq
        self.written(last_seq, now, out)
        self.advance_commit(out)

    def in_sync_count(self) -> int:
        return sum(1 for m in self.members.values() if m.in_sync)

    def unconfirmed(self) -> list[int]:
        return sorted(m.index for m in self.members.values() if m.unconfirmed)

    def _shortfall(self) -> str | None:
        """Why nothing can be acknowledged now, if nothing can."""
        count = self.in_sync_count()
        if not rules.enough_in_sync(count, self._config.min_insync):
            return (
                f"only {count + 1} replica(s) in sync, fewer than min_insync="
                f"{self._config.min_insync}"
            )
        unheard = self.unconfirmed()
        if count == 0 and unheard:
            names = ", ".join(str(i) for i in unheard)
            return (
                f"no secondary in sync, and replica(s) {names}, cut off, may still be counted "
                "in sync by the others (alone, a primary acknowledges only once every other "
                "replica is known to be down or out)"
            )
        return None

    def refusal(self) -> str | None:
        """Why a client write must be refused now, if it must."""
        shortfall = self._shortfall()
        if shortfall is None:
            return None
        return f"{shortfall}; writes are refused until a secondary catches up"

    def advance_commit(self, out: list[Effect]) -> None:
        acked = [m.acked_seq for m in self.members.values() if m.in_sync]
        shortfall = self._shortfall()
        if shortfall != self.stalled:
            self.stalled = shortfall
            out.append(CommitStalled(shortfall))
        if shortfall is not None:
            return
        point = rules.commit_point(self.durable_seq, acked)
        if self.epoch_start_seq is None or point < self.epoch_start_seq:
            return
        if point > self.commit_point:
            self.commit_point = point
            out.append(AdvanceCommit(point))

    # -- streams ---------------------------------------------------------------------------

    def hello(self, secondary: int, stream_id: int) -> None:
        self._pending_streams[stream_id] = secondary

    def acked(
        self,
        secondary: int,
        stream_id: int,
        seq: int,
        knows_in_sync: bool,
        now: float,
        out: list[Effect],
        ack_id: int = 0,
    ) -> None:
        m = self.members.get(secondary)
        if self._pending_streams.get(stream_id) == secondary:
            # Its first ack: the divergence exchange is over and the stream starts at `seq`.
            del self._pending_streams[stream_id]
            if m is None:
                m = self.members[secondary] = Member(secondary)
            m.stream = ServedStream(stream_id, connected=True, acked_seq=seq, sent_seq=seq)
            m.disconnected_at = None
            m.gone_at = None
            was_tip = False
        elif m is None or m.stream is None or m.stream.stream_id != stream_id:
            return  # an old stream's
        else:
            stream = m.stream
            stream.acked_seq = max(stream.acked_seq, seq)
            was_tip = seq in stream.tips
            stream.tips = {t for t in stream.tips if t > seq}
        m.stream.last_ack_id = max(m.stream.last_ack_id, ack_id)
        m.last_ack_at = now
        m.knows_in_sync = knows_in_sync
        if not knows_in_sync and not m.in_sync:
            m.unconfirmed = False  # it knows it is out
        m.acked_seq = max(m.acked_seq, seq)
        if self.last_seq - m.acked_seq > self._config.promotion_lag:
            m.keeping_up_since = None
        elif m.keeping_up_since is None:
            m.keeping_up_since = now
        caught_up = m.acked_seq >= self.last_seq or was_tip
        if caught_up:
            m.behind_since = None
        elif m.behind_since is None:
            m.behind_since = now
        voter = self.membership.is_voter(secondary)
        if m.leaving_since is not None and not knows_in_sync:
            reason = "behind for too long" if voter else "no longer a voter"
            self._remove(m, reason, out, confirmed=True)
        elif caught_up and m.leaving_since is not None and voter:
            m.leaving_since = None  # caught up before it left: it stays
            out.append(WakeSenders())
        elif caught_up and not m.in_sync and voter and self._may_join(secondary):
            m.in_sync = True
            m.unconfirmed = False
            m.joined_at_commit = self.commit_point
            out.append(WakeSenders())
            out.append(
                LogNote(
                    "info",
                    f"replica {secondary} joined the in-sync set at seq {seq}",
                    "in_sync_joined",
                )
            )
        self.advance_commit(out)

    def disconnected(self, secondary: int, stream_id: int, now: float) -> None:
        self._pending_streams.pop(stream_id, None)
        m = self.members.get(secondary)
        if m is None or m.stream is None or m.stream.stream_id != stream_id:
            return
        m.stream = None
        m.disconnected_at = now
        # It leaves the in-sync set at a later evaluation, which first checks that this
        # process was not paused (a paused primary must step down instead).

    def next_send(self, secondary: int, stream_id: int, now: float, out: list[Effect]) -> None:
        """What the stream to `secondary` sends next: the events it lacks, a heartbeat when
        idle or when its membership changed, or nothing yet."""
        m = self.members.get(secondary)
        if m is None or m.stream is None or m.stream.stream_id != stream_id:
            out.append(EndStream(secondary, stream_id, "the stream was replaced"))
            return
        stream = m.stream
        in_sync = m.told_in_sync
        config = self._config
        in_flight = stream.sent_seq - stream.acked_seq
        if stream.sent_seq < self.last_seq and in_flight < config.max_in_flight:
            after = stream.sent_seq
            through = min(self.last_seq, after + config.batch_events)
            stream.sent_seq = through
            stream.last_sent_at = stream.last_events_at = now
            stream.told_in_sync = in_sync
            if through >= self.last_seq:
                stream.tips.add(through)
            out.append(
                SendEvents(
                    secondary,
                    stream_id,
                    self.epoch,
                    after,
                    through,
                    self.commit_point,
                    in_sync,
                    stream.last_ack_id,
                )
            )
            return
        # A secondary learns at once that it joined or left the in-sync set: until it
        # knows, it cannot vouch for holding every acknowledged event in an election. A
        # stream sent no events for a while hears heartbeats less often (and acks them so).
        # (Ticks come a heartbeat interval apart or more: the idle heartbeat goes with the
        # tick nearest its time, not the one after, which could be a whole interval late.)
        idle = now - stream.last_events_at >= config.idle_after
        interval = config.heartbeat_interval
        if idle:
            interval = max(interval, config.idle_heartbeat_interval - interval / 2)
        if now - stream.last_sent_at >= interval or in_sync != stream.told_in_sync:
            stream.last_sent_at = now
            stream.told_in_sync = in_sync
            if stream.sent_seq >= self.last_seq:
                stream.tips.add(stream.sent_seq)  # its ack then shows it holds the whole log
            out.append(
                SendHeartbeat(
                    secondary,
                    stream_id,
                    self.epoch,
                    self.commit_point,
                    self.last_seq,
                    in_sync,
                    stream.last_ack_id,
                )
            )

    # -- membership ------------------------------------------------------------------------

    def membership_changed(self, membership: Membership, now: float, out: list[Effect]) -> None:
        """A membership event was written: a member that is no voter any more leaves the set as
        one that fell behind does -- told first, removed once it confirms (or, unheard, after
        the in-sync timeout, and then counted unconfirmed) -- since until it knows, it may
        still vouch or claim in an election. A promoted learner joins once caught up."""
        self.membership = membership
        for m in self.members.values():
            if m.in_sync and not membership.is_voter(m.index) and m.leaving_since is None:
                m.leaving_since = now
        out.append(WakeSenders())
        self.advance_commit(out)

    def _may_join(self, voter: int) -> bool:
        """A voter promoted joins the set only once its promotion is committed: then every
        replica that could be counted in sync holds the promotion and counts it in elections
        too -- one counted in sync before would vouch while a replica that never stored the
        promotion could be elected without asking it, and acknowledge alone."""
        m = self.membership
        before = m.voters if m.voters_before is None else m.voters_before
        return voter in before or self.commit_point >= m.seq

    def promotion_refusal(self, learner: int, now: float) -> str | None:
        """Why `learner` must not become a voter yet, if it must not: it has to be connected
        and keep within `promotion_lag` events of the log's end for `promotion_steady`
        seconds -- a voter that cannot keep up would stall every write once in the in-sync
        set, or leave it at once."""
        config = self._config
        m = self.members.get(learner)
        if m is None or not m.connected:
            return f"replica {learner} is not connected to the primary (has it started?)"
        lag = max(0, self.last_seq - m.acked_seq)
        steady = 0.0 if m.keeping_up_since is None else now - m.keeping_up_since
        if m.keeping_up_since is None or steady < config.promotion_steady:
            return (
                f"replica {learner} is catching up: {lag} event(s) behind, within "
                f"{config.promotion_lag} for {steady:.1f}s of the {config.promotion_steady:.1f}s "
                "needed; try again shortly"
            )
        return None

    # -- removing members ------------------------------------------------------------------

    def woke(self, now: float) -> None:
        """The process was not running for a while: restart the awake window."""
        self.awake_since = now

    def evaluate(self, now: float, gone: Collection[int], out: list[Effect]) -> None:
        """Start or finish removing members that left or fell behind for too long. `gone`:
        members whose host refused a connection just now (no process listens)."""
        timeout = self._config.insync_timeout
        for m in self.members.values():
            if m.in_sync and m.index in gone and not m.connected and m.gone_at is None:
                m.gone_at = now  # dead by now
        if now - self.awake_since < self._config.awake_window:
            return
        for m in self.members.values():
            if not m.in_sync:
                continue
            if m.gone_at is not None and not m.connected:
                # A dead process vouches for nothing, and a restarted one starts out of sync:
                # waiting out the timeout would only stall every write for it. But its disk
                # keeps any vote it cast: unless it acked this primary too recently before it
                # was seen dead to have voted since (a vote takes peer_timeout without hearing
                # from one's primary), it may have helped elect a newer epoch this primary
                # has not heard of. Then it counts as unheard (alone, no writes) until it
                # answers again. (Safe while an ack takes less than a quarter of peer_timeout
                # to arrive.)
                listening = m.gone_at - m.last_ack_at < self._config.peer_timeout * 3 / 4
                self._remove(m, "its process is gone: connection refused", out, confirmed=listening)
            elif m.disconnected_at is not None and now - m.disconnected_at > timeout:
                self._remove(m, f"unreachable for more than {timeout:.1f}s", out)
            elif m.leaving_since is not None and now - m.leaving_since > timeout:
                self._remove(m, "did not confirm leaving", out)
                if m.stream is not None:
                    # What it says on this stream may answer words from before its removal:
                    # only a new stream can show it knows it is out.
                    out.append(EndStream(m.index, m.stream.stream_id, "removed unheard"))
                    m.stream = None
                    m.disconnected_at = now
            elif (
                m.leaving_since is None
                and m.behind_since is not None
                and now - m.behind_since > timeout
            ):
                m.leaving_since = now  # told now; removed when it confirms
                out.append(WakeSenders())
        self.advance_commit(out)

    def _remove(self, m: Member, reason: str, out: list[Effect], confirmed: bool = False) -> None:
        m.in_sync = False
        m.unconfirmed = not confirmed
        m.leaving_since = None
        out.append(WakeSenders())
        out.append(
            LogNote("warning", f"replica {m.index} left the in-sync set ({reason})", "in_sync_left")
        )

    # -- views -----------------------------------------------------------------------------

    def has_more_to_send(self, secondary: int, stream_id: int) -> bool:
        """Whether the stream lacks events of the log (what a SendWanted would send now, flow
        control permitting)."""
        m = self.members.get(secondary)
        stream = None if m is None else m.stream
        return (
            stream is not None
            and stream.stream_id == stream_id
            and (stream.sent_seq < self.last_seq)
        )

    def successor(self, now: float) -> int | None:
        """A member that could take over now: in the set and told so, connected, and acking
        lately (so it vouches, or at least claims, for every acknowledged event), if any."""
        ready = [
            m.index
            for m in self.members.values()
            if m.told_in_sync and m.connected and now - m.last_ack_at < self._config.vouch_window
        ]
        return min(ready, default=None)

    def told_in_sync(self, secondary: int) -> bool:
        m = self.members.get(secondary)
        return m is not None and m.told_in_sync

    def streaming(self, now: float) -> frozenset[int]:
        """The members whose stream is alive: connected, past its first ack, and acking within
        stream_quiet_after (it acks every heartbeat). What a probe of one would show -- that it
        runs, follows this primary in this epoch (one that learns of a newer epoch ends its
        stream at this primary's next message), where its log ends -- the stream shows, so it
        is not probed (ReplicaCore.probe_round_targets)."""
        quiet_after = self._config.stream_quiet_after
        return frozenset(
            m.index
            for m in self.members.values()
            if m.connected and now - m.last_ack_at <= quiet_after
        )

    def awake(self, now: float) -> bool:
        """Running long enough since its start or its last pause for its streams to tell what
        its peers do now (awake_window): until then it probes every peer, so it learns first of
        any newer epoch elected meanwhile."""
        return now - self.awake_since >= self._config.awake_window

    def statuses(self, now: float | None = None) -> tuple[MemberStatus, ...]:
        streaming = self.streaming(now) if now is not None else frozenset()
        return tuple(
            MemberStatus(
                m.index,
                m.connected,
                m.in_sync,
                m.acked_seq,
                max(0, self.last_seq - m.acked_seq),
                self.membership.is_voter(m.index),
                m.knows_in_sync,
                m.index in streaming,
            )
            for m in self.members.values()
        )
