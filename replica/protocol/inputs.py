"""What happens to a replica, as plain values: the core's inputs.

The shell turns RPCs, stream messages, database results and its clock into these and hands
them to `ReplicaCore.step(now, input)`. Positions are facts the shell read from its log just
before (the core never reads storage); stream ids name one replication stream, so that what
arrives on a stream the core has already given up is recognised and ignored."""

from __future__ import annotations

from dataclasses import dataclass

from replica.protocol.membership import Membership
from replica.protocol.roles import Role
from replica.protocol.rules import LogPosition

# -- the cluster: ticks, probes, votes -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Tick:
    """Logical time passes (the shell ticks every heartbeat interval). `storage_busy_since`:
    since when this replica's database has made no progress on what waits on it (None while
    nothing waits) -- the shell knows it without asking the database."""

    storage_busy_since: float | None = None


@dataclass(frozen=True, slots=True)
class PeerView:
    """What a probed replica said of itself."""

    index: int
    role: Role
    epoch: int
    position: LogPosition
    in_sync: bool
    vouches: bool
    following_live_primary: bool
    # The primary that counts it in its in-sync set, as it last heard (ReplicaCore.claim).
    claim: int | None = None


@dataclass(frozen=True, slots=True)
class ProbeOutcome:
    index: int
    view: PeerView | None  # None: no answer
    # No view because the call failed without timing out: the peer answered an error (its
    # database failed; it stopped vouching first: DatabaseFailed), or its process is gone.
    # Only a timeout may hide a peer that is running and vouching.
    refused: bool = False
    # The peer's host answered that nothing listens on its port (TCP RST): its process is gone,
    # and with it every belief it held. A partitioned peer times out instead.
    process_gone: bool = False


@dataclass(frozen=True, slots=True)
class ProbesAnswered:
    """A probe round (ProbeAll) finished: one outcome per peer. `own_position`: this
    replica's log's end as read after the round, or None when it was not read (a primary
    needs it for nothing; one whose database fails cannot elect)."""

    own_position: LogPosition | None
    outcomes: tuple[ProbeOutcome, ...]
    # When the round ended, if that was before this input (its own position was read after
    # it): a round heard long after it ended -- the read waited behind a stalled database --
    # is old news, and no election is held on it.
    ended_at: float | None = None


@dataclass(frozen=True, slots=True)
class ProbeReceived:
    from_index: int
    from_epoch: int
    from_primary: bool  # the caller leads from_epoch


@dataclass(frozen=True, slots=True)
class VoteRequested:
    candidate: int
    epoch: int
    position: LogPosition  # the candidate's log
    own_position: LogPosition


@dataclass(frozen=True, slots=True)
class VoteReplied:
    """The answer to RequestVotes from one voter; granted=False with reason "unreachable" when
    the call failed or timed out."""

    voter: int
    epoch: int  # the epoch the vote was asked for
    granted: bool
    voter_epoch: int = 0
    reason: str = ""


# -- this replica's own log -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EpochStartAppended:
    """The new primary's epoch_started event is durable at `position`."""

    position: LogPosition


@dataclass(frozen=True, slots=True)
class EpochStartFailed:
    reason: str


@dataclass(frozen=True, slots=True)
class Appended:
    """Client writes are durable in the primary's log up to `last_seq`."""

    last_seq: int


@dataclass(frozen=True, slots=True)
class Written:
    """The writer holds client writes up to `last_seq` (decided, their local commit under
    way): the streams may send them now. Nothing is acknowledged before Appended says they
    are durable here too; if their commit fails, LocalWriteFailed follows."""

    last_seq: int


@dataclass(frozen=True, slots=True)
class LocalWriteFailed:
    """A batch announced by Written did not commit here (or its commit is in doubt). The
    secondaries may hold it: this primary must write nothing more in its epoch (the same seqs
    would carry other events), so it steps down, and an election sorts the logs out.
    `epoch`: the one the batch was written in (a later election's candidacy is not hurt)."""

    epoch: int
    reason: str


# -- a secondary's stream from its primary -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class DivergenceReceived:
    stream_id: int
    primary_epoch: int
    primary_end: LogPosition  # the primary's last position with epoch <= our last epoch
    own_last: LogPosition
    own_end_for_primary_epoch: LogPosition  # ours with epoch <= primary_end.epoch


@dataclass(frozen=True, slots=True)
class BatchReceived:
    stream_id: int
    primary_epoch: int
    batch_end: LogPosition


@dataclass(frozen=True, slots=True)
class BatchStored:
    stream_id: int
    position: LogPosition  # the log's end after storing
    committed_seq: int
    in_sync: bool  # what the batch said
    echo: int = 0  # the batch's echo of this replica's acks (see HeartbeatReceived)


@dataclass(frozen=True, slots=True)
class StoreFailed:
    stream_id: int
    reason: str


@dataclass(frozen=True, slots=True)
class HeartbeatReceived:
    stream_id: int
    primary_epoch: int
    committed_seq: int
    in_sync: bool
    # The id of the newest ack of this replica the primary had received when it said so:
    # the primary's word is at least as new as that ack (effects.SendAck).
    echo: int = 0


@dataclass(frozen=True, slots=True)
class ReplicationStreamEnded:
    """The stream to the primary broke, was refused, or was cancelled."""

    stream_id: int


# -- a primary's stream to one secondary -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SecondaryHello:
    """A secondary opened a stream (stream_id None) or said Hello again after truncating."""

    secondary: int
    stream_id: int | None
    secondary_epoch: int


@dataclass(frozen=True, slots=True)
class SecondaryAcked:
    secondary: int
    stream_id: int
    seq: int
    knows_in_sync: bool  # what the secondary believes of its membership
    ack_id: int = 0  # echoed in what the primary sends next


@dataclass(frozen=True, slots=True)
class SendWanted:
    """The stream's sender is ready to send its next message."""

    secondary: int
    stream_id: int


@dataclass(frozen=True, slots=True)
class SecondaryDisconnected:
    secondary: int
    stream_id: int


@dataclass(frozen=True, slots=True)
class DatabaseFailed:
    """A read or write of this replica's own database failed where a peer asked something of
    it: the shell is about to answer that peer UNAVAILABLE."""

    reason: str


@dataclass(frozen=True, slots=True)
class MembershipChanged:
    """The latest membership event in this replica's log changed (written, stored, or cut by a
    truncation): `membership` is in force from now on (membership.py)."""

    membership: Membership


Input = (
    Tick
    | ProbesAnswered
    | ProbeReceived
    | VoteRequested
    | VoteReplied
    | EpochStartAppended
    | EpochStartFailed
    | Appended
    | Written
    | LocalWriteFailed
    | DivergenceReceived
    | BatchReceived
    | BatchStored
    | StoreFailed
    | HeartbeatReceived
    | ReplicationStreamEnded
    | SecondaryHello
    | SecondaryAcked
    | SendWanted
    | SecondaryDisconnected
    | DatabaseFailed
    | MembershipChanged
)
