"""What the executor (executor.py) needs of the world, as plain objects passed in.

Every port does its slow work elsewhere -- on a worker thread, on gRPC's threads, in a
simulated network -- and reports back through the executor's inbox: its methods return at
once and never step the core. The replica's own ports are `storage_worker.DatabaseStorage`,
`peers.Peers`, `secondary.FollowStreams` and the streams `primary.PrimaryStreams` serves (all
in this package); the protocol model (tests/replica/protocol/sim.py) gives the same executor
simulated ones."""

from __future__ import annotations

import queue
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Protocol

from replica.protocol import effects as fx
from replica.protocol import inputs as ins
from replica.protocol.rules import LogPosition

# -- what comes in --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Answer:
    """What the executor tells a caller that asked for a decision (`Executor.ask`): the reply
    effects addressed to it, and the storage facts its input was built from, if any."""

    replies: tuple[fx.Then, ...]
    facts: LogFacts | None = None


@dataclass(frozen=True, slots=True)
class LogFacts:
    """The log's end and the projections' position, as read for an input."""

    last: LogPosition
    applied_seq: int


@dataclass(frozen=True, slots=True)
class Envelope:
    """One input for the core, with what carrying out its effects refers to: the caller
    waiting for the decision (`answer`; `failure`: it is told this once the input was
    stepped, instead of a reply), the primary-side stream that said Hello (`stream`), the
    batch a StoreBatch stores (`batch`, as the follow stream received it)."""

    input: ins.Input
    answer: Future[Answer] | None = None
    facts: LogFacts | None = None
    failure: str | None = None
    stream: ServedStream | None = None
    batch: object = None


@dataclass(frozen=True, slots=True)
class Persisted:
    """Storage finished the durable writes handed to it (`failure`: why not)."""

    failure: str | None = None


@dataclass(frozen=True, slots=True)
class ProbeRound:
    """A probe round ended: one outcome per peer (the log's end is read next)."""

    outcomes: tuple[ins.ProbeOutcome, ...]


@dataclass(frozen=True, slots=True)
class Query:
    """Read the core's state on the executor's thread (status pages, metrics, the rules of a
    membership change): `read(core, now)`; it must not change the core."""

    read: Callable[[Any, float], object]  # (the core: ReplicaCore, not imported by the ports)
    answer: Future[object]


@dataclass(frozen=True, slots=True)
class Stop:
    pass


Item = Envelope | Persisted | ProbeRound | Query | Stop


class Inbox:
    """The executor's one queue. Any thread puts; only the executor's thread takes. (A C-level
    SimpleQueue: every input crosses it, and a hand-off is on every write's critical path.)"""

    def __init__(self) -> None:
        self._items: queue.SimpleQueue[Item] = queue.SimpleQueue()

    def put(self, item: Item) -> None:
        self._items.put(item)

    def submit(self, event: ins.Input) -> None:
        self._items.put(Envelope(event))

    def take(self, timeout: float | None = 0.0) -> Item | None:
        """The next item, waiting up to `timeout` seconds for one (None: no limit)."""
        try:
            if timeout == 0.0:
                return self._items.get_nowait()
            return self._items.get(timeout=timeout)
        except queue.Empty:
            return None

    def __len__(self) -> int:
        return self._items.qsize()

    def drain(self) -> list[Item]:
        items: list[Item] = []
        while (item := self.take()) is not None:
            items.append(item)
        return items


# -- storage --------------------------------------------------------------------------------


class LogReader(ABC):
    """Reads of this replica's log, on storage's side of the FIFO (see Storage.read)."""

    @abstractmethod
    def last_position(self) -> LogPosition: ...

    @abstractmethod
    def applied_seq(self) -> int: ...

    @abstractmethod
    def epoch_end(self, epoch: int) -> LogPosition:
        """The last position among events of epoch <= `epoch`."""


def divergence_received(
    stream_id: int, primary_epoch: int, primary_end: LogPosition, reader: LogReader
) -> ins.DivergenceReceived:
    """A primary's divergence answer, with what the core compares it to: this log's end, and
    its last position among events of the primary end's epoch or older (a seq alone does not
    say whether the logs agree there; the epoch does)."""
    return ins.DivergenceReceived(
        stream_id,
        primary_epoch,
        primary_end,
        reader.last_position(),
        reader.epoch_end(primary_end.epoch),
    )


class EventLike(Protocol):
    @property
    def seq(self) -> int: ...

    @property
    def epoch(self) -> int: ...


def sendable(effect: fx.SendEvents, events: Sequence[EventLike]) -> bool:
    """Whether `events`, read for `effect` when its turn to be sent came, are what the core
    decided to send: every seq after `after_seq` through `through_seq`, none of a newer
    epoch than the stream's (this replica's log may have moved on as a secondary since)."""
    return (
        len(events) == effect.through_seq - effect.after_seq
        and all(e.seq == effect.after_seq + i for i, e in enumerate(events, 1))
        and all(e.epoch <= effect.epoch for e in events)
    )


class Storage(ABC):
    """This replica's database, worked by one worker in the order things are handed to it,
    each outcome reported to the inbox. Because reads run in that same order, an input built
    from a read knows every write whose outcome the core has already seen."""

    @abstractmethod
    def busy_since(self) -> float | None:
        """Since when the database has made no progress on what waits on it (None while
        nothing waits): replica/storage/watch.py. Never waits on the database."""

    @abstractmethod
    def known_facts(self) -> LogFacts:
        """The log's end and the projections' position as of the last commit that moved them
        (kept in memory: never waits on the database)."""

    @abstractmethod
    def persist(self, durable: tuple[fx.Durable, ...]) -> None:
        """Make these durable, in order, then report Persisted (with the failure, if any)."""

    @abstractmethod
    def store_batch(self, stream_id: int, batch: object) -> None:
        """Append and apply a batch received on `stream_id` in one transaction; report
        BatchStored once it committed, or StoreFailed."""

    @abstractmethod
    def append_epoch_started(self, epoch: int) -> None:
        """Append the epoch_started event; report EpochStartAppended or EpochStartFailed."""

    @abstractmethod
    def read(
        self,
        then: Callable[[LogReader], None],
        failed: Callable[[str], None],
        *,
        while_writes_wait: bool = False,
    ) -> None:
        """Run `then` with a reader (or `failed` with the reason the database gave), after
        everything handed over before. `while_writes_wait`: also with client writes held
        off, so that nothing changes the log until the core decided on what was read. Both
        callbacks run on storage's side: they must only hand things on, never block."""


# -- peers ----------------------------------------------------------------------------------


class Peers(ABC):
    """Calls to the other replicas."""

    @abstractmethod
    def probe_all(self, effect: fx.ProbeAll) -> None:
        """Probe every peer; report a ProbeRound once every call answered or timed out."""

    @abstractmethod
    def request_votes(self, effect: fx.RequestVotes) -> None:
        """Ask each voter; report one VoteReplied per voter (granted=False, "unreachable",
        for a call that failed or timed out)."""


# -- streams --------------------------------------------------------------------------------


class FollowStreams(ABC):
    """A secondary's stream to its primary (one at a time: the core's current one). What
    the primary sends is reported as inputs; the end of a stream as ReplicationStreamEnded."""

    @abstractmethod
    def open(self, effect: fx.OpenStream) -> None: ...

    @abstractmethod
    def cancel(self, stream_id: int, reason: str) -> None: ...

    @abstractmethod
    def hello(self, stream_id: int, epoch: int) -> None:
        """Say Hello again with the log's end as it is once what was handed to storage
        before is done."""

    @abstractmethod
    def ack(self, effect: fx.SendAck) -> None: ...

    @abstractmethod
    def close_all(self, reason: str) -> None:
        """End whatever stream runs (the core that opened it is gone)."""


class ServedStream(ABC):
    """A primary's end of one secondary's stream, made by whoever serves the call and handed
    in with its SecondaryHello."""

    secondary: int

    @abstractmethod
    def divergence(self, effect: fx.SendDivergence) -> None: ...

    @abstractmethod
    def refuse(self, reason: str) -> None: ...

    @abstractmethod
    def send(self, effect: fx.SendEvents | fx.SendHeartbeat) -> None: ...

    @abstractmethod
    def end(self, reason: str) -> None: ...

    @abstractmethod
    def ready(self) -> bool:
        """Whether it would take another message now (what it was given is on its way)."""
