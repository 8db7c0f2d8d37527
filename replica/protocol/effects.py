"""What the core decides, as plain values: its effects, handed to the shell as a `Ready`.

A step's `Ready` says what must be durable first (`persist`: the epoch seen, a truncation) and
what follows only once it is (`then`, in order: the rest of the process's state, messages,
calls, and storage work whose outcome comes back as an input). So "persist before reply" is
a property of the type, as in etcd's `Ready`: the executor (replica/replication/executor.py) hands
`persist` to its storage and carries out `then` only when storage reported it durable."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from replica.protocol.roles import Role
from replica.protocol.rules import LogPosition

# -- durable before anything that follows (Ready.persist) -------------------------------------


@dataclass(frozen=True, slots=True)
class PersistEpoch:
    """Record durably that `epoch` has been seen (granting a vote in it is seeing it: an epoch
    names one candidate, so a replica that saw it votes in it at most once)."""

    epoch: int


@dataclass(frozen=True, slots=True)
class Truncate:
    """Remove every event after `after_seq` from the log and derive the projections again."""

    after_seq: int


# -- storage work, reported back as an input ------------------------------------------------


@dataclass(frozen=True, slots=True)
class StoreBatch:
    """Append and apply the batch just received on `stream_id` in one transaction, then report
    BatchStored (or StoreFailed). Storage work, not a `persist`: nothing waits for it but the
    ack, which the core decides on BatchStored."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class AppendEpochStarted:
    """Append the new primary's epoch_started event, then report EpochStartAppended (or
    EpochStartFailed)."""

    epoch: int


# -- this replica's state, for the rest of the process ----------------------------------------


@dataclass(frozen=True, slots=True)
class SetRole:
    """Show this role to the rest of the process."""

    role: Role
    epoch: int
    primary_index: int | None


@dataclass(frozen=True, slots=True)
class StepDown:
    """No longer primary: fail every pending write (the client retries elsewhere)."""

    reason: str


@dataclass(frozen=True, slots=True)
class ResetCommit:
    """A new primary's commit point starts here."""

    seq: int


@dataclass(frozen=True, slots=True)
class AdvanceCommit:
    """The commit point moved up to `seq`: answer the writes at or below it."""

    seq: int


@dataclass(frozen=True, slots=True)
class CommitStalled:
    """Too few replicas in sync to commit anything (`shortfall` says why), or None: no longer
    stalled. Writes are refused meanwhile, and those waiting fail at once."""

    shortfall: str | None


@dataclass(frozen=True, slots=True)
class SecondaryCommitted:
    """On a secondary: the primary reports committed what this log holds up to `seq`."""

    seq: int


@dataclass(frozen=True, slots=True)
class WakeSenders:
    """The primary's log grew, its in-sync set changed or it stepped down: the stream
    senders waiting for something to send should ask again (SendWanted)."""


@dataclass(frozen=True, slots=True)
class LeaveCluster:
    """This replica was removed from the cluster and the removal is committed: it has no
    part in it any more, and stops (an operator may remove it only this way)."""

    reason: str


@dataclass(frozen=True, slots=True)
class LogNote:
    """Something an operator should see in the log; `level` is "info" or "warning". `event`
    names the notes the shell also counts (metrics): "in_sync_joined", "in_sync_left"."""

    level: str
    text: str
    event: str = ""


# -- calls and replies -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProbeAll:
    """Probe every peer; report the round as ProbesAnswered. `announce`: a new primary tells
    the others at once, even if a round is still under way."""

    epoch: int
    from_primary: bool
    announce: bool = False
    # Whom to probe: every member of the latest membership and every voter an election
    # still counts (ReplicaCore.probe_targets), but none whose replication stream with this
    # replica is alive (ReplicaCore.probe_round_targets); empty: the ports' own list (the core
    # emits no round with nobody to ask).
    peers: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class MemberStatus:
    """The primary's view of one secondary."""

    index: int
    connected: bool
    in_sync: bool
    acked_seq: int
    lag: int
    voter: bool = True  # (False: a learner, or a replica being removed)
    # What its last ack said: it knows it is in sync (its claim, seen from the primary).
    knows_in_sync: bool = False
    # Its stream is alive (acks heard within stream_quiet_after): the primary does not probe
    # it, and what it knows of it comes from the stream.
    streaming: bool = False


@dataclass(frozen=True, slots=True)
class ReplicaStatus:
    """What this replica says of itself in a probe reply (the shell adds its log's position)."""

    index: int
    role: Role
    epoch: int
    primary_index: int | None
    in_sync: bool
    vouches: bool
    following_live_primary: bool
    secondaries: tuple[MemberStatus, ...]
    claim: int | None = None  # ReplicaCore.claim


@dataclass(frozen=True, slots=True)
class ReplyProbe:
    status: ReplicaStatus


@dataclass(frozen=True, slots=True)
class RequestVotes:
    epoch: int
    position: LogPosition
    voters: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class ReplyVote:
    granted: bool
    epoch: int
    reason: str = ""


# -- a secondary's stream from its primary -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class OpenStream:
    """Open a replication stream to `primary` and say Hello with `epoch` and the log's end."""

    stream_id: int
    primary: int
    epoch: int


@dataclass(frozen=True, slots=True)
class CancelStream:
    stream_id: int
    reason: str = ""


@dataclass(frozen=True, slots=True)
class SendHello:
    """Say Hello again on `stream_id` (after truncating), with the log's new end."""

    stream_id: int
    epoch: int


@dataclass(frozen=True, slots=True)
class SendAck:
    stream_id: int
    position: LogPosition
    in_sync: bool
    # Increasing per replica; the primary echoes the newest it received (SendEvents.echo).
    ack_id: int = 0


# -- a primary's stream to one secondary -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SendDivergence:
    """Answer the secondary's Hello with this log's last position among events of epoch <= the
    Hello's last epoch, on `stream_id` (a new stream gets its id here). The log's end counts
    the events written and streamed but perhaps not durable here yet: through `written_seq`,
    all of `epoch` (a secondary may hold them and must not truncate them)."""

    secondary: int
    stream_id: int
    epoch: int
    written_seq: int


@dataclass(frozen=True, slots=True)
class RefuseStream:
    secondary: int
    reason: str


@dataclass(frozen=True, slots=True)
class SendEvents:
    """Send the events after `after_seq` up to `through_seq`."""

    secondary: int
    stream_id: int
    epoch: int
    after_seq: int
    through_seq: int
    committed_seq: int
    in_sync: bool
    echo: int = 0  # the id of the newest ack received on this stream


@dataclass(frozen=True, slots=True)
class SendHeartbeat:
    secondary: int
    stream_id: int
    epoch: int
    committed_seq: int
    last_seq: int
    in_sync: bool
    echo: int = 0  # the id of the newest ack received on this stream


@dataclass(frozen=True, slots=True)
class EndStream:
    """The primary ends its stream to `secondary` (it is no longer primary of that epoch)."""

    secondary: int
    stream_id: int
    reason: str


Durable = PersistEpoch | Truncate

Then = (
    StoreBatch
    | AppendEpochStarted
    | SetRole
    | StepDown
    | ResetCommit
    | AdvanceCommit
    | CommitStalled
    | SecondaryCommitted
    | WakeSenders
    | LeaveCluster
    | LogNote
    | ProbeAll
    | ReplyProbe
    | RequestVotes
    | ReplyVote
    | OpenStream
    | CancelStream
    | SendHello
    | SendAck
    | SendDivergence
    | RefuseStream
    | SendEvents
    | SendHeartbeat
    | EndStream
)

Effect = Durable | Then


@dataclass(frozen=True, slots=True)
class Ready:
    """What one step decided. `persist` must be durable before anything in `then` happens
    (and before any later step's `then`); `then` is carried out in order. Iterating a Ready
    gives `persist` and then `then`, the order they take effect in."""

    persist: tuple[Durable, ...] = ()
    then: tuple[Then, ...] = ()

    @staticmethod
    def of(effects: list[Effect]) -> Ready:
        persist: list[Durable] = []
        then: list[Then] = []
        for effect in effects:
            if isinstance(effect, PersistEpoch | Truncate):
                persist.append(effect)
            else:
                then.append(effect)
        return Ready(tuple(persist), tuple(then))

    def __iter__(self) -> Iterator[Effect]:
        yield from self.persist
        yield from self.then

    def __len__(self) -> int:
        return len(self.persist) + len(self.then)

    def __bool__(self) -> bool:
        return bool(self.persist or self.then)
