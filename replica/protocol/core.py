"""One replica's replication protocol as a pure state machine.

`ReplicaCore.step(now, input)` takes what happened (inputs.py) and returns what to do
(effects.Ready: what must be durable first, then the rest in order). It holds everything the
protocol decides on -- role, current epoch, follow target, what this replica knows of its own
membership (the vouch), the primary's in-sync set and each secondary's acked position
(in_sync.py), pause detection, the commit point -- and nothing else: no threads, sockets,
storage, clock or randomness. Time comes in with every input; storage facts (log positions)
come in the inputs that need them. One thread owns it: the executor
(replica/replication/executor.py) turns RPCs, stream messages and storage outcomes into inputs,
steps it, and carries out the effects; the hypothesis model (tests/replica/protocol/test_model.py)
runs the same executor, core included, through simulated networks, storage, crashes and pauses.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from replica.protocol import rules
from replica.protocol.config import ProtocolConfig
from replica.protocol.effects import (
    AppendEpochStarted,
    CancelStream,
    Effect,
    EndStream,
    LeaveCluster,
    LogNote,
    OpenStream,
    PersistEpoch,
    ProbeAll,
    Ready,
    RefuseStream,
    ReplicaStatus,
    ReplyProbe,
    ReplyVote,
    RequestVotes,
    ResetCommit,
    SecondaryCommitted,
    SendAck,
    SendDivergence,
    SendHello,
    SetRole,
    StepDown,
    StoreBatch,
    Truncate,
    WakeSenders,
)
from replica.protocol.in_sync import InSyncSet
from replica.protocol.inputs import (
    Appended,
    BatchReceived,
    BatchStored,
    DatabaseFailed,
    DivergenceReceived,
    EpochStartAppended,
    EpochStartFailed,
    HeartbeatReceived,
    Input,
    LocalWriteFailed,
    MembershipChanged,
    PeerView,
    ProbeOutcome,
    ProbeReceived,
    ProbesAnswered,
    ReplicationStreamEnded,
    SecondaryAcked,
    SecondaryDisconnected,
    SecondaryHello,
    SendWanted,
    StoreFailed,
    Tick,
    VoteReplied,
    VoteRequested,
    Written,
)
from replica.protocol.membership import ChangeKind, Membership, MembershipChange
from replica.protocol.roles import Role
from replica.protocol.rules import LogPosition

# Acks remembered for their sending time until the primary echoes one (a primary echoes the
# newest it received; more than this many unechoed means it is not listening).
MAX_UNECHOED_ACKS = 1_000


@dataclass(slots=True)
class Following:
    """A secondary's side: whom it follows, its stream, and what it knows of its membership."""

    target: tuple[int, int] | None = None  # (primary index, epoch) to follow
    stream_id: int | None = None  # the stream the core currently wants
    stream_primary: int | None = None
    streaming: bool = False  # past the divergence exchange of the current stream
    # The primary said so in its last message (and nothing since says otherwise: a newer
    # epoch, a pause, a database failure): `counted_by` counts this replica in its in-sync
    # set, or did when it was last heard (the claim; see ReplicaCore.claim).
    in_sync: bool = False
    counted_by: int | None = None
    # The vouch (ReplicaCore.vouches): when this replica sent the newest ack its primary then
    # confirmed it in sync with (the primary echoes the id of the newest ack it received).
    confirmed_at: float = float("-inf")
    acks_sent: dict[int, float] = field(default_factory=dict)  # ack id -> when sent
    # It vouched when it voted: its new primary's word renews the vouch before this replica
    # holds the new epoch's start (an earlier claim alone does not: see _heard_primary).
    vouched_at_vote: bool = False
    committed_seq: int = 0  # the primary's commit point, as last heard
    stored: LogPosition | None = None  # the log's end as of the last store or exchange
    last_contact: float = float("-inf")  # when the primary was last heard on a stream
    # When each batch still being stored arrived, oldest first (storage works in order, and
    # more batches may arrive while one is stored).
    receiving: deque[float] = field(default_factory=deque)
    # How many of the oldest batches still being stored came before a heartbeat already
    # heard: what they say of membership and the commit point is older than what this replica
    # acted on (it may have acked "out", and been removed on that, meanwhile).
    superseded: int = 0
    stream_opened_at: float = float("-inf")  # when the last stream was opened
    # When it last granted a vote: its candidate is given peer_timeout to win and reach it
    # before this replica elects on a probe round of its own (begun, perhaps, before the vote
    # and blind to the new primary) -- Raft's election timer, reset by a granted vote.
    voted_at: float = float("-inf")
    # The primary it followed when it gave up on it and began electing: not waited for in
    # the elections after (rules.may_be_vouching_unheard) until it follows someone again --
    # kept past the first attempt, or a primary cut off for good would stall every later one.
    lost_primary: int | None = None


@dataclass(slots=True)
class Election:
    epoch: int
    position: LogPosition
    voters: tuple[int, ...]
    waiting: set[int] = field(default_factory=set)
    started_at: float = 0.0


class ReplicaCore:
    def __init__(
        self,
        config: ProtocolConfig,
        current_epoch: int,
        now: float,
        *,
        ids_after: int = 0,
        membership: Membership | None = None,
    ) -> None:
        """`ids_after`: stream and ack ids start above it -- a core restarted in a running
        process (the executor's, after a failed durable write) must not reuse its
        predecessor's ids, which late messages may still carry. `membership`: the latest in
        the log (by default the config's members: a log without membership events)."""
        self.config = config
        self.current_epoch = current_epoch  # durable (as far as the effects were carried out)
        self.role = Role.CANDIDATE
        self.primary_index: int | None = None
        self.following = Following()
        self.in_sync_set: InSyncSet | None = None  # while primary (or about to be)
        # The latest membership in this replica's log (membership.py), as the shell last said.
        self.membership = membership or Membership.initial(config.members)
        self._left = False  # told the shell it was removed (LeaveCluster)
        self.election: Election | None = None
        self.started_at = now
        self._last_input_at = now
        self._next_stream_id = ids_after
        self._next_ack_id = ids_after
        # As primary: when each peer last answered anything (a probe, an ack), and whether its
        # last probe showed its process gone -- to step down once cut off (_check_cut_off).
        self._last_answer: dict[int, float] = {}
        self._last_ack: dict[int, float] = {}
        self._gone: set[int] = set()
        self._announced: tuple[Role, int, int | None] | None = None
        self._last_election_view: object = None
        self._out: list[Effect] = []
        self._handlers: dict[type[Any], Callable[[Any, float], None]] = {
            Tick: self._tick,
            ProbesAnswered: self._probes_answered,
            ProbeReceived: self._probe_received,
            VoteRequested: self._vote_requested,
            VoteReplied: self._vote_replied,
            EpochStartAppended: self._epoch_start_appended,
            EpochStartFailed: self._epoch_start_failed,
            Appended: self._appended,
            Written: self._written,
            LocalWriteFailed: self._local_write_failed,
            DivergenceReceived: self._divergence_received,
            BatchReceived: self._batch_received,
            BatchStored: self._batch_stored,
            StoreFailed: self._store_failed,
            HeartbeatReceived: self._heartbeat_received,
            ReplicationStreamEnded: self._replication_stream_ended,
            SecondaryHello: self._secondary_hello,
            SecondaryAcked: self._secondary_acked,
            SendWanted: self._send_wanted,
            SecondaryDisconnected: self._secondary_disconnected,
            DatabaseFailed: self._database_failed,
            MembershipChanged: self._membership_changed,
        }

    # -- the one entry point -------------------------------------------------------------

    def step(self, now: float, event: Input) -> Ready:
        """Advance the state machine by one input observed at monotonic time `now`."""
        out: list[Effect] = []
        self._out = out
        self._observe_time(now)
        self._handlers[type(event)](event, now)
        self._announce_role()
        self._out = []
        return Ready.of(out)

    @property
    def last_input_at(self) -> float:
        """When it last took an input: a gap after it longer than the pause threshold means
        the process did not run (_observe_time)."""
        return self._last_input_at

    @property
    def last_id(self) -> int:
        """The highest stream or ack id used so far (see `ids_after`)."""
        return max(self._next_stream_id, self._next_ack_id)

    # -- views (read-only) -----------------------------------------------------------------

    def vouches(self, now: float) -> bool:
        """Holds every event the latest primary acknowledged: in its in-sync set and knows it,
        confirmed lately (see rules.vouches and rules.electable)."""
        f = self.following
        if self.role is Role.PRIMARY or self.in_sync_set is not None or not self.is_voter:
            return False
        confirmed_for = None if f.confirmed_at == float("-inf") else now - f.confirmed_at
        return rules.vouches(f.in_sync, confirmed_for, self.config.vouch_window)

    def claim(self) -> int | None:
        """The primary that counted this replica in sync when last heard, if nothing since
        says otherwise -- however long ago: that primary acknowledges nothing without an
        in-sync secondary while this one may still claim, so with every replica but it
        present an election holds every acknowledged event (rules.electable)."""
        f = self.following
        if self.role is Role.PRIMARY or self.in_sync_set is not None or not f.in_sync:
            return None
        if not self.is_voter:
            return None
        return f.counted_by

    @property
    def is_voter(self) -> bool:
        return self.membership.is_voter(self.config.index)

    def election_voters(self) -> frozenset[int]:
        """Whose votes an election needs when they answer (or are silent and may be
        running): the latest membership's voters once its change is known committed; until
        then, the voters before it too. A voter being removed may still vouch for its log
        until it hears it is out: an election must not go ahead without it (the remaining
        voters could elect, as every voter of the new membership, and acknowledge without it
        while it vouches, and it could elect itself in turn). Its vote ends its vouch. Dead,
        it vouches for nothing and is not waited for; candidates and presence are counted
        over the latest voters alone (a removal committed leaves no one waiting for the
        replica that left)."""
        m = self.membership
        if self._change_known_committed():
            return m.voters
        return m.voters_in_transition

    def _change_known_committed(self) -> bool:
        iss = self.in_sync_set
        known_committed = iss.commit_point if iss is not None else self.following.committed_seq
        return known_committed >= self.membership.seq

    def electing_voters(self) -> frozenset[int]:
        """The voters of the membership this replica's own elections are held in: the
        latest's -- but a replica that the latest change removes, not known committed yet,
        holds them in the membership before it, where it is a voter still. Its log may be
        the longest (the primary that wrote the removal may have lost its own copy: its
        local commit failed after streaming), and no one else could be elected: the others
        choose it, and it refuses a shorter log its vote. Elected, it commits its removal
        with its epoch_started, and steps down and leaves (_check_removed_primary)."""
        m = self.membership
        if self.config.index in m.voters or m.voters_before is None:
            return m.voters
        if self._change_known_committed():
            return m.voters
        return m.voters_before

    def _being_removed(self) -> frozenset[int]:
        """The voter the latest membership change removes, while it is not known committed."""
        m = self.membership
        if m.voters_before is None or self._change_known_committed():
            return frozenset()
        return m.voters_before - m.voters

    def probe_targets(self) -> tuple[int, ...]:
        """The replicas a probe round asks: every member, and a voter being removed while an
        election still needs its vote (election_voters)."""
        targets = self.membership.members | self.election_voters()
        return tuple(sorted(targets - {self.config.index}))

    def probe_round_targets(self, now: float) -> tuple[int, ...]:
        """The replicas this tick's probe round asks: the probe targets whose replication
        stream with this replica is not alive. A live stream proves what a probe would: a
        primary hears each streaming secondary ack every heartbeat (it runs, follows this
        epoch -- one that learns of a newer epoch ends its stream at the next message -- and
        its log ends where it acked); a secondary hears its primary's heartbeats (alive, and
        primary of an epoch it accepts). So a primary probes only the peers whose streams are
        quiet or absent -- and every peer until it has run for the awake window since it began
        or woke from a pause, when it must learn of any newer epoch first -- and a secondary
        whose stream is alive probes no one: a newer primary reaches it with its own probes
        (it probes every replica not streaming from it), and its primary, once deposed, stops
        streaming to it. Empty: no round."""
        targets = self.probe_targets()
        iss = self.in_sync_set
        if iss is not None:
            if self.role is not Role.PRIMARY or not iss.awake(now):
                return targets
            streaming = iss.streaming(now)
            return tuple(p for p in targets if p not in streaming)
        if self.stream_alive(now):
            return ()
        return targets

    def stream_alive(self, now: float) -> bool:
        """As a secondary: its stream is past its divergence exchange and its primary was heard
        on it within stream_quiet_after (a heartbeat, a batch)."""
        f = self.following
        return (
            f.stream_id is not None
            and f.streaming
            and now - f.last_contact <= self.config.stream_quiet_after
        )

    def voter_peers(self) -> tuple[int, ...]:
        return tuple(sorted(self.membership.voters - {self.config.index}))

    def membership_change_refusal(
        self, change: MembershipChange, now: float, latest: Membership | None = None
    ) -> str | None:
        """Why the primary must not write `change` now, if it must not: the rules of
        single-server changes. Only a primary changes membership, once the start of its epoch
        is committed (what an earlier primary began is settled first: hashicorp/raft's
        configurationChangeChIfStable), one change at a time (the previous one committed, so
        the memberships any two replicas act on differ by one replica at most), indexes never
        reused, never below min_insync voters or without its own vote, and a learner promoted
        only once it keeps up."""
        iss = self.in_sync_set
        if iss is None or self.role is not Role.PRIMARY:
            return "this replica is not the primary"
        if iss.epoch_start_seq is None or iss.commit_point < iss.epoch_start_seq:
            return (
                f"the primary has not committed the start of its epoch {iss.epoch} yet "
                "(until it has, what an earlier primary began is not settled); try again shortly"
            )
        # `latest`: the writer's, which may be ahead of what this core was told yet.
        membership = latest or self.membership
        pending = membership.seq
        if pending > iss.commit_point:
            return (
                f"a membership change is in progress (the event at seq {pending} is not "
                f"committed yet: {membership.describe()}); try again once it is"
            )
        refusal = membership.refusal(change)
        if refusal is not None:
            return refusal
        index = change.index
        if change.kind is ChangeKind.REMOVE:
            if index == self.config.index:
                return (
                    f"replica {index} is the primary: it cannot remove itself (stop it, or "
                    "let another replica take over, then remove it)"
                )
            left = len(membership.voters - {index})
            if membership.is_voter(index) and left < self.config.min_insync:
                return (
                    f"removing replica {index} would leave {left} voter(s), fewer than "
                    f"min_insync={self.config.min_insync}"
                )
        if change.kind is ChangeKind.PROMOTE:
            return iss.promotion_refusal(index, now)
        return None

    def following_live_primary(self, now: float) -> bool:
        f = self.following
        return f.streaming and now - f.last_contact < self.config.peer_timeout

    def status(self, now: float) -> ReplicaStatus:
        iss = self.in_sync_set
        primary = self.role is Role.PRIMARY
        return ReplicaStatus(
            index=self.config.index,
            role=self.role,
            epoch=self.current_epoch,
            primary_index=self.primary_index,
            in_sync=primary or self.following.in_sync,
            vouches=self.vouches(now),
            following_live_primary=self.following_live_primary(now),
            secondaries=iss.statuses(now) if primary and iss is not None else (),
            claim=self.claim(),
        )

    def write_refusal(self) -> str | None:
        """Why a client write must be refused now (too few in sync), if it must. Whether this
        replica is primary at all is told by SetRole."""
        iss = self.in_sync_set
        if iss is None or self.role is not Role.PRIMARY:
            return "this replica is not the primary"
        return iss.refusal()

    def has_more_to_send(self, secondary: int, stream_id: int) -> bool:
        """As primary: whether the stream to `secondary` lacks events of the log (the shell
        asks what to send next when it does, and on every tick for heartbeats)."""
        iss = self.in_sync_set
        return iss is not None and iss.has_more_to_send(secondary, stream_id)

    @property
    def commit_point(self) -> int | None:
        """A primary's commit point (None when not primary)."""
        iss = self.in_sync_set
        return iss.commit_point if iss is not None and self.role is Role.PRIMARY else None

    # -- time ------------------------------------------------------------------------------

    def _observe_time(self, now: float) -> None:
        gap = now - self._last_input_at
        if now > self._last_input_at:
            self._last_input_at = now
        if gap > self.config.pause_threshold:
            self._woke_from_pause(gap, now)

    def _woke_from_pause(self, gap: float, now: float) -> None:
        """No input for `gap` seconds: this process was not running (SIGSTOP, a stall of the
        whole process), and the others may have moved on meanwhile."""
        self._out.append(LogNote("warning", f"was paused for {gap:.2f}s"))
        self.following.in_sync = False
        iss = self.in_sync_set
        if iss is None:
            # What waits on its stream was sent while it was paused: a primary's "in sync"
            # from before it was dropped. A new stream carries only what is said from now on.
            self._end_stream(f"paused for {gap:.2f}s; reconnecting for fresh news")
            return
        iss.woke(now)
        self._last_answer = dict.fromkeys(self._last_answer, now)
        if gap > self.config.peer_timeout:
            # Long enough for the others to have elected a new primary, which this one
            # cannot rule out when it cannot reach them: acknowledging anything more
            # could contradict what the new primary acknowledged.
            self._step_down(f"paused for {gap:.2f}s, the others may have elected")

    # -- epochs and roles ------------------------------------------------------------------

    def _observe_epoch(self, epoch: int, own: bool = False) -> None:
        """Durably record a newer epoch; a primary that sees one steps down. Unless the epoch
        is this replica's own (its vote, its candidacy), its primary did not count this
        replica and may acknowledge without it: the vouch ends."""
        if epoch <= self.current_epoch:
            return
        self.current_epoch = epoch
        self._out.append(PersistEpoch(epoch))
        if not own:
            self.following.in_sync = False
            self.following.vouched_at_vote = False
        if self.election is not None and self.election.epoch < epoch:
            self.election = None
        if self.in_sync_set is not None:
            self._step_down(f"a newer epoch {epoch} exists")

    def _check_cut_off(self, outcomes: tuple[ProbeOutcome, ...], now: float) -> None:
        """A primary that has heard nothing from any replica whose process may be running for
        longer than insync_timeout steps down: those replicas may be electing without it, and
        it can acknowledge nothing without them anyway (InSyncSet: alone only once the others
        are known dead). So it stops saying it is primary, and clients go elsewhere."""
        for o in outcomes:
            if o.view is not None or o.refused:
                self._last_answer[o.index] = now
            if o.process_gone:
                self._gone.add(o.index)
            else:
                self._gone.discard(o.index)
        running = [p for p in self.voter_peers() if p not in self._gone]
        timeout = self.config.insync_timeout
        # A peer acking on its stream runs, whatever a probe round that began before it
        # restarted says: a stale "gone" must not make a primary with a live secondary step down.
        acking = any(now - t <= timeout for t in self._last_ack.values())
        if (
            running
            and not acking
            and all(now - self._last_answer.get(p, now) > timeout for p in running)
        ):
            names = ", ".join(str(p) for p in running)
            self._step_down(f"no answer from replica(s) {names} for more than {timeout:.1f}s")

    def _step_down(self, reason: str) -> None:
        if self.in_sync_set is None:
            return
        self.in_sync_set = None
        self.role = Role.SECONDARY
        self.primary_index = None
        self._out.append(StepDown(reason))
        self._out.append(WakeSenders())

    def _announce_role(self) -> None:
        state = (self.role, self.current_epoch, self.primary_index)
        if state != self._announced:
            self._announced = state
            self._out.append(SetRole(*state))

    # -- following -------------------------------------------------------------------------

    def _set_target(self, primary: int, epoch: int) -> None:
        self._observe_epoch(epoch)
        self._step_down(f"replica {primary} is primary of epoch {epoch}")
        self.election = None
        self.following.lost_primary = None
        self.following.voted_at = float("-inf")  # (a primary found: its loss is news of its own)
        if self.following.target != (primary, epoch):
            self._out.append(LogNote("info", f"following replica {primary} (epoch {epoch})"))
            self.following.target = (primary, epoch)
            self._open_stream()
        self.role = Role.SECONDARY
        self.primary_index = primary

    def _open_stream(self) -> None:
        f = self.following
        assert f.target is not None
        self._end_stream()
        self._next_stream_id += 1
        f.stream_id = self._next_stream_id
        f.stream_primary = f.target[0]
        f.stream_opened_at = self._last_input_at
        f.acks_sent.clear()
        self._out.append(OpenStream(f.stream_id, f.target[0], self.current_epoch))

    def _end_stream(self, reason: str = "") -> None:
        f = self.following
        if f.stream_id is not None:
            self._out.append(CancelStream(f.stream_id, reason))
            self._stream_lost()

    def _stream_lost(self) -> None:
        f = self.following
        f.streaming = False
        f.stream_id = None
        f.stream_primary = None
        f.receiving.clear()
        f.superseded = 0

    def _forget_target(self) -> None:
        self.following.target = None
        self._end_stream()

    def _on_current_stream(self, stream_id: int) -> bool:
        if stream_id == self.following.stream_id:
            return True
        self._out.append(CancelStream(stream_id, "no longer wanted"))
        return False

    def _from_current_primary(self, stream_id: int, primary_epoch: int) -> bool:
        """A message on the stream this replica wants, from a primary it may follow."""
        return self._on_current_stream(stream_id) and self._accept_primary_epoch(
            stream_id, primary_epoch
        )

    def _accept_primary_epoch(self, stream_id: int, primary_epoch: int) -> bool:
        """Fencing: a stream from a primary of an older epoch than this replica has seen is
        refused (that primary was deposed)."""
        if primary_epoch >= self.current_epoch:
            self._observe_epoch(primary_epoch)
            return True
        f = self.following
        primary = f.stream_primary
        self._out.append(
            LogNote(
                "info",
                f"primary {primary} is at epoch {primary_epoch}, older than "
                f"{self.current_epoch}: stream refused",
            )
        )
        if f.target is not None and f.target[0] == primary:
            f.target = None
        self._end_stream("older epoch")
        return False

    # -- inputs: the cluster ---------------------------------------------------------------

    def _tick(self, event: Tick, now: float) -> None:
        self._check_storage(event.storage_busy_since, now)
        peers = self.probe_round_targets(now)
        primary = self.in_sync_set is not None and self.role is Role.PRIMARY
        if peers or not (primary or self.stream_alive(now)):
            # (A round with nobody to ask still comes back: a lone voter elects on it.)
            self._out.append(ProbeAll(self.current_epoch, primary, peers=peers))
        elif primary:
            # Every peer streams: what a round would bring -- answers, no one gone, no newer
            # epoch -- the streams brought. The in-sync set's timeouts and the cut-off check
            # run as after a round (a laggard acking heartbeats is removed all the same).
            self._round_heard((), now)
        f = self.following
        if (
            f.stream_id is not None
            and now - max(f.last_contact, f.stream_opened_at) > self.config.peer_timeout
        ):
            # Nothing on the stream for this long -- no heartbeat, no answer to its Hello --
            # while probes may show its primary alive (so no election moves this replica
            # on): it is given up and opened again.
            self._end_stream("silent for longer than the peer timeout; reconnecting")
        if (
            f.target is not None
            and f.stream_id is None
            and self.in_sync_set is None
            and self.election is None
            # A primary that refuses at once is retried once a heartbeat interval, no faster.
            and now - f.stream_opened_at >= self.config.heartbeat_interval
        ):
            self._open_stream()
        e = self.election
        if e is not None and now - e.started_at > 2 * self.config.peer_timeout:
            # Every vote call has a deadline of peer_timeout: an answer that never came means
            # the shell lost it. Give up; a later round may elect.
            self.election = None

    def _check_storage(self, busy_since: float | None, now: float) -> None:
        """A primary (or a candidate appending its epoch_started) whose own database has made
        no progress for storage_timeout hands over while a secondary that is in sync could take
        over: its writes wait, and with them every client, however healthy the others are
        (fail-slow storage: a stuck disk or server). Stepping down is always safe -- it is
        what a crash does -- and its stalled database keeps it from being elected meanwhile
        (it answers its peers UNAVAILABLE: Executor.probe). With no such secondary it stays:
        no one else could acknowledge anything either."""
        iss = self.in_sync_set
        if iss is None or busy_since is None:
            return
        stalled = now - busy_since
        if stalled <= self.config.storage_timeout:
            return
        successor = iss.successor(now)
        if successor is None:
            return
        self._step_down(
            f"its database has made no progress for {stalled:.1f}s (storage timeout "
            f"{self.config.storage_timeout:.1f}s); replica {successor} is in sync and can take over"
        )

    def _probes_answered(self, event: ProbesAnswered, now: float) -> None:
        live = [o.view for o in event.outcomes if o.view is not None]
        # Only members' epochs depose a primary: a removed replica's candidacies must not
        # disrupt the others. (A primary is followed whoever it is: one elected after a
        # change this replica has not stored yet may be no member in its eyes.) A voter whose
        # removal is not committed yet counts: it may still be elected in the membership
        # before it (electing_voters) -- the membership model found a primary that had
        # written such a removal ignore that voter's newer epoch for good.
        deposing = self.membership.members | self.election_voters()
        newest = max((v.epoch for v in live if v.index in deposing), default=0)
        iss = self.in_sync_set
        if iss is not None:
            if newest > self.current_epoch:
                self._observe_epoch(newest)
            elif self.role is Role.PRIMARY:
                self._round_heard(event.outcomes, now)
            return  # (or waiting for its epoch_started event to be durable)
        if event.ended_at is not None and now - event.ended_at > self.config.probe_timeout:
            # Heard long after it ended (its own position's read waited behind a stalled
            # database): the others may have elected since, and an election on these views
            # would depose a primary they follow. The next round sees them as they are.
            return
        primaries = [v for v in live if v.role is Role.PRIMARY and v.epoch >= self.current_epoch]
        if primaries:
            best = max(primaries, key=lambda v: v.epoch)
            self._set_target(best.index, best.epoch)
            # Not streaming from it yet: the vouch ends with the stream anyway (`vouches`).
            return
        if self.following_live_primary(now) or self.election is not None:
            return
        asked = {o.index for o in event.outcomes} | {self.config.index}
        if not self.election_voters() <= asked:
            # A round that asked only some voters -- begun as primary, of the peers whose
            # streams were silent -- says nothing of the others: one may be running and
            # vouching. An election waits for a round that asked them all (the membership
            # model found an election without a vouching voter on such a round).
            return
        if self.config.index not in self.electing_voters():
            return  # a learner (or a removed replica) follows; it never elects
        f = self.following
        if now - f.voted_at < self.config.peer_timeout:
            return  # (the candidate it voted for may have won and not reached it yet)
        quiet_since = max(f.last_contact, self.started_at)
        # A primary whose stream broke and whose host refuses connections is gone (a killed
        # process closes its sockets at once); only a silent one needs the full timeout. Any
        # other UNAVAILABLE is not gone: a primary whose database fails answers probes that
        # way while it lives on, and may acknowledge again once its database is back.
        target_gone = f.target is not None and any(
            o.index == f.target[0] and o.process_gone for o in event.outcomes
        )
        quiet = now - quiet_since < self.config.peer_timeout
        if f.target is not None and not target_gone and quiet:
            return
        if any(v.following_live_primary for v in live):
            return  # someone still hears a primary; we will learn of it
        if event.own_position is None:
            return  # its own log's end is unknown: no election on it
        lost = f.target[0] if f.target is not None else f.lost_primary
        electing = self.election_voters()
        voting = tuple(o for o in event.outcomes if o.index in electing)
        silent = rules.may_be_vouching_unheard(voting, lost, self.config.min_insync)
        self._elect(live, event.own_position, now, silent)

    def _round_heard(self, outcomes: tuple[ProbeOutcome, ...], now: float) -> None:
        """As primary: a probe round's outcomes (of the peers it asked: those whose streams are
        not alive) are in. Members gone or silent too long leave the in-sync set; a primary
        that hears no one steps down."""
        iss = self.in_sync_set
        assert iss is not None
        gone = {o.index for o in outcomes if o.process_gone}
        iss.evaluate(now, gone, self._out)
        self._check_cut_off(outcomes, now)

    def _elect(
        self,
        live: list[PeerView],
        own_position: LogPosition,
        now: float,
        silent: tuple[int, ...] = (),
    ) -> None:
        """`silent`: peers that did not answer in time but may be running and vouching
        (rules.may_be_vouching_unheard): they are asked for their votes too, and the election
        succeeds only with them -- so the new primary counts them in its in-sync set."""
        claim = self.claim()  # before the stream ends: it stays, the vouch may not
        if self.following.target is not None:
            self.following.lost_primary = self.following.target[0]
        self._forget_target()
        mine = rules.CandidateView(
            self.config.index, own_position, self.current_epoch, self.vouches(now), claim
        )
        voters = self.electing_voters()
        electorate = [mine] + [
            rules.CandidateView(v.index, v.position, v.epoch, v.vouches, v.claim)
            for v in live
            if v.role is not Role.PRIMARY and v.index in voters
        ]
        # A voter being removed (its removal not known committed) is no candidate and stands
        # for no one, but must vote, as a silent one must: it may still vouch for its log.
        asking = self.election_voters()
        leaving_views = [
            rules.CandidateView(v.index, v.position, v.epoch, v.vouches, v.claim)
            for v in live
            if v.role is not Role.PRIMARY and v.index not in voters and v.index in asking
        ]
        leaving = tuple(c.index for c in leaving_views)
        # Every replica names the same candidate: a voter being removed (this one too, which
        # counts itself in the membership before the change) only if its log is strictly
        # ahead; otherwise two would stand against each other in every round.
        choice = rules.choose_primary(electorate, voters, leaving_views, self._being_removed())
        self.role = Role.CANDIDATE
        self.primary_index = None
        self._note_electorate(electorate, choice, silent)
        if choice != self.config.index:
            return
        if len(electorate) < rules.votes_needed(self.config.min_insync, len(voters)):
            return
        epoch = rules.next_epoch(max(c.epoch for c in electorate), self.config.index)
        self._observe_epoch(epoch, own=True)
        asked = (
            tuple(c.index for c in electorate if c.index != self.config.index) + leaving + silent
        )
        self.election = Election(epoch, own_position, asked, set(asked), now)
        if asked:
            self._out.append(RequestVotes(epoch, own_position, asked))
        else:
            self._become_primary(now)

    def _note_electorate(
        self,
        electorate: list[rules.CandidateView],
        choice: int | None,
        silent: tuple[int, ...],
    ) -> None:
        summary = (
            tuple(
                (c.index, c.position.epoch, c.position.seq, c.vouches, c.claim) for c in electorate
            ),
            choice,
            silent,
        )
        if summary == self._last_election_view:
            return
        self._last_election_view = summary
        members = ", ".join(
            f"{c.index}@{c.position.epoch}.{c.position.seq}"
            + ("*" if c.vouches else "")
            + (f"(in sync with {c.claim})" if c.claim is not None and not c.vouches else "")
            for c in electorate
        )
        outcome = (
            "none yet (waiting for a replica that was in sync, or for all replicas)"
            if choice is None
            else f"replica {choice}"
        )
        if silent and choice is not None:
            names = ", ".join(str(i) for i in silent)
            outcome += f", whose votes must include replica(s) {names} (no answer: may be vouching)"
        self._out.append(LogNote("info", f"no live primary; electorate {members} -> {outcome}"))

    def _probe_received(self, event: ProbeReceived, now: float) -> None:
        if (
            event.from_primary
            and event.from_epoch >= self.current_epoch
            and self.role is not Role.PRIMARY
            and self.following.target != (event.from_index, event.from_epoch)
            and event.from_index != self.config.index
        ):
            # A new primary announces itself: follow it now rather than at our next probe.
            self._set_target(event.from_index, event.from_epoch)
        self._announce_role()
        self._out.append(ReplyProbe(self.status(now)))

    def _vote_requested(self, event: VoteRequested, now: float) -> None:
        def refuse(reason: str) -> None:
            self._out.append(ReplyVote(False, self.current_epoch, reason))

        # (No membership check, as in Raft: a candidate whose log is more up to date may know
        # of a change this replica has not stored yet -- its own promotion, the candidate's
        # addition -- and refusing would leave the best log without a primary for good. A
        # removed replica's log lacks its removal: those that hold it refuse it as less up
        # to date, and it leaves once it learns of it.)
        if event.epoch <= self.current_epoch:
            return refuse(f"epoch {event.epoch} is not newer than {self.current_epoch}")
        if self.in_sync_set is not None:
            return refuse("I am the primary and alive")
        if self.following_live_primary(now):
            return refuse(f"I follow a live primary (replica {self.following.stream_primary})")
        mine = event.own_position
        if rules.less_up_to_date(event.position, mine):
            return refuse(f"my log ({mine.epoch}, {mine.seq}) is more up to date")
        # A voter keeps vouching for its log: the new primary counts it in its in-sync set
        # from the start, so acknowledges nothing without it. The vote is the epoch, recorded
        # durably before the reply (an epoch names one candidate).
        f = self.following
        f.vouched_at_vote = self.vouches(now)
        f.voted_at = now
        if f.in_sync:
            f.counted_by = event.candidate  # which counts its voters in sync from the start
        self._observe_epoch(event.epoch, own=True)
        self._end_stream("voted in a newer epoch")
        self._out.append(
            LogNote("info", f"voted for replica {event.candidate} in epoch {event.epoch}")
        )
        self._out.append(ReplyVote(True, event.epoch))

    def _vote_replied(self, event: VoteReplied, now: float) -> None:
        e = self.election
        if e is None or e.epoch != event.epoch:
            return
        if event.granted:
            e.waiting.discard(event.voter)
            if not e.waiting:
                self._become_primary(now)
            return
        self.election = None
        self._out.append(
            LogNote(
                "info",
                f"election for epoch {e.epoch} failed: replica {event.voter}: {event.reason}",
            )
        )
        self._observe_epoch(event.voter_epoch)

    def _become_primary(self, now: float) -> None:
        e = self.election
        self.election = None
        if e is None or self.current_epoch != e.epoch or self.in_sync_set is not None:
            return  # a newer epoch appeared while votes were collected
        self._forget_target()
        f = self.following
        f.in_sync = False
        f.lost_primary = None
        point = min(f.committed_seq, e.position.seq)
        self._out.append(ResetCommit(point))
        self.in_sync_set = InSyncSet(
            self.config, e.epoch, e.position.seq, point, e.voters, now, self.membership
        )
        # The new epoch starts durably, in the log, before any client write: committing
        # this event also commits every earlier event the new primary holds. Until then the
        # role stays candidate, so nothing else is written in this epoch.
        self._out.append(AppendEpochStarted(e.epoch))

    def _epoch_start_appended(self, event: EpochStartAppended, now: float) -> None:
        iss = self.in_sync_set
        if iss is None or self.role is Role.PRIMARY or iss.epoch != self.current_epoch:
            return
        self.role = Role.PRIMARY
        self.primary_index = self.config.index
        self._last_answer = dict.fromkeys(self.voter_peers(), now)
        self._last_ack = {}
        self._gone = set()
        iss.started(event.position.seq, now, self._out)
        self._out.append(
            LogNote("info", f"primary for epoch {iss.epoch} (epoch started at seq {iss.last_seq})")
        )
        self._announce_role()
        self._out.append(
            ProbeAll(self.current_epoch, True, announce=True, peers=self.probe_targets())
        )

    def _epoch_start_failed(self, event: EpochStartFailed, now: float) -> None:
        if self.in_sync_set is None or self.role is Role.PRIMARY:
            return
        self.in_sync_set = None
        self._out.append(WakeSenders())
        self._out.append(
            LogNote("warning", f"could not start epoch {self.current_epoch}: {event.reason}")
        )

    def _appended(self, event: Appended, now: float) -> None:
        iss = self.in_sync_set
        if iss is not None and self.role is Role.PRIMARY:
            iss.appended(event.last_seq, now, self._out)
            self._check_removed_primary()

    def _check_removed_primary(self) -> None:
        """A primary elected in the membership before its own removal (electing_voters) has
        committed that removal: it steps down and leaves, once."""
        m = self.membership
        iss = self.in_sync_set
        if iss is None or self.config.index in m.voters or iss.commit_point < m.seq:
            return
        self._step_down(f"its own removal (the event at seq {m.seq}) is committed")
        if not self._left:
            self._left = True
            self._out.append(
                LeaveCluster(
                    f"replica {self.config.index} was removed from the cluster (the event at "
                    f"seq {m.seq}, committed; {m.describe()})"
                )
            )

    def _written(self, event: Written, now: float) -> None:
        iss = self.in_sync_set
        if iss is not None and self.role is Role.PRIMARY:
            iss.written(event.last_seq, now, self._out)

    def _local_write_failed(self, event: LocalWriteFailed, now: float) -> None:
        """Its secondaries may hold events its own log lacks (or, in doubt, the other way
        round): writing on at those seqs in this epoch would give one (epoch, seq) two events.
        It steps down; the next election (a new epoch) picks the longest log, its
        epoch_started event commits what it holds, and a divergent tail is truncated as after
        any crash. (Even a batch no stream was sent yet: its commit may have happened.)"""
        iss = self.in_sync_set
        if iss is not None and iss.epoch == event.epoch:
            self._step_down(f"its own commit of streamed events failed: {event.reason}")

    # -- inputs: a secondary's stream ------------------------------------------------------

    def _divergence_received(self, event: DivergenceReceived, now: float) -> None:
        if not self._from_current_primary(event.stream_id, event.primary_epoch):
            return
        f = self.following
        f.last_contact = now
        cut = rules.truncation_point(
            event.own_last, event.primary_end, event.own_end_for_primary_epoch
        )
        if cut < event.own_last.seq:
            self._out.append(Truncate(cut))
            self._out.append(SendHello(event.stream_id, self.current_epoch))
            return
        f.streaming = True
        f.stored = event.own_last
        self._send_ack(event.stream_id, now)

    def _batch_received(self, event: BatchReceived, now: float) -> None:
        if not self._from_current_primary(event.stream_id, event.primary_epoch):
            return
        self.following.receiving.append(now)
        self._out.append(StoreBatch(event.stream_id))

    def _batch_stored(self, event: BatchStored, now: float) -> None:
        f = self.following
        if event.stream_id != f.stream_id:
            return  # stored, but its stream is gone: no ack
        took = now - f.receiving.popleft() if f.receiving else None
        stale = f.superseded > 0
        f.superseded = max(0, f.superseded - 1)
        f.stored = event.position
        if took is not None and took >= self.config.vouch_window:
            # Storing took long enough for the primary to have dropped this replica meanwhile:
            # the batch's "in sync", and that of whatever waits behind it on the stream, is
            # old news. A new stream carries only what the primary says from now on.
            f.in_sync = False
            if not self.is_voter:
                # A learner (or a replica being removed) vouches for nothing: it drops what
                # the batch said of "in sync" and goes on. A new stream would only resend
                # what was in flight -- a learner catching up slowly did, over and over
                # (the membership bench: 26-36 reconnections, half its rate).
                stale = True
            else:
                reason = f"storing a batch took {took:.2f}s; reconnecting for fresh news"
                self._out.append(LogNote("warning", reason))
                self._end_stream(reason)
                return
        if stale:
            # A heartbeat sent after this batch was heard already: only the stored position
            # is news (acked with what that newer word said).
            f.last_contact = now
            self._send_ack(event.stream_id, now)
            self._out.append(SecondaryCommitted(min(f.committed_seq, f.stored.seq)))
            self._check_removed()
            return
        self._heard_primary(event.stream_id, event.in_sync, event.committed_seq, event.echo, now)

    def _store_failed(self, event: StoreFailed, now: float) -> None:
        if event.stream_id == self.following.stream_id:
            self._end_stream(f"storing failed: {event.reason}")

    def _heartbeat_received(self, event: HeartbeatReceived, now: float) -> None:
        if not self._from_current_primary(event.stream_id, event.primary_epoch):
            return
        if self.following.stored is None or not self.following.streaming:
            return
        # Acked too: it tells the primary this replica is alive and what it believes about
        # its membership (the primary removes a member only once it knows). What the batches
        # still being stored said is older news than this.
        self.following.superseded = len(self.following.receiving)
        self._heard_primary(event.stream_id, event.in_sync, event.committed_seq, event.echo, now)

    def _heard_primary(
        self, stream_id: int, in_sync: bool, committed_seq: int, echo: int, now: float
    ) -> None:
        """The primary's batch is stored, or its heartbeat arrived: note what it said of this
        replica's membership and of the commit point, and ack the log's end."""
        f = self.following
        assert f.stored is not None
        f.last_contact = now
        # Being in the set is not yet holding every acknowledged event: a new primary counts its
        # voters in sync from the start, caught up or not (it acknowledges nothing without
        # them). A voter that vouched when it voted still does; any other replica vouches
        # only once it holds this epoch's epoch_started, and with it all the primary held
        # when the epoch began (its log is a prefix of the primary's). A voter that only
        # claimed (rules.electable) keeps claiming: its new primary counts it.
        holds_epoch = f.stored.epoch >= self.current_epoch
        f.in_sync = in_sync and (f.in_sync or holds_epoch) and self.is_voter
        if f.in_sync:
            f.counted_by = f.stream_primary
            sent = f.acks_sent.get(echo)
            if sent is not None and (holds_epoch or f.vouched_at_vote):
                f.confirmed_at = max(f.confirmed_at, sent)
        if echo in f.acks_sent:
            for old in [i for i in f.acks_sent if i < echo]:
                del f.acks_sent[old]
        f.committed_seq = committed_seq
        self._send_ack(stream_id, now)
        self._out.append(SecondaryCommitted(min(committed_seq, f.stored.seq)))
        self._check_removed()

    def _check_removed(self) -> None:
        """Removed, and the removal committed (its primary said so): it stops, once. Until
        then it follows like a learner, so that the removal can commit on its ack."""
        m = self.membership
        f = self.following
        if self._left or m.is_member(self.config.index) or self.config.index not in m.removed:
            return
        if f.committed_seq < m.seq or f.stored is None or f.stored.seq < m.seq:
            return
        self._left = True
        self._out.append(
            LeaveCluster(
                f"replica {self.config.index} was removed from the cluster (the event at seq "
                f"{m.seq}, committed; {m.describe()})"
            )
        )

    def _send_ack(self, stream_id: int, now: float) -> None:
        f = self.following
        assert f.stored is not None
        self._next_ack_id += 1
        f.acks_sent[self._next_ack_id] = now
        if len(f.acks_sent) > MAX_UNECHOED_ACKS:
            del f.acks_sent[min(f.acks_sent)]
        self._out.append(SendAck(stream_id, f.stored, f.in_sync, self._next_ack_id))

    def _replication_stream_ended(self, event: ReplicationStreamEnded, now: float) -> None:
        if event.stream_id == self.following.stream_id:
            self._stream_lost()

    def _membership_changed(self, event: MembershipChanged, now: float) -> None:
        before = self.membership
        after = event.membership
        if after == before:
            return
        self.membership = after
        self._out.append(LogNote("info", f"membership as of seq {after.seq}: {after.describe()}"))
        iss = self.in_sync_set
        if iss is not None:
            iss.membership_changed(after, now, self._out)
        if not self.is_voter:
            # A learner, or a replica removed: it vouches and claims nothing, votes for no one
            # and elects no one (it follows, so that a removal can commit on its ack).
            self.following.in_sync = False
            self.following.vouched_at_vote = False
            self.election = None
            if iss is not None:
                self._step_down(f"replica {self.config.index} is no longer a voter")

    def _database_failed(self, event: DatabaseFailed, now: float) -> None:
        """Its peer is about to hear UNAVAILABLE, and may elect without it on that answer (a
        replica that cannot read its log has no say): by then it must have stopped vouching,
        or it would vouch later -- its database back -- for a log without what that election
        brought. Only a new stream from a primary that counts it can renew the vouch."""
        if self.in_sync_set is not None:
            return  # a primary's writes fail on their own; it vouches for nothing anyway
        if self.following.in_sync:
            self._out.append(
                LogNote("warning", f"its database failed ({event.reason}): stops vouching")
            )
        self.following.in_sync = False
        self._end_stream(f"its database failed: {event.reason}")

    # -- inputs: a primary's streams -------------------------------------------------------

    def _secondary_hello(self, event: SecondaryHello, now: float) -> None:
        if event.secondary_epoch > self.current_epoch:
            self._observe_epoch(event.secondary_epoch)
            self._out.append(RefuseStream(event.secondary, "a newer epoch exists; stepping down"))
            return
        iss = self.in_sync_set
        if iss is None or iss.epoch != self.current_epoch:
            self._out.append(RefuseStream(event.secondary, "this replica is not the primary"))
            return
        m = self.membership
        if not m.is_member(event.secondary) and event.secondary not in m.removed:
            # (A removed replica is served: it learns of its removal, and leaves.)
            self._out.append(
                RefuseStream(
                    event.secondary,
                    f"replica {event.secondary} is not a member of this cluster (an operator "
                    "adds it first: admin member add)",
                )
            )
            return
        stream_id = event.stream_id
        if stream_id is None:
            self._next_stream_id += 1
            stream_id = self._next_stream_id
        iss.hello(event.secondary, stream_id)
        self._out.append(SendDivergence(event.secondary, stream_id, iss.epoch, iss.last_seq))

    def _secondary_acked(self, event: SecondaryAcked, now: float) -> None:
        iss = self.in_sync_set
        if iss is not None:
            self._last_answer[event.secondary] = now
            self._last_ack[event.secondary] = now
            # (It runs: a "gone" from an earlier round, before it restarted, is stale -- and
            # while it streams, no round asks it again.)
            self._gone.discard(event.secondary)
            iss.acked(
                event.secondary,
                event.stream_id,
                event.seq,
                event.knows_in_sync,
                now,
                self._out,
                event.ack_id,
            )
            self._check_removed_primary()

    def _send_wanted(self, event: SendWanted, now: float) -> None:
        iss = self.in_sync_set
        if iss is None or iss.epoch != self.current_epoch:
            self._out.append(EndStream(event.secondary, event.stream_id, "no longer primary"))
            return
        iss.next_send(event.secondary, event.stream_id, now, self._out)

    def _secondary_disconnected(self, event: SecondaryDisconnected, now: float) -> None:
        iss = self.in_sync_set
        if iss is not None:
            iss.disconnected(event.secondary, event.stream_id, now)
