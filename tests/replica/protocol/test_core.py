"""Each rule of the protocol core, driven directly: one input at a time, on logical time.

Every test here fails when the rule it names is taken out of replica/protocol/ (see
`make mutants`, which does exactly that)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from eventlog import Position
from replica.protocol import ProtocolConfig, ReplicaCore, Role
from replica.protocol import effects as fx
from replica.protocol import inputs as ins
from replica.protocol.rules import epoch_owner

MEMBERS = (0, 1, 2)


def config(index: int, **kw: object) -> ProtocolConfig:
    return ProtocolConfig(index, MEMBERS, **kw)  # type: ignore[arg-type]


def of(effects: Sequence[fx.Effect], kind: type) -> list:  # type: ignore[type-arg]
    return [e for e in effects if isinstance(e, kind)]


def acks(effects: Sequence[fx.Effect]) -> list[tuple[int, object, bool]]:
    return [(a.stream_id, a.position, a.in_sync) for a in of(effects, fx.SendAck)]


def view(index: int, role: Role = Role.CANDIDATE, epoch: int = 3, seq: int = 5, **kw: bool):
    return ins.ProbeOutcome(
        index,
        ins.PeerView(
            index,
            role,
            epoch,
            Position(epoch if seq else 0, seq),
            kw.get("in_sync", False),
            kw.get("vouches", False),
            kw.get("following_live_primary", False),
            kw.get("claim"),  # type: ignore[arg-type]
        ),
    )


class Secondary:
    """Replica 1, following primary 0 in epoch 3, streaming and told it is in sync."""

    def __init__(self, now: float = 10.0, **kw: object) -> None:
        self.core = ReplicaCore(config(1, **kw), 3, now)
        self.now = now
        out = self.step(ins.ProbeReceived(0, 3, True))
        (opened,) = of(out, fx.OpenStream)
        self.stream = opened.stream_id
        self.step(
            ins.DivergenceReceived(self.stream, 3, Position(3, 5), Position(3, 5), Position(3, 5))
        )
        self.step(ins.HeartbeatReceived(self.stream, 3, 5, True))

    def step(self, event: ins.Input, after: float = 0.05) -> list[fx.Effect]:
        """Unless a test says otherwise (`echo` given), the primary's word answers the newest
        ack this replica sent: a primary that received every ack at once."""
        self.now += after
        if isinstance(event, ins.HeartbeatReceived | ins.BatchStored) and not event.echo:
            event = replace(event, echo=self.last_ack)
        out = list(self.core.step(self.now, event))
        for ack in of(out, fx.SendAck):
            self.last_ack = ack.ack_id
        return out

    last_ack = 0


class Primary:
    """Replica 0, elected in epoch 3 with the votes of 1 and 2, its epoch_started at seq 6;
    both secondaries connected and caught up."""

    def __init__(self, now: float = 10.0, **kw: object) -> None:
        self.core = ReplicaCore(config(0, **kw), 0, now)
        self.now = now
        out = self.step(ins.ProbesAnswered(Position(2, 5), (view(1, epoch=2), view(2, epoch=2))))
        (request,) = of(out, fx.RequestVotes)
        self.epoch = request.epoch
        self.step(ins.VoteReplied(1, self.epoch, True, self.epoch))
        self.step(ins.VoteReplied(2, self.epoch, True, self.epoch))
        self.step(ins.EpochStartAppended(Position(self.epoch, 6)))
        self.streams = {}
        for s in (1, 2):
            (div,) = of(self.step(ins.SecondaryHello(s, None, self.epoch)), fx.SendDivergence)
            self.streams[s] = div.stream_id
            self.step(ins.SecondaryAcked(s, div.stream_id, 5, True))
            self.send(s)
            self.step(ins.SecondaryAcked(s, div.stream_id, 6, True))
        assert self.core.commit_point == 6

    def step(self, event: ins.Input, after: float = 0.05) -> list[fx.Effect]:
        self.now += after
        return list(self.core.step(self.now, event))

    def send(self, s: int) -> list[fx.Effect]:
        return self.step(ins.SendWanted(s, self.streams[s]), after=0)

    def ack(self, s: int, seq: int, knows: bool = True) -> list[fx.Effect]:
        return self.step(ins.SecondaryAcked(s, self.streams[s], seq, knows))

    def run(self, seconds: float, gone: Sequence[int] = (), silent: Sequence[int] = ()) -> None:
        """Time passes with a probe round every heartbeat (a running process)."""
        for _ in range(round(seconds / 0.1)):
            self.tick_probes(gone, after=0.1, silent=silent)

    def tick_probes(
        self, gone: Sequence[int] = (), after: float = 0.05, silent: Sequence[int] = ()
    ) -> list[fx.Effect]:
        """A probe round: `gone` refuse the connection, `silent` time out, the rest answer."""
        outcomes = tuple(
            ins.ProbeOutcome(i, None, True, True)
            if i in gone
            else ins.ProbeOutcome(i, None)
            if i in silent
            else view(i, Role.SECONDARY, self.epoch, 6)
            for i in (1, 2)
        )
        return self.step(ins.ProbesAnswered(Position(self.epoch, 6), outcomes), after)

    def lag(self, s: int) -> None:
        """Seqs 7-9 appended and sent to both secondaries; only the other one acks them."""
        self.step(ins.Appended(9))
        self.send(1)
        self.send(2)
        self.ack(3 - s, 9)

    def keep_streaming(self, seconds: float) -> None:
        """Time passes with both secondaries acking a heartbeat every probe round."""
        for _ in range(round(seconds / 0.1)):
            self.tick_probes(after=0.1)
            for s in (1, 2):
                self.send(s)
                self.ack(s, 6)

    def reconnect(self, s: int, seq: int, knows: bool) -> list[fx.Effect]:
        (div,) = of(self.step(ins.SecondaryHello(s, None, self.epoch)), fx.SendDivergence)
        self.streams[s] = div.stream_id
        return self.step(ins.SecondaryAcked(s, div.stream_id, seq, knows))


# -- votes -----------------------------------------------------------------------------------


def test_a_vote_is_refused_to_a_less_up_to_date_log() -> None:
    core = ReplicaCore(config(1), 3, 0.0)
    out = core.step(1.0, ins.VoteRequested(2, 5, Position(3, 4), Position(3, 5)))
    assert of(out, fx.ReplyVote) == [fx.ReplyVote(False, 3, "my log (3, 5) is more up to date")]
    assert not of(out, fx.PersistEpoch) and core.current_epoch == 3
    # A newer last epoch beats a longer log.
    out = core.step(1.1, ins.VoteRequested(2, 5, Position(4, 1), Position(3, 5)))
    assert of(out, fx.ReplyVote)[0].granted


def test_a_vote_is_durable_before_it_is_granted() -> None:
    core = ReplicaCore(config(1), 3, 0.0)
    out = core.step(1.0, ins.VoteRequested(2, 5, Position(3, 5), Position(3, 5)))
    kinds = [type(e) for e in out]
    assert kinds.index(fx.PersistEpoch) < kinds.index(fx.ReplyVote)
    assert of(out, fx.PersistEpoch) == [fx.PersistEpoch(5)]
    assert of(out, fx.ReplyVote) == [fx.ReplyVote(True, 5)]
    # One vote per epoch: the same epoch again is refused.
    again = core.step(1.1, ins.VoteRequested(0, 5, Position(3, 5), Position(3, 5)))
    assert not of(again, fx.ReplyVote)[0].granted


def test_no_vote_while_following_a_live_primary_or_as_primary() -> None:
    s = Secondary()
    out = s.step(ins.VoteRequested(2, 8, Position(3, 9), Position(3, 5)))
    assert not of(out, fx.ReplyVote)[0].granted
    p = Primary()
    out = p.step(ins.VoteRequested(2, 8, Position(9, 9), Position(3, 6)))
    assert of(out, fx.ReplyVote)[0].reason == "I am the primary and alive"


# -- elections --------------------------------------------------------------------------------


def test_an_electorate_without_a_trusted_replica_elects_no_one() -> None:
    """Two restarted replicas cannot know what the third acknowledged alone."""
    core = ReplicaCore(config(1), 3, 0.0)
    gone = ins.ProbeOutcome(0, None, True, True)
    out = core.step(1.0, ins.ProbesAnswered(Position(3, 5), (gone, view(2))))
    assert not of(out, fx.RequestVotes) and not of(out, fx.PersistEpoch)
    out = core.step(1.1, ins.ProbesAnswered(Position(3, 5), (gone, view(2, vouches=True))))
    assert of(out, fx.RequestVotes)  # replica 1 has the longest log of an electable set
    core = ReplicaCore(config(1), 3, 0.0)
    out = core.step(1.0, ins.ProbesAnswered(Position(3, 5), (view(0, seq=4), view(2, seq=4))))
    assert of(out, fx.RequestVotes), "the whole cluster may elect"


def test_an_election_asks_for_votes_only_once_the_epoch_is_recorded() -> None:
    core = ReplicaCore(config(2), 3, 0.0)
    out = core.step(1.0, ins.ProbesAnswered(Position(3, 5), (view(0, seq=4), view(1, seq=4))))
    kinds = [type(e) for e in out]
    assert kinds.index(fx.PersistEpoch) < kinds.index(fx.RequestVotes)
    (persist,) = of(out, fx.PersistEpoch)
    assert persist.epoch == 5 and epoch_owner(5) == 2  # the first above 3 that is replica 2's
    assert of(out, fx.RequestVotes) == [fx.RequestVotes(5, Position(3, 5), (0, 1))]


def test_no_election_on_a_probe_round_heard_long_after_it_ended() -> None:
    """Its own position's read waited behind a stalled database: the views are old news (the
    others may have elected since, and a new epoch from them would depose that primary)."""
    core = ReplicaCore(config(2), 3, 0.0)
    round_ = (view(0, seq=4), view(1, seq=4))
    out = core.step(5.0, ins.ProbesAnswered(Position(3, 5), round_, ended_at=2.0))
    assert not of(out, fx.PersistEpoch) and not of(out, fx.RequestVotes)
    out = core.step(5.1, ins.ProbesAnswered(Position(3, 5), round_, ended_at=5.05))
    assert of(out, fx.RequestVotes), "a round read at once elects"


def test_client_writes_wait_for_the_durable_epoch_started() -> None:
    core = ReplicaCore(config(0), 0, 0.0)
    out = core.step(1.0, ins.ProbesAnswered(Position(0, 0), (view(1, seq=0), view(2, seq=0))))
    epoch = of(out, fx.RequestVotes)[0].epoch
    core.step(1.0, ins.VoteReplied(1, epoch, True, epoch))
    out = core.step(1.0, ins.VoteReplied(2, epoch, True, epoch))
    assert of(out, fx.AppendEpochStarted) == [fx.AppendEpochStarted(epoch)]
    assert all(e.role is not Role.PRIMARY for e in of(out, fx.SetRole))
    assert core.role is not Role.PRIMARY and core.write_refusal() is not None
    out = core.step(1.1, ins.EpochStartAppended(Position(epoch, 1)))
    assert [e.role for e in of(out, fx.SetRole)] == [Role.PRIMARY]
    assert core.write_refusal() is None


# -- the primary's in-sync set ------------------------------------------------------------


def test_a_secondary_joins_only_once_caught_up() -> None:
    p = Primary()
    p.step(ins.Appended(9))
    p.run(1.0)
    p.step(ins.SecondaryDisconnected(2, p.streams[2]))
    p.tick_probes(gone=[2])
    assert not p.core.in_sync_set.told_in_sync(2)  # type: ignore[union-attr]
    (div,) = of(p.step(ins.SecondaryHello(2, None, p.epoch)), fx.SendDivergence)
    p.streams[2] = div.stream_id
    p.step(ins.SecondaryAcked(2, div.stream_id, 6, False))
    assert not p.core.in_sync_set.told_in_sync(2), "joined while behind"  # type: ignore[union-attr]
    (batch,) = of(p.send(2), fx.SendEvents)
    assert (batch.after_seq, batch.through_seq) == (6, 9)
    p.ack(2, 8, knows=False)
    assert not p.core.in_sync_set.told_in_sync(2), "joined before acking the tip"  # type: ignore[union-attr]
    out = p.ack(2, 9, knows=False)
    assert p.core.in_sync_set.told_in_sync(2)  # type: ignore[union-attr]
    assert of(out, fx.WakeSenders), "it must be told at once"
    (beat,) = of(p.send(2), fx.SendHeartbeat)
    assert beat.in_sync


def test_an_ack_from_outside_the_in_sync_set_does_not_commit() -> None:
    p = Primary()
    p.run(1.0)
    p.step(ins.SecondaryDisconnected(2, p.streams[2]))
    p.tick_probes(gone=[2])  # 2 leaves; 1 stays
    p.step(ins.Appended(8))
    (div,) = of(p.step(ins.SecondaryHello(2, None, p.epoch)), fx.SendDivergence)
    p.streams[2] = div.stream_id
    p.step(ins.SecondaryAcked(2, div.stream_id, 6, False))  # behind: out of sync
    p.send(2)
    p.send(1)
    out = p.ack(2, 8, knows=False)  # the tip: it joins, and its ack counts from now on
    assert p.core.in_sync_set.told_in_sync(2)  # type: ignore[union-attr]
    assert p.core.commit_point == 6 and not of(out, fx.AdvanceCommit), "1 has not acked"
    out = p.ack(1, 8)
    assert of(out, fx.AdvanceCommit) == [fx.AdvanceCommit(8)]
    # A member out of sync acking alone moves nothing.
    p.step(ins.Appended(9))
    p.run(1.5)  # 1 and 2 ack nothing: both are told to leave
    for s in (1, 2):
        p.send(s)
        p.ack(s, 8, knows=False)
    assert not any(m.in_sync for m in p.core.in_sync_set.members.values())  # type: ignore[union-attr]
    assert p.core.commit_point == 9, "min_insync = 1: the primary alone commits"


def test_an_ack_of_a_member_out_of_sync_is_not_counted() -> None:
    p = Primary(min_insync=2)
    p.step(ins.Appended(8))
    p.send(1)
    p.send(2)
    p.run(1.5)  # neither acks: both told to leave
    p.ack(1, 6, knows=False)  # 1 confirms and leaves
    assert not p.core.in_sync_set.members[1].in_sync  # type: ignore[union-attr]
    p.ack(2, 6, knows=False)
    assert p.core.commit_point == 6
    out = p.ack(1, 7, knows=False)  # not the tip: 1 stays out
    assert p.core.commit_point == 6 and not of(out, fx.AdvanceCommit)


def test_the_primarys_own_append_is_not_committed_without_the_in_sync_acks() -> None:
    p = Primary()
    out = p.step(ins.Appended(7))
    assert not of(out, fx.AdvanceCommit) and p.core.commit_point == 6
    p.send(1)
    p.send(2)
    assert not of(p.ack(1, 7), fx.AdvanceCommit)
    assert of(p.ack(2, 7), fx.AdvanceCommit) == [fx.AdvanceCommit(7)]


def test_events_streamed_before_the_primarys_commit_are_committed_only_once_durable() -> None:
    p = Primary()
    out = p.step(ins.Written(8))
    assert of(out, fx.WakeSenders), "the streams send them at once"
    (batch,) = of(p.send(1), fx.SendEvents)
    assert (batch.after_seq, batch.through_seq) == (6, 8)
    p.send(2)
    p.ack(1, 8)
    out = p.ack(2, 8)
    assert not of(out, fx.AdvanceCommit) and p.core.commit_point == 6, "not durable here yet"
    out = p.step(ins.Appended(8))
    assert of(out, fx.AdvanceCommit) == [fx.AdvanceCommit(8)]


def test_a_primary_whose_commit_of_streamed_events_failed_steps_down() -> None:
    p = Primary()
    p.step(ins.Written(7))
    p.send(1)
    p.ack(1, 7)
    assert not of(p.step(ins.LocalWriteFailed(p.epoch - 1, "an older batch")), fx.StepDown)
    out = p.step(ins.LocalWriteFailed(p.epoch, "connection lost"))
    assert of(out, fx.StepDown) and p.core.role is not Role.PRIMARY
    assert [e.role for e in of(out, fx.SetRole)] == [Role.SECONDARY]
    assert p.core.write_refusal() is not None


def _stalled_ticks(p: Primary, since: float, seconds: float, ack: bool = True) -> list[fx.Effect]:
    """Ticks every 0.1 s while the database has waited since `since`; the secondaries ack
    heartbeats (`ack`) or are silent."""
    out: list[fx.Effect] = []
    for _ in range(round(seconds / 0.1)):
        out += p.step(ins.Tick(since), after=0.1)
        if ack:
            for s in (1, 2):
                p.send(s)
                p.step(ins.SecondaryAcked(s, p.streams[s], 7, True), after=0)
    return out


def test_a_primary_whose_database_makes_no_progress_hands_over_to_an_in_sync_secondary() -> None:
    """Fail-slow storage: its write waits (streamed, acked by both, never durable here), and
    with it every client -- while two in-sync secondaries could take over."""
    p = Primary(storage_timeout=2.0)
    p.step(ins.Written(7))
    stuck = p.now
    for s in (1, 2):
        p.send(s)
        p.ack(s, 7)
    assert not of(_stalled_ticks(p, stuck, 1.8), fx.StepDown), "not before the storage timeout"
    assert p.core.role is Role.PRIMARY and p.core.commit_point == 6, "nothing durable here"
    (down,) = of(_stalled_ticks(p, stuck, 0.5), fx.StepDown)
    assert "its database has made no progress" in down.reason and "replica 1" in down.reason
    assert p.core.role is not Role.PRIMARY and p.core.write_refusal() is not None
    assert not of(p.step(ins.Appended(7)), fx.AdvanceCommit), "its late commit counts for nothing"


def test_a_primary_whose_database_stalls_stays_while_no_secondary_could_take_over() -> None:
    """Stepping down would help no one: neither secondary acks (both silent), so neither is a
    successor that holds every acknowledged event and answers."""
    p = Primary(storage_timeout=2.0)
    p.step(ins.Written(7))
    out = _stalled_ticks(p, p.now, 3.0, ack=False)
    assert not [d for d in of(out, fx.StepDown) if "database" in d.reason]


def test_a_database_that_answers_again_is_no_stall() -> None:
    p = Primary(storage_timeout=2.0)
    out: list[fx.Effect] = []
    for _ in range(30):  # 3 s of busy storage, each operation done within 0.1 s
        out += _stalled_ticks(p, p.now - 0.1, 0.1)
    assert not of(out, fx.StepDown) and p.core.role is Role.PRIMARY


def test_the_divergence_answer_counts_events_streamed_but_not_yet_durable() -> None:
    p = Primary()
    p.step(ins.Written(9))
    (div,) = of(p.step(ins.SecondaryHello(2, None, p.epoch)), fx.SendDivergence)
    assert div.written_seq == 9, "a secondary holding 7..9 must not truncate them"


def test_a_lagging_secondary_is_told_before_it_is_removed() -> None:
    p = Primary()
    p.lag(1)
    for _ in range(30):  # 1.5 s: replica 1 acks nothing more
        p.tick_probes()
        p.send(2)
    iss = p.core.in_sync_set
    assert iss is not None
    assert iss.members[1].in_sync, "removed without being told"
    assert not iss.told_in_sync(1)
    (beat,) = of(p.send(1), fx.SendHeartbeat)
    assert not beat.in_sync, "the next heartbeat tells it"
    assert p.core.commit_point == 6
    p.ack(1, 6, knows=True)  # it did not get the message yet: still counted
    assert iss.members[1].in_sync and p.core.commit_point == 6
    out = p.ack(1, 6, knows=False)  # it knows now
    assert not iss.members[1].in_sync
    assert of(out, fx.AdvanceCommit) == [fx.AdvanceCommit(9)]


def test_alone_a_primary_acknowledges_only_once_the_others_are_known_out() -> None:
    """A secondary dropped unheard may still claim to be in sync, and the others may elect
    on that claim without this primary (rules.electable): so the primary acknowledges
    nothing without an in-sync secondary until each other replica has said, on a stream
    opened since, that it knows it is out -- or died while still listening to it."""
    p = Primary()
    p.run(1.0)
    for s in (1, 2):
        p.step(ins.SecondaryDisconnected(s, p.streams[s]))
    p.run(1.2)  # both unreachable: removed unheard
    iss = p.core.in_sync_set
    assert iss is not None and not any(m.in_sync for m in iss.members.values())
    assert iss.unconfirmed() == [1, 2]
    out = p.step(ins.Appended(7))
    assert not of(out, fx.AdvanceCommit) and p.core.commit_point == 6
    assert "may still be counted in sync" in (p.core.write_refusal() or "")
    p.tick_probes(gone=[2])  # gone now -- but its disk may hold a vote cast while unheard
    assert iss.unconfirmed() == [1, 2] and p.core.commit_point == 6
    p.reconnect(2, 6, knows=False)  # restarted: it claims nothing
    assert iss.unconfirmed() == [1]
    p.reconnect(1, 6, knows=True)  # still claims (nothing told it otherwise yet)
    assert iss.unconfirmed() == [1] and p.core.commit_point == 6
    (batch,) = of(p.send(1), fx.SendEvents)
    assert not batch.in_sync, "the new stream tells it it is out"
    out = p.ack(1, 6, knows=False)
    assert iss.unconfirmed() == [] and of(out, fx.AdvanceCommit), "all known out"
    assert p.core.write_refusal() is None


def test_a_replica_that_dies_while_listening_leaves_at_once_and_for_good() -> None:
    """Killed while it streamed, it cannot have voted in a newer epoch (that takes a silent
    primary): the primary goes on alone without waiting for it."""
    p = Primary()
    p.keep_streaming(1.0)
    p.step(ins.SecondaryDisconnected(2, p.streams[2]))
    p.tick_probes(gone=[2])
    iss = p.core.in_sync_set
    assert iss is not None and not iss.members[2].in_sync and iss.unconfirmed() == []
    p.run(1.0)  # 1 stops acking: it leaves unheard -- but the other replica is known out
    p.step(ins.SecondaryDisconnected(1, p.streams[1]))
    p.run(1.2, gone=[2])
    assert iss.unconfirmed() == [1]
    assert p.core.write_refusal() is not None, "1 may be claiming"


def test_a_member_removed_unheard_on_a_live_stream_must_reconnect_to_confirm() -> None:
    """What it says on the old stream may answer a word sent before its removal."""
    p = Primary()
    p.lag(1)
    old = p.streams[1]
    out: list[fx.Effect] = []
    for _ in range(50):  # 2.5 s: 1 acks nothing; told to leave, it never confirms
        out += p.tick_probes()
        p.send(2)
    iss = p.core.in_sync_set
    assert iss is not None and not iss.members[1].in_sync and iss.unconfirmed() == [1]
    assert [e for e in of(out, fx.EndStream) if e.secondary == 1 and e.stream_id == old]
    p.step(ins.SecondaryAcked(1, old, 6, False))  # the old stream's: ignored
    assert iss.unconfirmed() == [1]
    p.reconnect(1, 6, knows=False)
    assert iss.unconfirmed() == []


def test_a_primary_cut_off_from_every_running_replica_steps_down() -> None:
    """They may be electing without it; it stops saying it is primary."""
    p = Primary()
    p.run(0.9, silent=[1, 2])
    assert p.core.role is Role.PRIMARY
    out: list[fx.Effect] = []
    for _ in range(3):
        out += p.tick_probes(silent=[1, 2], after=0.1)
    (down,) = of(out, fx.StepDown)
    assert "no answer from replica(s) 1, 2" in down.reason
    assert p.core.role is not Role.PRIMARY and p.core.write_refusal() is not None


def test_a_secondary_acking_on_its_stream_keeps_the_primary_up_whatever_the_probes_say() -> None:
    """Replica 1 restarted and acks again, but the probe rounds that began before it listened
    still say its process is gone; replica 2 went silent (a one-way cut). The primary must not
    take itself for cut off: it once stepped down here, and with 2 unreachable for its votes
    no one could be elected until the network healed."""
    p = Primary()
    p.keep_streaming(0.5)
    p.step(ins.SecondaryDisconnected(1, p.streams[1]))
    p.tick_probes(gone=[1])
    p.reconnect(1, 6, knows=False)
    out: list[fx.Effect] = []
    for _ in range(15):  # 1.5 s
        out += p.tick_probes(gone=[1], silent=[2], after=0.1)
        p.send(1)
        p.ack(1, 6, knows=False)
    assert not of(out, fx.StepDown) and p.core.role is Role.PRIMARY
    for _ in range(12):  # and once 1 is silent too, it does step down
        out += p.tick_probes(silent=[1, 2], after=0.1)
    assert of(out, fx.StepDown)


def test_a_primary_whose_peers_are_known_dead_serves_alone() -> None:
    """min_insync = 1: two replicas killed, the third keeps accepting writes."""
    p = Primary()
    p.keep_streaming(1.0)
    for s in (1, 2):
        p.step(ins.SecondaryDisconnected(s, p.streams[s]))
    p.run(2.0, gone=[1, 2])
    assert p.core.role is Role.PRIMARY
    out = p.step(ins.Appended(7))
    assert of(out, fx.AdvanceCommit) == [fx.AdvanceCommit(7)]


def test_an_ack_keeps_a_primary_whose_probes_time_out() -> None:
    p = Primary()
    for _ in range(15):
        p.tick_probes(silent=[1, 2], after=0.1)
        p.send(1)
        p.ack(1, 6)
    assert p.core.role is Role.PRIMARY


def test_an_unreachable_member_is_removed_only_after_the_in_sync_timeout() -> None:
    p = Primary()
    p.run(1.0)
    p.step(ins.SecondaryDisconnected(1, p.streams[1]))
    p.run(0.9)
    assert p.core.in_sync_set.told_in_sync(1)  # type: ignore[union-attr]
    p.run(0.2)
    assert not p.core.in_sync_set.members[1].in_sync  # type: ignore[union-attr]


# -- the secondary's vouch ----------------------------------------------------------------


def _last_ack_sent_at(s: Secondary) -> float:
    return s.core.following.acks_sent[s.last_ack]


def test_the_vouch_lasts_half_the_in_sync_timeout_from_the_ack_the_primary_confirmed() -> None:
    """The primary said "in sync" only after receiving that ack, and drops a member no sooner
    than insync_timeout after its last "in sync" to it."""
    s = Secondary()
    confirmed = s.core.following.confirmed_at
    assert s.core.vouches(confirmed + 0.45)
    assert not s.core.vouches(confirmed + 0.5)
    # The next heartbeat echoes the newest ack: the vouch runs from that ack's sending.
    sent = _last_ack_sent_at(s)
    s.step(ins.HeartbeatReceived(s.stream, 3, 5, True), after=0.3)
    assert s.core.following.confirmed_at == sent
    assert s.core.vouches(sent + 0.45) and not s.core.vouches(sent + 0.5)


def test_a_word_delayed_in_the_network_does_not_stretch_the_vouch() -> None:
    """A heartbeat held up by a partition that healed arrives long after it was said: it
    answers an old ack, and the primary may have dropped this replica since."""
    s = Secondary()
    old_ack = s.last_ack
    s.step(ins.Tick(), after=0.1)
    out = s.step(ins.HeartbeatReceived(s.stream, 3, 5, True, old_ack), after=0.1)
    for _ in range(8):
        out = s.step(ins.HeartbeatReceived(s.stream, 3, 5, True, old_ack), after=0.1)
    assert of(out, fx.SendAck), "still acked: the primary hears it is alive"
    assert not s.core.vouches(s.now)
    assert s.core.claim() == 0, "it was counted in sync, and nothing said it left"


def test_a_lost_stream_ends_the_vouch_but_not_the_claim() -> None:
    s = Secondary()
    assert s.core.vouches(s.now)
    s.step(ins.ReplicationStreamEnded(s.stream))
    assert not s.core.vouches(s.core.following.confirmed_at + 0.5)
    assert s.core.claim() == 0


def test_a_secondary_stuck_storing_stops_vouching() -> None:
    s = Secondary()
    s.step(ins.BatchReceived(s.stream, 3, Position(3, 6)))
    began = s.now
    assert s.core.vouches(began + 0.3)
    assert not s.core.vouches(began + 0.5), "its last confirmed ack was sent before the store"


def test_a_batch_stored_too_slowly_does_not_renew_the_vouch() -> None:
    """The batch said "in sync" when it was sent, and so did the heartbeats queued behind it;
    the primary may have dropped the replica while it was storing. It takes a new stream, which
    carries only what the primary says from now on, to renew the vouch."""
    s = Secondary()
    old = s.stream
    s.step(ins.BatchReceived(old, 3, Position(3, 6)))
    for _ in range(5):
        s.step(ins.Tick(), after=0.1)  # (running, not paused)
    out = s.step(ins.BatchStored(old, Position(3, 6), 5, True))
    assert not s.core.vouches(s.now)
    assert of(out, fx.CancelStream) and not of(out, fx.SendAck)
    out = s.step(ins.HeartbeatReceived(old, 3, 6, True))  # queued behind the batch
    assert not s.core.vouches(s.now) and not of(out, fx.SendAck)
    (opened,) = of(s.step(ins.Tick(), after=0.1), fx.OpenStream)
    new = opened.stream_id
    s.step(ins.DivergenceReceived(new, 3, Position(3, 6), Position(3, 6), Position(3, 6)))
    s.step(ins.HeartbeatReceived(new, 3, 6, True))
    assert s.core.vouches(s.now)


def test_a_batch_stored_after_a_newer_heartbeat_does_not_undo_what_that_heartbeat_said() -> None:
    """A heartbeat is heard while an earlier batch is still being stored. It says the primary
    is dropping this replica, which acks that it knows -- on which the primary removes it,
    confirmed. The batch, stored after, said "in sync" when it was sent: old news, which must
    not bring back the vouch or the claim (the primary no longer counts this replica)."""
    s = Secondary()
    old = s.stream
    s.step(ins.BatchReceived(old, 3, Position(3, 6)))  # sent while in sync
    echoed = s.last_ack  # (the newest ack the primary had when it sent the batch)
    out = s.step(ins.HeartbeatReceived(old, 3, 5, False))  # sent after: leaving
    assert acks(out) == [(old, Position(3, 5), False)]
    out = s.step(ins.BatchStored(old, Position(3, 6), 5, True, echoed), after=0.1)
    assert acks(out) == [(old, Position(3, 6), False)], "the store is acked, with the newer word"
    assert s.core.claim() is None and not s.core.vouches(s.now)


def test_a_slow_store_is_timed_from_its_own_batch_though_more_arrived_meanwhile() -> None:
    """Storage works in order while the stream goes on: a second batch arriving during a slow
    store must not make the first look quick (its "in sync" is as old as the store is long)."""
    s = Secondary()
    old = s.stream
    s.step(ins.BatchReceived(old, 3, Position(3, 6)))
    for _ in range(4):
        s.step(ins.Tick(), after=0.1)  # (running, not paused)
    s.step(ins.BatchReceived(old, 3, Position(3, 7)), after=0.05)
    out = s.step(ins.BatchStored(old, Position(3, 6), 5, True), after=0.1)  # 0.55 s after it came
    assert of(out, fx.CancelStream) and not of(out, fx.SendAck)


def test_a_stream_that_says_nothing_is_given_up_and_opened_again() -> None:
    """Probes may show the primary alive (no election moves this replica on) while nothing
    reaches it on its stream: after the peer timeout it opens another."""
    s = Secondary()
    old = s.stream
    out: list[fx.Effect] = []
    for _ in range(7):
        out += s.step(ins.Tick(), after=0.1)
    assert old in [c.stream_id for c in of(out, fx.CancelStream)]
    (opened,) = of(out, fx.OpenStream)
    assert opened.stream_id != old and opened.primary == 0


def test_a_secondary_woken_from_a_pause_reads_nothing_more_from_its_old_stream() -> None:
    s = Secondary()
    old = s.stream
    out = s.step(ins.HeartbeatReceived(old, 3, 5, True), after=1.0)  # sent before the pause
    assert of(out, fx.CancelStream) and not of(out, fx.SendAck)
    assert not s.core.vouches(s.now)


def test_a_stream_lost_while_storing_ends_the_vouch_from_when_the_store_began() -> None:
    s = Secondary()
    s.step(ins.BatchReceived(s.stream, 3, Position(3, 6)))
    began = s.now
    for _ in range(4):
        s.step(ins.Tick(), after=0.1)
    s.step(ins.ReplicationStreamEnded(s.stream))
    assert s.core.vouches(began + 0.3)
    assert not s.core.vouches(began + 0.5), "the primary may drop it counting from the store"


def test_a_replica_whose_database_fails_stops_vouching_before_its_peer_hears_so() -> None:
    """A peer that hears UNAVAILABLE may elect without it; it must not vouch afterwards on
    what its old stream still says."""
    s = Secondary()
    old = s.stream
    out = s.step(ins.DatabaseFailed("OperationalError: gone away"))
    assert not s.core.vouches(s.now) and of(out, fx.CancelStream)
    s.step(ins.HeartbeatReceived(old, 3, 5, True))
    assert not s.core.vouches(s.now)


def test_news_of_an_epoch_it_did_not_vote_in_ends_the_vouch() -> None:
    """That epoch's primary did not count this replica and may acknowledge without it."""
    s = Secondary()
    s.step(ins.ProbeReceived(2, 5, True))  # replica 2 announces itself primary of epoch 5
    assert not s.core.vouches(s.now)


def test_with_min_insync_1_a_peer_that_does_not_answer_must_vote_too() -> None:
    """It may be running and vouching (a short pause, a stalled thread); a refusal or a dead
    process may not, nor the primary that was lost."""
    s = Secondary()
    s.step(ins.ReplicationStreamEnded(s.stream))
    gone = ins.ProbeOutcome(0, None, True, True)  # the primary, killed
    out = s.step(ins.ProbesAnswered(Position(3, 5), (gone, ins.ProbeOutcome(2, None))))
    assert s.core.role is Role.CANDIDATE, "a primary without the silent peer's vote"
    (request,) = of(out, fx.RequestVotes)
    assert request.voters == (2,)


def test_a_primary_that_answers_unavailable_is_not_taken_for_dead() -> None:
    """Its database failed, its process lives on and may acknowledge again once the database
    is back: only a refused connection (nothing listens) makes a broken stream's primary gone
    before the full peer timeout."""
    s = Secondary()
    s.step(ins.ReplicationStreamEnded(s.stream))
    unavailable = ins.ProbeOutcome(0, None, refused=True)
    out = s.step(ins.ProbesAnswered(Position(3, 5), (unavailable, view(2))))
    assert not of(out, fx.RequestVotes) and s.core.role is not Role.CANDIDATE
    gone = ins.ProbeOutcome(0, None, refused=True, process_gone=True)
    out = s.step(ins.ProbesAnswered(Position(3, 5), (gone, view(2))))
    assert of(out, fx.RequestVotes), "a primary whose host refuses connections is gone"


def test_its_own_candidacy_keeps_the_vouch() -> None:
    """A candidate whose election fails must still be electable: no one acknowledged anything
    in its epoch."""
    s = Secondary()
    s.step(ins.ReplicationStreamEnded(s.stream))
    out = s.step(
        ins.ProbesAnswered(Position(3, 5), (ins.ProbeOutcome(0, None, True, True), view(2)))
    )
    (request,) = of(out, fx.RequestVotes)
    s.step(ins.VoteReplied(2, request.epoch, False, request.epoch, "busy"))
    assert s.core.vouches(s.now)


def _voter_streaming_from_new_primary(s: Secondary) -> int:
    """Replica 1's primary is gone; it votes for replica 2 in epoch 5 and starts streaming
    from it at (3, 5)."""
    if s.core.following.stream_id is not None:
        s.step(ins.ReplicationStreamEnded(s.core.following.stream_id))
    (reply,) = of(s.step(ins.VoteRequested(2, 5, Position(3, 8), Position(3, 5))), fx.ReplyVote)
    assert reply.granted
    (opened,) = of(s.step(ins.ProbeReceived(2, 5, True)), fx.OpenStream)
    stream = opened.stream_id
    s.step(ins.DivergenceReceived(stream, 5, Position(3, 5), Position(3, 5), Position(3, 5)))
    return stream


def test_a_voter_that_was_behind_vouches_only_once_it_holds_the_new_epoch() -> None:
    """A new primary counts its voters in sync from the start; a voter that vouched for
    nothing when it voted (it restarted) must not take that word as holding every
    acknowledged event while it lacks the older epoch's tail."""
    s = Secondary()
    s.core = ReplicaCore(config(1), 3, s.now)  # restarted: it vouches for nothing
    stream = _voter_streaming_from_new_primary(s)
    s.step(ins.BatchReceived(stream, 5, Position(3, 6)))
    out = s.step(ins.BatchStored(stream, Position(3, 6), 0, True))
    assert not s.core.vouches(s.now)
    assert acks(out) == [(stream, Position(3, 6), False)]
    s.step(ins.BatchReceived(stream, 5, Position(5, 9)))
    out = s.step(ins.BatchStored(stream, Position(5, 9), 0, True))
    assert s.core.vouches(s.now)
    assert acks(out) == [(stream, Position(5, 9), True)]


def test_a_voter_that_only_claimed_vouches_only_once_it_holds_the_new_epoch() -> None:
    """Elected on its claim (rules.electable), the new primary holds what this voter may lack."""
    s = Secondary()
    for _ in range(8):
        s.step(ins.Tick(), after=0.1)  # its primary silent: the vouch runs out, the claim stays
    assert not s.core.vouches(s.now) and s.core.claim() == 0
    stream = _voter_streaming_from_new_primary(s)
    assert s.core.claim() == 2, "the new primary counts its voters in sync"
    s.step(ins.BatchReceived(stream, 5, Position(3, 6)))
    s.step(ins.BatchStored(stream, Position(3, 6), 0, True))
    assert not s.core.vouches(s.now) and s.core.claim() == 2
    s.step(ins.BatchReceived(stream, 5, Position(5, 9)))
    s.step(ins.BatchStored(stream, Position(5, 9), 0, True))
    assert s.core.vouches(s.now)


def test_a_voter_that_vouched_keeps_vouching_for_the_new_primary() -> None:
    s = Secondary()
    assert s.core.vouches(s.now)
    stream = _voter_streaming_from_new_primary(s)
    assert s.core.vouches(s.now)
    s.step(ins.BatchReceived(stream, 5, Position(3, 6)))
    s.step(ins.BatchStored(stream, Position(3, 6), 0, True))
    assert s.core.vouches(s.now), "its new primary's word renews the vouch"
    assert not s.core.vouches(s.now + 5) and s.core.claim() == 2


def test_a_silent_stream_keeps_the_claim_not_the_vouch() -> None:
    """A silent primary may be paused -- or cut off and, once it dropped this replica,
    acknowledging with the other one: only an election of every replica but it may go ahead
    on this replica's word."""
    s = Secondary()
    for _ in range(20):
        s.step(ins.Tick(), after=0.1)
    assert not s.core.vouches(s.now) and not s.core.following_live_primary(s.now)
    assert s.core.claim() == 0
    assert s.core.status(s.now).claim == 0


def test_the_lost_primary_is_not_waited_for_in_the_elections_after_the_first() -> None:
    """Its primary cut off, this replica claims; the first probe rounds reach no one (the
    third replica restarting), and an election that cannot choose forgets the target. The
    primary it lost must still not be one whose vote the next election waits for (it once
    was: on separate hosts, an isolated primary stalled the other two for the whole cut)."""
    s = Secondary()
    for _ in range(8):
        s.step(ins.Tick(), after=0.1)  # the stream goes silent for peer_timeout
    silent = (ins.ProbeOutcome(0, None), ins.ProbeOutcome(2, None))
    out = s.step(ins.ProbesAnswered(Position(3, 5), silent))
    assert not of(out, fx.RequestVotes), "an electorate of one claim elects no one"
    assert s.core.following.target is None
    out = s.step(ins.ProbesAnswered(Position(3, 5), (ins.ProbeOutcome(0, None), view(2, seq=4))))
    (request,) = of(out, fx.RequestVotes)
    assert request.voters == (2,), "waits for the vote of the primary it lost"


def test_a_stream_from_an_older_epoch_is_refused() -> None:
    s = Secondary()
    s.step(ins.VoteRequested(2, 5, Position(3, 5), Position(3, 5)), after=0.7)
    # A stream to the old primary (its target still) opens again at the next tick...
    (opened,) = of(s.step(ins.Tick(), after=0.1), fx.OpenStream)
    assert opened.epoch == 5
    out = s.step(
        ins.DivergenceReceived(opened.stream_id, 3, Position(3, 5), Position(3, 5), Position(3, 5))
    )
    assert of(out, fx.CancelStream) and not of(out, fx.SendAck)
    assert s.core.following.target is None


def test_acks_follow_the_store() -> None:
    s = Secondary()
    out = s.step(ins.BatchReceived(s.stream, 3, Position(3, 6)))
    assert of(out, fx.StoreBatch) and not of(out, fx.SendAck)
    out = s.step(ins.BatchStored(s.stream, Position(3, 6), 5, True))
    assert acks(out) == [(s.stream, Position(3, 6), True)]


# -- pauses -------------------------------------------------------------------------------


def test_a_primary_frozen_past_the_peer_timeout_steps_down_at_its_first_input() -> None:
    """Even when an ack arrived just before it froze (the detector once looked only at the
    gap since the last tick and missed exactly this)."""
    p = Primary()
    p.step(ins.Tick(), after=0.1)
    p.ack(1, 6)  # the last thing before SIGSTOP
    out = p.step(ins.Tick(), after=1.2)  # SIGCONT
    assert of(out, fx.StepDown)
    kinds = [type(e) for e in out]
    assert kinds.index(fx.StepDown) < kinds.index(fx.ProbeAll)
    assert p.core.role is not Role.PRIMARY


def test_a_frozen_primary_notices_whatever_input_comes_first() -> None:
    """After SIGCONT every thread runs again: an ack or a sender may step before the tick."""
    p = Primary()
    p.step(ins.Tick(), after=0.1)
    out = p.ack(1, 6)
    assert not of(out, fx.StepDown)
    out = p.step(ins.SendWanted(2, p.streams[2]), after=1.2)
    assert of(out, fx.StepDown) and of(out, fx.EndStream)
    assert not of(p.step(ins.Tick(), after=0.0), fx.StepDown), "noticed once"


def test_a_short_pause_restarts_the_primarys_awake_window() -> None:
    p = Primary()
    p.run(1.0)
    p.step(ins.SecondaryDisconnected(1, p.streams[1]))
    out = p.step(ins.Tick(), after=0.5)  # a pause under the peer timeout
    assert not of(out, fx.StepDown) and of(out, fx.LogNote)
    p.tick_probes(gone=[1], after=0.1)
    assert p.core.in_sync_set.told_in_sync(1), "dropped a member right after a pause"  # type: ignore[union-attr]
    for _ in range(10):
        p.tick_probes(gone=[1], after=0.1)
    assert not p.core.in_sync_set.members[1].in_sync  # type: ignore[union-attr]


def test_a_busy_replica_is_not_paused() -> None:
    """Inputs keep coming on a busy machine even when a tick is late."""
    p = Primary()
    for _ in range(12):
        out = [*p.ack(1, 6), *p.step(ins.Tick(), after=0.0)]
        p.now += 0.1
        assert not of(out, fx.StepDown)
    assert p.core.role is Role.PRIMARY


def test_a_newer_epoch_deposes_the_primary() -> None:
    p = Primary()
    out = p.step(ins.SecondaryHello(2, None, p.epoch + 2))
    assert of(out, fx.PersistEpoch) == [fx.PersistEpoch(p.epoch + 2)]
    assert of(out, fx.StepDown) and of(out, fx.RefuseStream)
    assert of(p.send(1), fx.EndStream)


def test_a_voter_gives_its_candidate_time_before_electing_on_a_probe_round_of_its_own() -> None:
    """Seen on loopback under load: a replica voted for 2, then a probe round begun before
    the vote (2 not yet primary in it) made it a candidate too; its vote request deposed 2
    a few milliseconds into its epoch. A granted vote waits peer_timeout, as Raft's election
    timer restarts when it grants one."""
    core = ReplicaCore(config(1), 3, 0.0)
    gone = ins.ProbeOutcome(0, None, True, True)
    out = core.step(1.0, ins.VoteRequested(2, 8, Position(3, 5), Position(3, 5)))
    assert of(out, fx.ReplyVote) == [fx.ReplyVote(True, 8)]
    stale = (gone, view(2, seq=5, vouches=True))  # 2 as it answered before it won
    assert not of(core.step(1.01, ins.ProbesAnswered(Position(3, 5), stale)), fx.RequestVotes)
    assert not of(core.step(1.55, ins.ProbesAnswered(Position(3, 5), stale)), fx.RequestVotes)
    # Its candidate never came: after peer_timeout it may elect.
    assert of(core.step(1.65, ins.ProbesAnswered(Position(3, 5), stale)), fx.RequestVotes)


def test_a_voter_that_found_its_new_primary_does_not_wait_on_its_vote_any_longer() -> None:
    """Once the primary it voted for reached it, the wait is over: should that primary die,
    its loss is news of its own (a refused connection: at once), not the vote's."""
    core = ReplicaCore(config(1), 3, 0.0)
    core.step(1.0, ins.VoteRequested(2, 8, Position(3, 5), Position(3, 5)))
    assert core.following.voted_at == 1.0
    core.step(1.02, ins.ProbeReceived(2, 8, True))  # the winner reaches it
    assert core.following.target == (2, 8)
    assert core.following.voted_at == float("-inf")


# -- probes only when a stream is silent ------------------------------------------------------


def probed(effects: Sequence[fx.Effect]) -> tuple[int, ...] | None:
    """Whom the step's probe round asks (None: no round)."""
    rounds = of(effects, fx.ProbeAll)
    return rounds[0].peers if rounds else None


def awake_primary() -> Primary:
    """A primary past its awake window, both secondaries acking every heartbeat."""
    p = Primary()
    p.keep_streaming(1.0)
    return p


def heartbeat_round(p: Primary, acking: Sequence[int] = (1, 2)) -> list[fx.Effect]:
    """A heartbeat interval: the secondaries in `acking` ack it, then the tick."""
    for s in acking:
        p.send(s)
        p.ack(s, 6)
    return p.step(ins.Tick(), after=0.1)


def test_a_primary_probes_no_secondary_whose_stream_acks() -> None:
    p = awake_primary()
    for _ in range(10):
        assert probed(heartbeat_round(p)) is None
    assert p.core.role is Role.PRIMARY


def test_a_primary_probes_a_secondary_whose_stream_went_quiet() -> None:
    """Acks stop (a partition, a paused secondary): within stream_quiet_after it is asked
    again every heartbeat, and the other, still acking, is not."""
    p = awake_primary()
    rounds = [probed(heartbeat_round(p, acking=(1,))) for _ in range(5)]
    assert rounds[0] is None
    assert rounds[-1] == (2,)


def test_a_primary_probes_a_secondary_whose_stream_ended() -> None:
    p = awake_primary()
    p.step(ins.SecondaryDisconnected(2, p.streams[2]))
    assert probed(heartbeat_round(p, acking=(1,))) == (2,)


def test_a_primary_probes_every_peer_until_awake_after_a_pause() -> None:
    """After a pause a newer epoch may exist: the primary learns of it first, by probing
    everyone, whatever its streams still deliver."""
    p = awake_primary()
    p.ack(1, 6)
    p.ack(2, 6)
    out = p.step(ins.Tick(), after=0.4)  # (paused: longer than the pause threshold)
    assert probed(out) == (1, 2)
    assert probed(heartbeat_round(p)) == (1, 2)
    p.keep_streaming(1.0)
    assert probed(heartbeat_round(p)) is None


def test_a_primary_whose_secondaries_all_stream_still_removes_a_laggard() -> None:
    """No round comes back while every peer streams: the in-sync set's timeouts run on the
    tick (a stalled secondary acks heartbeats and stores nothing)."""
    p = awake_primary()
    p.lag(2)
    for _ in range(30):
        p.send(1)
        p.ack(1, 9)
        p.send(2)
        p.ack(2, 6, knows=not p.core.in_sync_set.members[2].leaving_since)  # type: ignore[union-attr]
        assert probed(p.step(ins.Tick(), after=0.1)) is None
    assert not p.core.in_sync_set.members[2].in_sync  # type: ignore[union-attr]


def test_a_primary_whose_streams_went_quiet_steps_down_when_cut_off() -> None:
    """Its streams fall silent (cut off): it probes them, hears nothing, and steps down
    within the in-sync timeout."""
    p = awake_primary()
    for _ in range(round(1.5 / 0.1)):
        out = p.step(ins.Tick(), after=0.1)
        if of(out, fx.StepDown):
            break
        if probed(out):
            p.tick_probes(silent=(1, 2), after=0.0)
    assert p.core.role is not Role.PRIMARY


def test_a_deposed_primary_learns_the_newer_epoch_from_the_secondary_that_left_it() -> None:
    """A secondary that hears of a newer epoch ends its stream: the primary probes it, and its
    answer deposes it."""
    p = awake_primary()
    p.step(ins.SecondaryDisconnected(2, p.streams[2]))
    out = heartbeat_round(p, acking=(1,))
    assert probed(out) == (2,)
    answer = ins.ProbesAnswered(None, (view(2, Role.SECONDARY, p.epoch + 10, 6),))
    assert of(p.step(answer), fx.StepDown)


def test_a_secondary_whose_stream_is_alive_probes_no_one() -> None:
    s = Secondary()
    for _ in range(10):
        s.step(ins.HeartbeatReceived(s.stream, 3, 5, True), after=0.05)
        assert probed(s.step(ins.Tick(), after=0.05)) is None


def test_a_secondary_whose_stream_went_quiet_probes_everyone_then_elects() -> None:
    """The primary falls silent (paused, cut off): the secondary probes every replica before
    the peer timeout is out, and elects once it is."""
    s = Secondary()
    rounds = [probed(s.step(ins.Tick(), after=0.1)) for _ in range(4)]
    assert rounds[0] is None
    assert rounds[-1] == (0, 2)
    s.step(ins.Tick(), after=0.4)
    answer = ins.ProbesAnswered(
        Position(3, 5), (ins.ProbeOutcome(0, None), view(2, Role.SECONDARY, 3, 5, vouches=True))
    )
    out = s.step(answer)
    assert of(out, fx.RequestVotes) or s.core.role is Role.CANDIDATE


def test_a_secondary_following_a_live_primary_still_follows_a_newer_primary_that_announces() -> (
    None
):
    s = Secondary()
    s.step(ins.HeartbeatReceived(s.stream, 3, 5, True))
    out = s.step(ins.ProbeReceived(2, 5, True))
    assert of(out, fx.OpenStream)
    assert s.core.primary_index == 2


def test_a_round_begun_as_primary_elects_no_one_after_a_step_down() -> None:
    """A primary's round asks only the peers whose streams were silent; heard after it stepped
    down, it says nothing of the others -- one may be vouching -- so no election on it."""
    p = awake_primary()
    out = heartbeat_round(p, acking=(1,))
    assert probed(out) in (None, (2,))
    p.step(ins.LocalWriteFailed(p.epoch, "failed"))
    assert p.core.role is not Role.PRIMARY
    # (2 vouches: on its word alone, 0 and 2 could elect -- without 1, which may vouch too.)
    partial = ins.ProbesAnswered(
        Position(p.epoch, 6), (view(2, Role.SECONDARY, p.epoch, 6, vouches=True),)
    )
    out = p.step(partial, after=1.0)
    assert not of(out, fx.RequestVotes) and p.core.role is not Role.PRIMARY
    full = ins.ProbesAnswered(
        Position(p.epoch, 6),
        (view(1, Role.SECONDARY, p.epoch, 5), view(2, Role.SECONDARY, p.epoch, 6, vouches=True)),
    )
    assert of(p.step(full), fx.RequestVotes)
