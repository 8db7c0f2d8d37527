"""A simulated world around real replicas: each one is the real `Executor`
(replica/replication/executor.py) with the real `ReplicaCore` in it, the real `RoleState` and
`CommitTracker` beside it, and simulated ports -- a database whose jobs complete, stall or fail
(also in doubt: committed, but reported failed) when the model says; a network of ordered streams
and calls that deliver, delay, lose and break messages; a clock the model moves. Processes crash
(volatile state and pending I/O lost, the disk kept), restart and pause.

Nothing here decides what the protocol decides, and nothing here carries out an effect: the
executor does both, one input at a time, on this thread. This module is the environment: it
moves messages, completes storage jobs, runs the clients' writes as the writer does, and
records the plain facts the invariants need. Where the real system can only assume something
(a replica acks only what it stored, votes only once the vote is durable, a client is told
"committed" only for its own event), the port or the client checks it the moment it happens.
"""

from __future__ import annotations

import itertools
import re
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from eventlog import Position
from replica.errors import ChatError
from replica.protocol import ProtocolConfig, ReplicaCore, Role, rules
from replica.protocol import effects as fx
from replica.protocol import inputs as ins
from replica.protocol.membership import Membership, MembershipChange
from replica.replication.executor import Executor, StorageUnavailable
from replica.replication.ports import (
    Answer,
    Envelope,
    FollowStreams,
    Inbox,
    Item,
    LogFacts,
    LogReader,
    Peers,
    Persisted,
    ProbeRound,
    ServedStream,
    Storage,
    divergence_received,
    sendable,
)
from replica.storage.commit import CommitTracker
from replica.storage.role import RoleState
from replica.storage.watch import StorageWatch

HEARTBEAT = 0.1
PEER_TIMEOUT = 0.6
INSYNC_TIMEOUT = 1.0
STORAGE_TIMEOUT = 2 * INSYNC_TIMEOUT  # (the real default)
# The calls' deadlines (the real ports': replica/replication/peers.py): a call not answered by then
# fails, and its caller goes on.
PROBE_TIMEOUT = max(2 * HEARTBEAT, 0.2)
VOTE_TIMEOUT = PEER_TIMEOUT
# min_insync = 1 is safe only on a network whose delays are far below the timeouts, with
# threads that run (a process that does not run is paused, and notices). In that mode
# nothing on the network may wait longer than this -- below the probe deadline: a probe
# between two running replicas is answered.
MAX_DELAY = 0.15
# How long a primary that hears nothing from any peer may go on saying it is primary: the
# in-sync timeout, then a probe round to notice it (and a tick to start that round) -- counted
# from the last answer's round, which the core hears when the round ends: up to a probe
# timeout after the answer came (a peer that refused at once, one that timed out beside it).
CUT_OFF_BOUND = INSYNC_TIMEOUT + 2 * PROBE_TIMEOUT + 2 * HEARTBEAT
# How long a running replica may go without hearing a peer on a stream and without probing it
# (probes go only where a stream is silent: ReplicaCore.probe_round_targets): the stream counts
# as quiet after stream_quiet_after, a tick notices, and a round to other peers may still be
# under way (the executor starts the next once it ended, or after two probe timeouts).
STREAM_QUIET_AFTER = min(3 * HEARTBEAT, PEER_TIMEOUT / 2)
UNWATCHED_BOUND = STREAM_QUIET_AFTER + 2 * PROBE_TIMEOUT + 3 * HEARTBEAT


def _kind(text: str) -> str:
    """A decision's wording without its numbers or details, to count decisions by kind."""
    return re.sub(r"\d+(\.\d+)?", "N", text.split(" (")[0].split(": ")[-1])[:70]


class Violation(AssertionError):
    """An invariant of the protocol does not hold. Raised through `World.violation`, which
    also keeps it: a violation found inside the executor's carrying out (a port's check) or
    a future's callback (a reply, an acknowledgement) is caught there, and re-raised after
    the move."""


@dataclass(frozen=True)
class Entry:
    epoch: int
    request_id: str | None  # None: a new primary's epoch_started event
    change: MembershipChange | None = None  # a membership event (written as a client's write)


def membership_of(initial: Membership, log: list[Entry]) -> Membership:
    """The membership in force after `log`: its latest membership event's, or the initial."""
    membership = initial
    for seq, entry in enumerate(log, 1):
        if entry.change is not None:
            membership = membership.changed(entry.change, seq)
    return membership


@dataclass
class Disk:
    """What survives a crash: the log and the recorded epoch (log_state's current_epoch)."""

    log: list[Entry] = field(default_factory=list)
    epoch: int = 0

    def position(self) -> Position:
        return Position(self.log[-1].epoch, len(self.log)) if self.log else Position(0, 0)

    def end_for_epoch(self, epoch: int) -> Position:
        for seq in range(len(self.log), 0, -1):
            if self.log[seq - 1].epoch <= epoch:
                return Position(self.log[seq - 1].epoch, seq)
        return Position(0, 0)

    def current_epoch(self) -> int:
        return max(self.epoch, self.log[-1].epoch if self.log else 0)


class DiskReader(LogReader):
    def __init__(self, disk: Disk) -> None:
        self._disk = disk

    def last_position(self) -> Position:
        return self._disk.position()

    def applied_seq(self) -> int:
        return len(self._disk.log)

    def epoch_end(self, epoch: int) -> Position:
        return self._disk.end_for_epoch(epoch)


# -- the network ------------------------------------------------------------------------------


@dataclass
class Message:
    sent_at: float
    kind: str  # hello, ack (up); divergence, batch, heartbeat (down)
    body: dict[str, Any]


@dataclass(frozen=True)
class SimBatch:
    """A batch as the secondary received it (what its StoreBatch stores)."""

    entries: tuple[tuple[int, Entry], ...]
    committed: int
    in_sync: bool
    echo: int


@dataclass
class Link:
    """One replication stream: a secondary's call to a primary."""

    link_id: int
    secondary: int
    primary: int
    secondary_incarnation: int
    primary_incarnation: int
    secondary_stream: int  # the secondary core's stream id
    primary_stream: int | None = None  # the primary core's, once it answered the first Hello
    served: SimServed | None = None  # the primary's end, once it heard a Hello
    hello_epoch: int = 0  # the epoch of the last event of the newest Hello's log
    primary_epoch: int = 0  # the primary's epoch, as its divergence answer said
    up: deque[Message] = field(default_factory=deque)  # to the primary
    down: deque[Message] = field(default_factory=deque)  # to the secondary
    broken: bool = False
    # When each end learns that the stream ended (None: told already, or nothing to tell).
    secondary_notice: float | None = None
    primary_notice: float | None = None

    def __repr__(self) -> str:  # (how hypothesis prints a chosen one)
        return f"<stream {self.link_id}: {self.secondary} -> {self.primary}>"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:  # hypothesis's printer
        printer.text(repr(self))


@dataclass
class Call:
    """A probe or vote call: the request travels to the callee, the reply back."""

    call_id: int
    kind: str  # probe, vote
    caller: int
    callee: int
    caller_incarnation: int
    sent_at: float
    request: dict[str, Any]
    round_id: int = 0
    timeout: float = PROBE_TIMEOUT
    reply: dict[str, Any] | None = None  # in flight back once set
    refused: bool = False  # the callee answered an error of its own (its database failed)
    replied_at: float = 0.0
    handling: bool = False  # the callee is deciding (its executor holds the request)

    def __repr__(self) -> str:
        way = "reply" if self.reply is not None or self.refused else "request"
        return f"<{self.kind} {self.call_id} {way}: {self.caller} -> {self.callee}>"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:  # hypothesis's printer
        printer.text(repr(self))


# -- the simulated ports ------------------------------------------------------------------------


@dataclass
class Job:
    """One piece of work handed to a replica's storage, done when the model says."""

    kind: str  # persist, store, append, read
    run: Callable[[], None]  # do it and report success
    fail: Callable[[], None]  # report a failure (nothing done)
    needs_writer_lock: bool = False  # waits while the writer commits a batch
    writes: bool = False  # a write: may also fail in doubt (done, reported failed)


class SimStorage(Storage):
    """The replica's database: a queue of jobs done in order, one per model move."""

    def __init__(self, world: World, node: Node) -> None:
        self.world = world
        self.node = node
        self.jobs: deque[Job] = deque()
        self.failed_stream: int | None = None  # a batch of it was not stored
        # The real watch, on the model's clock: the job at the head of the queue is under
        # way (the real worker does one at a time), and so is the writer's batch.
        self.watch = StorageWatch(node.index, clock=lambda: world.now)
        self._head: int | None = None  # the watch's token for the job under way
        self.writer_op: int | None = None  # and for the writer's batch

    def _queue(self, job: Job) -> None:
        self.jobs.append(job)
        if self._head is None:
            self._head = self.watch.begin()

    def busy_since(self) -> float | None:
        return self.watch.busy_since()

    def known_facts(self) -> LogFacts:
        disk = self.node.disk
        return LogFacts(disk.position(), len(disk.log))

    def persist(self, durable: tuple[fx.Durable, ...]) -> None:
        node = self.node
        inbox = node.inbox
        for effect in durable:
            if isinstance(effect, fx.Truncate):
                self.world.check_truncation(node, effect.after_seq)

        def run() -> None:
            for effect in durable:
                match effect:
                    case fx.PersistEpoch(epoch):
                        node.disk.epoch = max(node.disk.epoch, epoch)
                    case fx.Truncate(after_seq):
                        log = node.disk.log
                        self.world.observe(
                            f"truncated a divergent tail ({len(log) - after_seq} events)"[:38]
                        )
                        del log[after_seq:]
            self.world.tell_membership(node)

        def done() -> None:
            run()
            inbox.put(Persisted())

        job = Job(
            "persist",
            done,
            lambda: inbox.put(Persisted("the database is down")),
            needs_writer_lock=any(isinstance(e, fx.Truncate) for e in durable),
            writes=True,
        )
        self._queue(job)
        node.doubt[id(job)] = run

    def store_batch(self, stream_id: int, batch: object) -> None:
        assert isinstance(batch, SimBatch)
        node = self.node

        def run() -> None:
            if stream_id == self.failed_stream:
                fail()  # (as the real port: an earlier batch of the stream was not stored)
                return
            self.world.store(node, batch)
            self.world.tell_membership(node)
            node.inbox.submit(
                ins.BatchStored(
                    stream_id, node.disk.position(), batch.committed, batch.in_sync, batch.echo
                )
            )

        def fail() -> None:
            self.failed_stream = stream_id
            node.inbox.submit(ins.StoreFailed(stream_id, "the database is down"))

        job = Job("store", run, fail, needs_writer_lock=True, writes=True)
        self._queue(job)

        def stored_in_doubt() -> None:
            if stream_id != self.failed_stream:
                self.world.store(node, batch)
                self.world.tell_membership(node)  # (done, though reported failed)

        node.doubt[id(job)] = stored_in_doubt

    def append_epoch_started(self, epoch: int) -> None:
        node = self.node

        def append() -> None:
            node.disk.log.append(Entry(epoch, None))

        def run() -> None:
            append()
            node.inbox.submit(ins.EpochStartAppended(node.disk.position()))

        job = Job(
            "append",
            run,
            lambda: node.inbox.submit(ins.EpochStartFailed("the database is down")),
            needs_writer_lock=True,
            writes=True,
        )
        self._queue(job)
        node.doubt[id(job)] = append

    def read(
        self,
        then: Callable[[LogReader], None],
        failed: Callable[[str], None],
        *,
        while_writes_wait: bool = False,
    ) -> None:
        disk = self.node.disk
        self._queue(
            Job(
                "read",
                lambda: then(DiskReader(disk)),
                lambda: failed("the database is down"),
                needs_writer_lock=while_writes_wait,
            )
        )

    def runnable(self) -> bool:
        """The next job can be done now (one that takes the writer's lock waits while the
        writer commits a batch)."""
        return bool(self.jobs) and not (self.jobs[0].needs_writer_lock and self.node.written)

    def complete(self, outcome: str = "ok") -> None:
        """The next job ends: "ok", "failed" (nothing done) or "in doubt" (done, but reported
        failed: a connection lost on COMMIT). A database that is down fails it."""
        job = self.jobs.popleft()
        doubt = self.node.doubt.pop(id(job), None)
        if self.node.db_down:
            outcome = "failed"
        assert self._head is not None
        self.watch.end(self._head, answered=outcome == "ok")
        self._head = self.watch.begin() if self.jobs else None
        if outcome == "ok":
            job.run()
            return
        self.world.observe(f"storage {job.kind} {outcome}")
        if outcome == "in doubt" and job.writes and doubt is not None:
            doubt()
        job.fail()


class SimFollow(FollowStreams):
    """A secondary's stream to its primary, over the simulated network."""

    def __init__(self, world: World, node: Node) -> None:
        self.world = world
        self.node = node

    def _current(self, stream_id: int) -> Link | None:
        link = self.node.follow
        if link is None or link.secondary_stream != stream_id or link.broken:
            return None
        return link

    def open(self, effect: fx.OpenStream) -> None:
        world, node = self.world, self.node
        if node.follow is not None:
            world.break_link(node.follow)
        target = world.nodes[effect.primary]
        link = Link(
            next(world.ids),
            node.index,
            effect.primary,
            node.incarnation,
            target.incarnation,
            effect.stream_id,
        )
        node.follow = link
        world.links.append(link)

        def start(reader: LogReader) -> None:
            if link.broken:
                return
            if not world.nodes[link.primary].alive:
                world.break_link(link)  # nothing listens: the call fails at once
                return
            link.primary_incarnation = world.nodes[link.primary].incarnation
            link.up.append(world.message("hello", epoch=effect.epoch, at=reader.last_position()))

        assert node.storage is not None
        node.storage.read(start, lambda reason: world.break_link(link))

    def cancel(self, stream_id: int, reason: str) -> None:
        link = self._current(stream_id)
        if link is not None:
            self.world.break_link(link)

    def hello(self, stream_id: int, epoch: int) -> None:
        link = self._current(stream_id)
        if link is None:
            return
        world = self.world

        def send(reader: LogReader) -> None:
            if not link.broken:
                link.up.append(world.message("hello", epoch=epoch, at=reader.last_position()))

        assert self.node.storage is not None
        self.node.storage.read(send, lambda reason: world.break_link(link))

    def ack(self, effect: fx.SendAck) -> None:
        disk = self.node.disk
        position = effect.position
        if position.seq > len(disk.log) or (
            position.seq > 0 and disk.log[position.seq - 1].epoch != position.epoch
        ):
            raise self.world.violation(
                f"replica {self.node.index} acked {position} but stores {disk.position()}"
            )
        link = self._current(effect.stream_id)
        if link is None:
            return
        if link.primary_epoch < disk.epoch:
            # Its ack could complete a commit of a primary it no longer follows, in an epoch
            # whose successor it helped elect without what it acks.
            raise self.world.violation(
                f"replica {self.node.index} acked on a stream from the primary of epoch "
                f"{link.primary_epoch}, having recorded epoch {disk.epoch}"
            )
        self.world.check_prefix(self.node, link)
        link.up.append(
            self.world.message(
                "ack", seq=position.seq, in_sync=effect.in_sync, ack_id=effect.ack_id
            )
        )

    def close_all(self, reason: str) -> None:
        if self.node.follow is not None:
            self.world.break_link(self.node.follow)


class SimServed(ServedStream):
    """A primary's end of one stream (made when its first Hello arrives)."""

    def __init__(self, world: World, link: Link) -> None:
        self.world = world
        self.link = link
        self.secondary = link.secondary

    @property
    def _node(self) -> Node:
        return self.world.nodes[self.link.primary]

    # What it is handed goes on the link as decided; what the primary's log holds is read
    # when the message is delivered -- as the call's thread reads it when it sends, some time
    # after the decision (the log may have moved on meanwhile).

    def divergence(self, effect: fx.SendDivergence) -> None:
        link = self.link
        link.primary_stream = effect.stream_id
        if not link.broken:
            link.down.append(
                self.world.message("divergence", effect=effect, hello_epoch=link.hello_epoch)
            )

    def refuse(self, reason: str) -> None:
        self.world.break_link(self.link)

    def send(self, effect: fx.SendEvents | fx.SendHeartbeat) -> None:
        link = self.link
        if link.broken:
            return
        match effect:
            case fx.SendEvents(_, _, epoch):
                link.down.append(self.world.message("batch", epoch=epoch, effect=effect))
            case fx.SendHeartbeat(_, _, epoch, committed, _, in_sync, echo):
                link.down.append(
                    self.world.message(
                        "heartbeat", epoch=epoch, committed=committed, in_sync=in_sync, echo=echo
                    )
                )

    def end(self, reason: str) -> None:
        self.world.break_link(self.link)

    def ready(self) -> bool:
        """Its call takes more while little waits on the link (gRPC's flow control)."""
        return not self.link.broken and len(self.link.down) < 2


class SimPeers(Peers):
    """Probe rounds and vote requests as calls on the simulated network."""

    def __init__(self, world: World, node: Node) -> None:
        self.world = world
        self.node = node
        self.rounds: dict[int, dict[int, ins.ProbeOutcome]] = {}
        self.expected: dict[int, int] = {}

    def probe_all(self, effect: fx.ProbeAll) -> None:
        node, world = self.node, self.world
        round_id = next(world.ids)
        self.rounds[round_id] = {}
        peers = list(effect.peers)  # (the core's choice: ReplicaCore.probe_round_targets)
        for peer in peers:
            node.probed_at[peer] = world.now
        self.expected[round_id] = len(peers)
        if not peers:
            del self.rounds[round_id], self.expected[round_id]
            node.inbox.put(ProbeRound(()))
        for peer in peers:
            world.call(
                node,
                "probe",
                peer,
                {"from": node.index, "epoch": effect.epoch, "primary": effect.from_primary},
                round_id,
            )

    def outcome(self, round_id: int, outcome: ins.ProbeOutcome) -> None:
        outcomes = self.rounds.get(round_id)
        if outcomes is None:
            return
        outcomes[outcome.index] = outcome
        if len(outcomes) == self.expected[round_id]:
            del self.rounds[round_id]
            del self.expected[round_id]
            self.node.inbox.put(ProbeRound(tuple(outcomes[i] for i in sorted(outcomes))))

    def request_votes(self, effect: fx.RequestVotes) -> None:
        node = self.node
        if node.disk.epoch < effect.epoch:
            raise self.world.violation(
                f"replica {node.index} asked for votes in epoch {effect.epoch} before "
                f"recording it (recorded {node.disk.epoch})"
            )
        for voter in effect.voters:
            self.world.call(
                node, "vote", voter, {"epoch": effect.epoch, "position": effect.position}
            )


# -- replicas ---------------------------------------------------------------------------------


class TimedInbox(Inbox):
    """The executor's inbox, noting when each item arrived (for a busy executor: Node.lag)."""

    def __init__(self, clock: Callable[[], float] = lambda: 0.0) -> None:
        super().__init__()
        self._clock = clock
        self._arrived: deque[float] = deque()

    def put(self, item: Item) -> None:
        self._arrived.append(self._clock())
        super().put(item)

    def submit(self, event: ins.Input) -> None:
        self.put(Envelope(event))

    def take(self, timeout: float | None = 0.0) -> Item | None:
        item = super().take(timeout)
        if item is not None:
            self._arrived.popleft()
        return item

    def oldest(self) -> float | None:
        """When the item it would take next arrived."""
        return self._arrived[0] if self._arrived else None


@dataclass
class Waiting:
    """A client's write, written: waiting to be told it committed."""

    request_id: str
    seq: int
    incarnation: int


@dataclass
class Node:
    index: int
    disk: Disk = field(default_factory=Disk)
    executor: Executor | None = None
    incarnation: int = 0
    paused: bool = False
    # Its database does not answer: every job fails (connections killed, the server
    # restarting, a full disk); the process runs on.
    db_down: bool = False
    # Its database answers nothing at all (a stuck disk or server, connections kept open):
    # every job, the writer's commit, a probe's read of the log wait until it answers again.
    db_stalled: bool = False
    # Its database is slow: it completes a job at most once every `slow_io` seconds (0: at
    # the model's pace).
    slow_io: float = 0.0
    io_done_at: float = float("-inf")
    # Its executor is busy: it takes each input `lag` seconds after it arrived (a backlog it
    # works through in order), while its ticks keep time -- so it is not paused, and notices
    # no pause (0: at the model's pace). Honoured by `settle`.
    lag: float = 0.0
    inbox: TimedInbox = field(default_factory=TimedInbox)
    role: RoleState = field(default_factory=lambda: RoleState(0))
    commits: CommitTracker = field(default_factory=CommitTracker)
    storage: SimStorage | None = None
    peers: SimPeers | None = None
    follow: Link | None = None
    doubt: dict[int, Callable[[], None]] = field(default_factory=dict)
    # The writer: a batch decided and streamed, its local commit under way (it holds its lock
    # until commit() or a failure): the seqs after the disk's log. Lost in a crash.
    written: list[Entry] = field(default_factory=list)
    written_tenure: int = 0  # the commit tracker's tenure the writer read for it
    fenced_epoch: int | None = None  # the writer's: a streamed batch failed in this epoch
    # Since when it shows itself primary, and when a peer last answered it (a call's reply or
    # refusal, an ack on a stream): the cut-off primary check.
    primary_since: float | None = None
    heard_at: float = float("-inf")
    # When each peer's ack on a stream last reached it (as primary), when its primary's
    # message last reached it on its stream (as secondary), and when it last started a probe
    # round asking each peer: the check that every silent peer is watched (UNWATCHED_BOUND).
    acked_by: dict[int, float] = field(default_factory=dict)
    stream_heard_at: float = float("-inf")
    probed_at: dict[int, float] = field(default_factory=dict)
    # Since when it has run with every input it received processed in time (the fair
    # schedule of `settle`; time passing without that, a pause or a crash starts it over).
    ran_since: float = 0.0
    primary_epoch: int | None = None  # elected in, as the effects carried out say
    # A pause that ended, until its first step after it: (how long it did not run, whether
    # it led -- or was about to -- and the stream it followed when it stopped).
    woke: tuple[float, bool, int | None] | None = None
    paused_at: float = 0.0
    last_tenure: tuple[int, int] = (0, 0)  # (commit tracker tenure, its commit point) last seen
    # The membership its executor was last told of (MembershipChanged), and whether it left
    # the cluster (removed, its removal committed: it stops for good).
    told: Membership | None = None
    left: bool = False

    def log_as_written(self) -> list[Entry]:
        """What the primary's streams read: its log and the batch being committed."""
        return self.disk.log + self.written

    @property
    def alive(self) -> bool:
        return self.executor is not None

    @property
    def running(self) -> bool:
        return self.executor is not None and not self.paused

    @property
    def core(self) -> ReplicaCore | None:
        return None if self.executor is None else self.executor.core

    @property
    def jobs(self) -> deque[Job]:
        return deque() if self.storage is None else self.storage.jobs

    def __repr__(self) -> str:
        return f"<replica {self.index}>"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:  # hypothesis's printer
        printer.text(repr(self))


class World:
    """N replicas and the network between them, on one logical clock."""

    def __init__(
        self,
        n: int,
        min_insync: int,
        batch_events: int = 2,
        observe: Callable[[str], None] = lambda what: None,
        executor: type[Executor] = Executor,
        spare: int = 0,
    ) -> None:
        """`n` replicas are the cluster's first voters; `spare` more run from the start
        outside it, for membership changes to add."""
        self.n = n
        self.initial = Membership.initial(tuple(range(n)))
        self.batch_events = batch_events
        self.min_insync = min_insync
        self.bounded = min_insync == 1  # see MAX_DELAY
        self.observe = observe  # told of the protocol's notable decisions (hypothesis events)
        self.executor_class = executor
        self.now = 0.0
        self.nodes = [Node(i) for i in range(n + spare)]
        self.links: list[Link] = []
        self.calls: list[Call] = []
        self.cut: set[tuple[int, int]] = set()  # directions a -> b that deliver nothing
        self.ids = itertools.count(1)
        # Plain facts for the invariants.
        # request id -> (seq, epoch of the primary that acknowledged it)
        self.acked: dict[str, tuple[int, int]] = {}
        self.acked_at_seq: dict[int, str] = {}
        # What any primary ever committed (AdvanceCommit), a prefix of the log: each seq's
        # event and the oldest epoch whose primary committed it. Acknowledged writes are
        # among them; so are epoch_started events, which no client waits for -- a committed
        # event is applied by the secondaries, so it is never lost either.
        self.committed: list[tuple[Entry, int]] = []
        self.primary_of_epoch: dict[int, int] = {}
        self.next_request = 0
        self.waiting: list[Waiting] = []
        self.violations: list[Violation] = []
        for node in self.nodes:
            self.restart(node.index)

    def violation(self, text: str) -> Violation:
        found = Violation(text)
        self.violations.append(found)
        return found

    # -- replicas --------------------------------------------------------------------------

    def config(self, index: int) -> ProtocolConfig:
        return ProtocolConfig(
            index=index,
            members=tuple(range(self.n)),
            min_insync=self.min_insync,
            heartbeat_interval=HEARTBEAT,
            peer_timeout=PEER_TIMEOUT,
            insync_timeout=INSYNC_TIMEOUT,
            storage_timeout=STORAGE_TIMEOUT,
            batch_events=self.batch_events,
            max_in_flight=2 * self.batch_events,
        )

    def restart(self, index: int) -> None:
        node = self.nodes[index]
        assert node.executor is None
        node.incarnation += 1
        node.inbox = TimedInbox(lambda: self.now)
        node.role = RoleState(index)
        node.commits = CommitTracker()
        node.storage = SimStorage(self, node)
        node.peers = SimPeers(self, node)
        node.doubt = {}
        node.follow = None
        node.primary_since = None
        node.primary_epoch = None
        node.last_tenure = (node.commits.tenure, node.commits.committed_seq)
        node.fenced_epoch = None
        node.told = membership_of(self.initial, node.disk.log)
        node.executor = self.executor_class(
            self.config(index),
            node.disk.current_epoch(),
            inbox=node.inbox,
            storage=node.storage,
            peers=node.peers,
            follow=SimFollow(self, node),
            role=node.role,
            commits=node.commits,
            clock=lambda: self.now,
            observe=lambda effect: self._observe_effect(node, effect),
            left=lambda reason: self._left(node),
            membership=node.told,
            raise_effect_errors=True,  # a bug here fails the example, not restarts the core
        )
        node.executor.claim()

    def _observe_effect(self, node: Node, effect: fx.Effect) -> None:
        match effect:
            case fx.AppendEpochStarted(epoch):  # (elected: its tenure begins)
                node.primary_epoch = epoch
                core = node.core
                # (A voter of the membership it elects in: the latest, or, removed by a
                # change not known committed, the one before -- ReplicaCore.electing_voters.)
                if core is not None and node.index not in core.electing_voters():
                    raise self.violation(
                        f"replica {node.index}, no voter ({core.membership.describe()}), won "
                        f"the election of epoch {epoch}"
                    )
                missing = self._first_missing_acked(node.disk.log)
                if missing is not None:
                    raise self.violation(
                        f"replica {node.index} won the election of epoch {epoch} without "
                        f"{missing}: {node.disk.log}"
                    )
            case fx.StepDown():
                node.primary_epoch = None
                self.observe("step down: " + _kind(effect.reason))
            case fx.AdvanceCommit(seq):
                # An older epoch's events commit only behind one of the primary's own epoch
                # (Raft's figure 8: counted acks alone do not make them safe). The epoch is
                # the one it was elected in, as the effects carried out say (the core's own
                # state may be a step ahead).
                epoch = node.primary_epoch
                if not any(e.epoch == epoch for e in node.log_as_written()[:seq]):
                    raise self.violation(
                        f"primary {node.index} of epoch {epoch} committed up to seq {seq}, "
                        "before any event of its own epoch"
                    )
                assert epoch is not None
                self._committed(node, seq, epoch)
            case fx.LogNote(_, text):
                self.observe(_kind(text))
            case fx.ReplyVote(granted, epoch, reason):
                self.observe("vote granted" if granted else "vote refused: " + _kind(reason))
                # The vote is the epoch recorded: durable before the candidate hears it, or a
                # restart would forget it and vote again in that epoch (two primaries).
                if granted and node.disk.current_epoch() < epoch:
                    raise self.violation(
                        f"replica {node.index} granted its vote in epoch {epoch} with epoch "
                        f"{node.disk.epoch} durable"
                    )
            case _:
                pass

    def _committed(self, node: Node, seq: int, epoch: int) -> None:
        """Primary `node` of `epoch` committed its log up to `seq`: that prefix must agree
        with what any primary committed before (one event per committed seq)."""
        log = node.disk.log
        if seq > len(log):
            raise self.violation(
                f"primary {node.index} committed up to seq {seq}, beyond its durable log "
                f"({len(log)})"
            )
        for at in range(seq):
            if at < len(self.committed):
                entry, first = self.committed[at]
                if entry != log[at]:
                    raise self.violation(
                        f"primary {node.index} of epoch {epoch} committed {log[at]} at seq "
                        f"{at + 1}, where the primary of epoch {first} committed {entry}"
                    )
                self.committed[at] = (entry, min(first, epoch))
            else:
                self.committed.append((log[at], epoch))

    def _leading(self, link: Link) -> Node | None:
        """The primary at the far end of `link`, if it still leads the epoch it answered the
        stream in (its log, as written, only grows meanwhile)."""
        primary = self.nodes[link.primary]
        iss = None if primary.core is None else primary.core.in_sync_set
        if (
            primary.incarnation != link.primary_incarnation
            or iss is None
            or iss.epoch != link.primary_epoch
        ):
            return None
        return primary

    def check_truncation(self, node: Node, after_seq: int) -> None:
        """KIP-101: a divergent tail is cut -- and only a divergent one: the first event cut is
        not the one its primary holds at that seq."""
        link = node.follow
        primary = None if link is None or link.broken else self._leading(link)
        if primary is None:
            return
        log, theirs = node.disk.log, primary.log_as_written()
        if after_seq < min(len(log), len(theirs)) and log[after_seq] == theirs[after_seq]:
            raise self.violation(
                f"replica {node.index} cuts its log after seq {after_seq}, though its primary "
                f"{primary.index} holds the same {log[after_seq]} at seq {after_seq + 1}"
            )

    def check_prefix(self, node: Node, link: Link) -> None:
        """What a secondary acks on a stream is a prefix of its primary's log (as written):
        the divergence exchange cut whatever differed."""
        primary = self._leading(link)
        if primary is None:
            return
        log, theirs = node.disk.log, primary.log_as_written()
        common = min(len(log), len(theirs))
        if log[:common] != theirs[:common]:
            seq = next(k for k in range(common) if log[k] != theirs[k]) + 1
            raise self.violation(
                f"replica {node.index} acks on primary {primary.index}'s stream holding "
                f"{log[seq - 1]} at seq {seq}, where its primary holds {theirs[seq - 1]}"
            )

    def crash(self, index: int) -> None:
        node = self.nodes[index]
        node.executor = None
        node.paused = False
        node.woke = None
        node.db_down = False  # (its database is another process; a restart finds it up)
        node.db_stalled = False
        node.slow_io = 0.0
        node.lag = 0.0
        node.storage = None  # pending I/O never happened
        node.written = []  # its commit never finished
        node.follow = None
        self.waiting = [w for w in self.waiting if w.incarnation != node.incarnation]
        for link in self.links:
            if not link.broken and index in (link.secondary, link.primary):
                self.break_link(link)

    def pause(self, index: int) -> None:
        node = self.nodes[index]
        node.paused = True
        node.paused_at = self.now

    def resume(self, index: int) -> None:
        node = self.nodes[index]
        core = node.core
        if not node.paused or core is None:
            return
        node.paused = False
        node.woke = (
            self.now - node.paused_at,
            core.in_sync_set is not None,
            core.following.stream_id,
        )

    def _check_woke(self, node: Node) -> None:
        """A process that did not run for longer than the pause threshold notices at its first
        step after (whatever that step's input): what waits on its stream is old news, so it
        drops that stream and its membership with it; and after longer than peer_timeout, a
        primary steps down (the others may have elected)."""
        core = node.core
        if node.woke is None or core is None or core.last_input_at < self.now:
            return
        gap, led, stream = node.woke
        node.woke = None
        if gap > core.config.pause_threshold and (
            core.following.in_sync or (stream is not None and core.following.stream_id == stream)
        ):
            raise self.violation(
                f"replica {node.index}, paused for {gap:.2f}s, still believes its stream "
                f"{stream} after its first step"
            )
        if gap > PEER_TIMEOUT and led and core.in_sync_set is not None:
            raise self.violation(
                f"replica {node.index}, primary and paused for {gap:.2f}s, did not step down "
                "at its first step after"
            )

    # -- moves -------------------------------------------------------------------------------

    def process(self, index: int) -> None:
        """The replica's executor takes the next item from its inbox."""
        executor = self.nodes[index].executor
        assert executor is not None
        executor.process_next()
        self._after_move()

    def tick(self, index: int) -> None:
        executor = self.nodes[index].executor
        assert executor is not None
        executor.tick()
        self._after_move()

    def complete_io(self, index: int, outcome: str = "ok") -> None:
        node = self.nodes[index]
        storage = node.storage
        assert storage is not None
        node.io_done_at = self.now
        storage.complete(outcome)
        self._after_move()

    def io_ready(self) -> list[int]:
        return [n.index for n in self.nodes if self._io_runnable(n)]

    def _io_runnable(self, node: Node) -> bool:
        return (
            node.running
            and not node.db_stalled
            and self.now - node.io_done_at >= node.slow_io
            and node.storage is not None
            and node.storage.runnable()
        )

    def _after_move(self) -> None:
        """What the rest of the process shows, checked as it changes; and any violation found
        where it could not propagate."""
        if self.violations:
            raise self.violations[0]
        for node in self.nodes:
            if node.left and node.alive:
                self.crash(node.index)
            if node.executor is None:
                continue
            self._check_woke(node)
            # What it would say of its log and membership, at every move: a vouch or a claim
            # may last a single input (an old word believed, and undone by the next one).
            self._check_core(node)
            self._check_membership(node)
            snap = node.role.snapshot
            if snap.role is Role.PRIMARY:
                if node.primary_since is None:
                    node.primary_since = self.now
                    if self.acked:
                        self.observe("a new primary after acknowledged writes")
                holder = self.primary_of_epoch.setdefault(snap.epoch, node.index)
                if holder != node.index:
                    raise self.violation(
                        f"replicas {holder} and {node.index} both primary of epoch {snap.epoch}"
                    )
            else:
                node.primary_since = None
            commits = node.commits
            if commits.committed_seq > len(node.disk.log):
                raise self.violation(
                    f"replica {node.index} shows seq {commits.committed_seq} committed, beyond "
                    f"its log ({len(node.disk.log)})"
                )
            tenure, point = node.last_tenure
            if commits.tenure == tenure and commits.committed_seq < point:
                raise self.violation(f"replica {node.index}'s commit point moved back to {point}")
            node.last_tenure = (commits.tenure, commits.committed_seq)

    # -- storage -----------------------------------------------------------------------------

    def store(self, node: Node, batch: SimBatch) -> None:
        log = node.disk.log
        for seq, entry in batch.entries:
            if seq <= len(log):
                if log[seq - 1] != entry:
                    raise self.violation(
                        f"replica {node.index} holds {log[seq - 1]} at seq {seq} where its "
                        f"primary sent {entry}: logs disagree below the stream's start"
                    )
                continue
            if seq != len(log) + 1:
                raise self.violation(
                    f"replica {node.index} was sent seq {seq} after its log's end {len(log)}"
                )
            log.append(entry)

    # -- the network -------------------------------------------------------------------------

    def message(self, kind: str, **body: Any) -> Message:
        return Message(self.now, kind, body)

    def break_link(self, link: Link, tell_primary: bool = True) -> None:
        """The stream ends: what was in flight is lost, and each end will notice."""
        if link.broken:
            return
        link.broken = True
        link.up.clear()
        link.down.clear()
        if self.nodes[link.secondary].incarnation == link.secondary_incarnation:
            link.secondary_notice = self.now
        if (
            tell_primary
            and link.primary_stream is not None
            and self.nodes[link.primary].incarnation == link.primary_incarnation
        ):
            link.primary_notice = self.now

    def _end_alive(self, link: Link, end: str) -> bool:
        node = self.nodes[link.secondary if end == "secondary" else link.primary]
        incarnation = link.secondary_incarnation if end == "secondary" else link.primary_incarnation
        return node.alive and node.incarnation == incarnation

    def stream_deliveries(self) -> list[tuple[Link, str]]:
        """What can happen next on streams (the model picks among these)."""
        self.links = [
            link
            for link in self.links
            if not link.broken
            or link.secondary_notice is not None
            or link.primary_notice is not None
        ]
        out = []
        for link in self.links:
            secondary = self.nodes[link.secondary]
            primary = self.nodes[link.primary]
            if link.broken:
                if link.secondary_notice is not None and secondary.running:
                    out.append((link, "secondary_notice"))
                if link.primary_notice is not None and primary.running:
                    out.append((link, "primary_notice"))
                continue
            if (
                link.down
                and (link.primary, link.secondary) not in self.cut
                and secondary.running
                and not (primary.db_stalled and self._reads_log(primary, link.down[0]))
            ):
                out.append((link, "down"))
            if link.up and (link.secondary, link.primary) not in self.cut and primary.running:
                out.append((link, "up"))
        return out

    @staticmethod
    def _reads_log(primary: Node, message: Message) -> bool:
        """Whether the primary's call reads its log to send `message` (a stalled database
        holds it back): a divergence answer does; a batch only for events older than this
        tenure's epoch_started -- the rest come from the events the writer handed the streams
        (PrimaryStreams.recent), which a new tenure starts empty."""
        if message.kind == "divergence":
            return True
        if message.kind != "batch":
            return False
        core = primary.core
        iss = None if core is None else core.in_sync_set
        start = None if iss is None else iss.epoch_start_seq
        effect: fx.SendEvents = message.body["effect"]
        return start is None or effect.after_seq + 1 < start

    def deliver(self, link: Link, what: str) -> None:
        if what == "secondary_notice":
            link.secondary_notice = None
            node = self.nodes[link.secondary]
            if node.incarnation == link.secondary_incarnation:
                if node.follow is link:
                    node.follow = None
                node.inbox.submit(ins.ReplicationStreamEnded(link.secondary_stream))
        elif what == "primary_notice":
            link.primary_notice = None
            node = self.nodes[link.primary]
            assert link.primary_stream is not None
            if node.incarnation == link.primary_incarnation:
                node.inbox.submit(ins.SecondaryDisconnected(link.secondary, link.primary_stream))
        elif what == "down":
            self._deliver_down(link)
        elif what == "up":
            self._deliver_up(link)
        else:
            raise AssertionError(what)
        self._after_move()

    def _deliver_down(self, link: Link) -> None:
        message = link.down.popleft()
        node = self.nodes[link.secondary]
        sid, body = link.secondary_stream, message.body
        storage = node.storage
        assert storage is not None
        primary = self.nodes[link.primary]
        if message.kind in ("divergence", "batch") and primary.db_down:
            # The primary's call cannot read its log: its watch sees the database fail (as the
            # real PrimaryStreams' reads are watched), its core hears it, the call fails.
            if primary.storage is not None:
                watch = primary.storage.watch
                watch.end(watch.begin(), answered=False)
            primary.inbox.submit(ins.DatabaseFailed("the database is down"))
            self.break_link(link)
            return
        if message.kind == "divergence":
            decided: fx.SendDivergence = body["effect"]
            hello_epoch: int = body["hello_epoch"]
            end = primary.disk.end_for_epoch(hello_epoch)
            if hello_epoch >= decided.epoch and decided.written_seq > end.seq:
                end = Position(decided.epoch, decided.written_seq)  # (its commit under way)
            epoch = decided.epoch
            link.primary_epoch = epoch

            def decide(reader: LogReader) -> None:
                node.inbox.submit(divergence_received(sid, epoch, end, reader))

            storage.read(decide, lambda reason: self.break_link(link), while_writes_wait=True)
        elif message.kind == "batch":
            effect: fx.SendEvents = body["effect"]
            log = primary.log_as_written()
            seqs = range(effect.after_seq + 1, min(effect.through_seq, len(log)) + 1)
            entries = tuple((seq, log[seq - 1]) for seq in seqs)
            if not sendable(effect, [Position(e.epoch, seq) for seq, e in entries]):
                self.break_link(link)  # not what was decided: the primary's call ends it
                return
            batch = SimBatch(entries, effect.committed_seq, effect.in_sync, effect.echo)
            node.stream_heard_at = self.now
            last_seq, last = batch.entries[-1]
            node.inbox.put(
                Envelope(
                    ins.BatchReceived(sid, body["epoch"], Position(last.epoch, last_seq)),
                    batch=batch,
                )
            )
        else:
            node.stream_heard_at = self.now
            node.inbox.submit(
                ins.HeartbeatReceived(
                    sid, body["epoch"], body["committed"], body["in_sync"], body["echo"]
                )
            )

    def _deliver_up(self, link: Link) -> None:
        message = link.up.popleft()
        node = self.nodes[link.primary]
        if message.kind == "hello":
            position: Position = message.body["at"]
            link.hello_epoch = position.epoch
            if link.served is None:
                link.served = SimServed(self, link)
            node.inbox.put(
                Envelope(
                    ins.SecondaryHello(link.secondary, link.primary_stream, message.body["epoch"]),
                    stream=link.served,
                )
            )
        else:
            assert link.primary_stream is not None
            node.heard_at = self.now
            node.acked_by[link.secondary] = self.now
            node.inbox.submit(
                ins.SecondaryAcked(
                    link.secondary,
                    link.primary_stream,
                    message.body["seq"],
                    message.body["in_sync"],
                    message.body["ack_id"],
                )
            )

    def strand_acks(self, link: Link) -> list[tuple[int, int, ins.SecondaryAcked]]:
        """The acks on their way up `link` reach the primary's process, but the thread that
        reads the stream's acks (one per stream in the shell) is slow to hand them on: they
        leave the link -- its end no longer loses them -- and reach the executor only at
        `hand_over`, perhaps after the stream was replaced."""
        assert link.primary_stream is not None
        stranded = []
        for message in [m for m in link.up if m.kind == "ack"]:
            link.up.remove(message)
            body = message.body
            acked = ins.SecondaryAcked(
                link.secondary, link.primary_stream, body["seq"], body["in_sync"], body["ack_id"]
            )
            stranded.append((link.primary, link.primary_incarnation, acked))
        return stranded

    def hand_over(self, stranded: list[tuple[int, int, ins.SecondaryAcked]]) -> None:
        """The slow thread hands its acks to the executor at last (if its process lives on)."""
        for index, incarnation, acked in stranded:
            node = self.nodes[index]
            if node.alive and node.incarnation == incarnation:
                node.inbox.submit(acked)

    # -- calls -----------------------------------------------------------------------------

    def call(
        self, node: Node, kind: str, callee: int, request: dict[str, Any], round_id: int = 0
    ) -> None:
        self.calls.append(
            Call(
                next(self.ids),
                kind,
                node.index,
                callee,
                node.incarnation,
                self.now,
                request,
                round_id,
                PROBE_TIMEOUT if kind == "probe" else VOTE_TIMEOUT,
            )
        )

    def call_deliveries(self) -> list[Call]:
        out = []
        for call in self.calls:
            if call.handling:
                continue
            if call.reply is None and not call.refused:
                if (call.caller, call.callee) in self.cut:
                    continue
                callee = self.nodes[call.callee]
                if not callee.alive or callee.running:
                    out.append(call)
            else:
                if (call.callee, call.caller) in self.cut:
                    continue
                caller = self.nodes[call.caller]
                if not caller.alive or caller.incarnation != call.caller_incarnation:
                    out.append(call)  # dropped on delivery
                elif caller.running:
                    out.append(call)
        return out

    def deliver_call(self, call: Call) -> None:
        if call.reply is None and not call.refused:
            self._deliver_request(call)
        else:
            self._deliver_reply(call)
        self._after_move()

    def _deliver_request(self, call: Call) -> None:
        callee = self.nodes[call.callee]
        if callee.executor is None:
            # Nothing listens on its port: the call fails at once (TCP RST).
            self._fail(call, refused=True, gone=True)
            return
        call.handling = True
        request = call.request
        if call.kind == "probe":
            answer = callee.executor.probe(
                ins.ProbeReceived(request["from"], request["epoch"], request["primary"])
            )
        else:
            answer = callee.executor.vote_requested(
                call.caller, request["epoch"], request["position"]
            )
        incarnation = callee.incarnation
        answer.add_done_callback(lambda f: self._answered(call, callee, incarnation, f))

    def _answered(self, call: Call, callee: Node, incarnation: int, answer: Future[Answer]) -> None:
        """The callee's executor decided (on this thread): the reply leaves now. (A future's
        callback may not raise -- it would only be logged: whatever goes wrong is kept.)"""
        try:
            self._reply(call, callee, incarnation, answer)
        except Exception as exc:  # (kept, and raised after the move)
            self.violation(f"answering {call} failed: {exc!r}")

    def _reply(self, call: Call, callee: Node, incarnation: int, answer: Future[Answer]) -> None:
        if callee.incarnation != incarnation or call not in self.calls:
            return
        call.handling = False
        call.replied_at = self.now
        exc = answer.exception()
        if isinstance(exc, StorageUnavailable):
            call.refused = True  # UNAVAILABLE, marked as the replica's own answer
            return
        if exc is not None:
            call.handling = True  # no answer of its own: the caller's deadline fails it
            return
        result = answer.result()
        if call.kind == "probe":
            (reply,) = (r for r in result.replies if isinstance(r, fx.ReplyProbe))
            assert result.facts is not None
            call.reply = {"status": reply.status, "position": result.facts.last}
        else:
            (vote,) = (r for r in result.replies if isinstance(r, fx.ReplyVote))
            if vote.granted and callee.disk.epoch < vote.epoch:
                raise self.violation(
                    f"replica {callee.index} granted a vote in epoch {vote.epoch} before "
                    f"recording it (recorded {callee.disk.epoch})"
                )
            # Raft's election restriction: a vote goes only to a log at least as up to date
            # as the voter's own, as it read it for this request.
            assert result.facts is not None
            if vote.granted and rules.less_up_to_date(call.request["position"], result.facts.last):
                raise self.violation(
                    f"replica {callee.index} granted a vote in epoch {vote.epoch} to a log "
                    f"ending at {call.request['position']}, behind its own {result.facts.last}"
                )
            call.reply = {"granted": vote.granted, "epoch": vote.epoch, "reason": vote.reason}

    def _deliver_reply(self, call: Call) -> None:
        self.calls.remove(call)
        caller = self.nodes[call.caller]
        if not caller.alive or caller.incarnation != call.caller_incarnation:
            return
        caller.heard_at = self.now
        if call.refused:
            self._fail(call, refused=True, gone=False)
            return
        reply = call.reply
        assert reply is not None
        if call.kind == "probe":
            status: fx.ReplicaStatus = reply["status"]
            view = ins.PeerView(
                status.index,
                status.role,
                status.epoch,
                reply["position"],
                status.in_sync,
                status.vouches,
                status.following_live_primary,
                status.claim,
            )
            self._probe_outcome(caller, call, ins.ProbeOutcome(call.callee, view))
        else:
            caller.inbox.submit(
                ins.VoteReplied(
                    call.callee,
                    call.request["epoch"],
                    reply["granted"],
                    reply["epoch"],
                    reply["reason"],
                )
            )

    def advance(self, to: float) -> None:
        """Time passes; every call whose deadline passed fails, as its gRPC deadline makes it
        (its caller hears a timeout; a reply still on its way is lost)."""
        self.now = max(self.now, to)
        for call in [c for c in self.calls if self.now >= c.sent_at + c.timeout]:
            self._fail(call, refused=False, gone=False)

    def _fail(self, call: Call, refused: bool, gone: bool) -> None:
        if call in self.calls:
            self.calls.remove(call)
        caller = self.nodes[call.caller]
        if not caller.alive or caller.incarnation != call.caller_incarnation:
            return
        if refused:
            caller.heard_at = self.now
        if call.kind == "probe":
            self._probe_outcome(caller, call, ins.ProbeOutcome(call.callee, None, refused, gone))
        else:
            caller.inbox.submit(
                ins.VoteReplied(call.callee, call.request["epoch"], False, 0, "unreachable")
            )

    def _probe_outcome(self, caller: Node, call: Call, outcome: ins.ProbeOutcome) -> None:
        assert caller.peers is not None
        caller.peers.outcome(call.round_id, outcome)

    # -- clients (what the writer does) ------------------------------------------------------

    def writable(self) -> list[Node]:
        return [
            n
            for n in self.nodes
            if n.running
            and n.role.snapshot.role is Role.PRIMARY
            and not n.written
            and not n.db_stalled  # (its writer's first query waits)
        ]

    def committing(self) -> list[Node]:
        """Primaries whose writer is committing a streamed batch."""
        return [n for n in self.nodes if n.running and n.written and not n.db_stalled]

    def change_membership(self, node: Node, change: MembershipChange) -> str | None:
        """An operator's membership change on `node`: refused (why), or written through the
        writer as a client's write is -- checked against the latest membership the writer
        wrote, ahead of what the core was told (the shell checks and writes under the
        writer's lock, so no second change slips in between)."""
        core = node.core
        if core is None or node.db_down:
            return "not running"
        latest = membership_of(self.initial, node.log_as_written())
        refusal = core.membership_change_refusal(change, self.now, latest)
        if refusal is not None:
            return refusal
        self.next_request += 1
        if not self.client_write(node, f"m{self.next_request}", change):
            return "the writer refused it"
        return None

    def tell_membership(self, node: Node) -> None:
        """The storage side tells the executor when the latest membership in its log (as
        written) changes, as the shell does."""
        if node.executor is None:
            return
        membership = membership_of(self.initial, node.log_as_written())
        if membership != node.told:
            node.told = membership
            node.inbox.submit(ins.MembershipChanged(membership))

    def _left(self, node: Node) -> None:
        """Its executor says it was removed and the removal committed: it stops for good
        (once the step that said so is over)."""
        removed = membership_of(self.initial, [e for e, _ in self.committed]).removed
        if node.index not in removed:
            raise self.violation(
                f"replica {node.index} left the cluster, but no committed event removed it"
            )
        node.left = True
        self.observe("a removed replica left")

    def client_write(
        self, node: Node, request_id: str, change: MembershipChange | None = None
    ) -> bool:
        """One command through the writer (replica/storage/writer.py): the commit tracker's tenure
        read first, then the role shown (primary, or refused); a request id already in the log waits
        for its event; otherwise admission, then the event is decided and streamed (Written), and
        its local commit starts: commit() finishes it (Appended), or it fails (LocalWriteFailed).
        Returns whether the command was taken."""
        if node.db_down:
            return False  # UNAVAILABLE, nothing applied
        # (A write that comes while a batch is decided joins it: the writer's group commit.)
        tenure = node.written_tenure if node.written else node.commits.tenure
        snap = node.role.snapshot
        if snap.role is not Role.PRIMARY or snap.epoch == node.fenced_epoch:
            return False
        for seq, entry in enumerate(node.disk.log, 1):
            if entry.request_id == request_id:
                self._wait(node, request_id, seq, tenure)
                return True
        try:
            node.commits.admit()
        except ChatError:
            return False
        if not node.written:
            assert node.storage is not None
            node.storage.writer_op = node.storage.watch.begin()  # (its transaction)
        node.written.append(Entry(snap.epoch, request_id, change))
        node.written_tenure = tenure
        self.tell_membership(node)
        node.inbox.submit(ins.Written(len(node.disk.log) + len(node.written)))
        return True

    def commit(self, node: Node, outcome: str = "ok") -> None:
        """The writer's commit of its streamed batch ends: "ok"; "failed" (rolled back); or
        "in doubt" (it did commit, but the writer saw an error: a connection lost on COMMIT).
        A database that is down fails it."""
        assert node.written
        epoch = node.written[0].epoch
        if node.db_down and outcome == "ok":
            outcome = "failed"
        start = len(node.disk.log)
        if outcome != "failed":
            node.disk.log.extend(node.written)
        batch, node.written = node.written, []
        storage = node.storage
        if storage is not None and storage.writer_op is not None:
            storage.watch.end(storage.writer_op, answered=outcome == "ok")
            storage.writer_op = None
        if outcome == "ok":
            node.inbox.submit(ins.Appended(len(node.disk.log)))
            for offset, entry in enumerate(batch, 1):
                assert entry.request_id is not None
                self._wait(node, entry.request_id, start + offset, node.written_tenure)
        else:
            self.observe(f"a streamed batch's local commit {outcome}")
            node.fenced_epoch = epoch  # the clients see an error and retry
            self.tell_membership(node)
            node.inbox.submit(ins.LocalWriteFailed(epoch, outcome))
        self._after_move()

    def _wait(self, node: Node, request_id: str, seq: int, tenure: int) -> None:
        waiting = Waiting(request_id, seq, node.incarnation)
        self.waiting.append(waiting)
        node.commits.wait_for(seq, tenure).add_done_callback(lambda f: self._told(node, waiting, f))

    def _told(self, node: Node, waiting: Waiting, answer: Future[None]) -> None:
        """The writer's wait ended: the client is told committed, or to retry."""
        if waiting not in self.waiting:
            return  # its process crashed
        self.waiting.remove(waiting)
        try:
            if answer.exception() is None:
                self._acknowledge(node, waiting.request_id, waiting.seq)
        except Exception as exc:  # (a future's callback: kept, raised after the move)
            self.violation(f"telling {waiting.request_id}'s client failed: {exc!r}")

    def _acknowledge(self, node: Node, request_id: str, seq: int) -> None:
        log = node.disk.log
        if seq > len(log):
            raise self.violation(
                f"replica {node.index} acknowledged {request_id} at seq {seq}, beyond its "
                f"durable log ({len(log)})"
            )
        if log[seq - 1].request_id != request_id:
            raise self.violation(
                f"replica {node.index} told {request_id} committed at seq {seq}, which holds "
                f"{log[seq - 1]}: a commit of another tenure answered its wait"
            )
        other = self.acked_at_seq.get(seq)
        if other is not None and other != request_id:
            raise self.violation(
                f"replica {node.index} acknowledged {request_id} at seq {seq}, where {other} "
                "was acknowledged before: one of them is lost"
            )
        before = self.acked.get(request_id)
        if before is not None and before[0] != seq:
            raise self.violation(f"request {request_id} acknowledged at seqs {before[0]} and {seq}")
        self.acked[request_id] = (seq, node.role.snapshot.epoch)
        self.observe("write acknowledged")
        self.acked_at_seq[seq] = request_id

    # -- time ------------------------------------------------------------------------------

    def deadline(self) -> float:
        """On a bounded network: the latest time things on the network must have happened by
        (inf when unbounded)."""
        if not self.bounded:
            return float("inf")
        times = [float("inf")]
        for link, what in self.stream_deliveries():
            if what == "down":
                times.append(link.down[0].sent_at)
            elif what == "up":
                times.append(link.up[0].sent_at)
            elif what == "secondary_notice":
                assert link.secondary_notice is not None
                times.append(link.secondary_notice)
            else:
                assert link.primary_notice is not None
                times.append(link.primary_notice)
        for call in self.call_deliveries():
            if (
                call.reply is None and not call.refused
            ) or call.replied_at <= call.sent_at + MAX_DELAY:
                times.append(call.sent_at)  # the whole call, both ways
            else:
                times.append(call.replied_at - MAX_DELAY)  # it was slow to answer: due now
        return min(times) + MAX_DELAY

    # -- a fair schedule -------------------------------------------------------------------

    def settle(
        self,
        rounds: int,
        until: Callable[[], bool] = lambda: False,
        hold: Callable[[Link, str], bool] = lambda link, what: False,
        respect_deadline: bool = False,
        hold_calls: Callable[[Call], bool] = lambda call: False,
        keep_io: Callable[[int, Job], bool] = lambda index, job: False,
        slow_commit: Callable[[int], bool] = lambda index: False,
    ) -> bool:
        """Run every replica and deliver everything (except what `hold` keeps back), half a
        heartbeat of logical time per round, until `until()` or `rounds` ran out. With
        `respect_deadline`, time passes no further than the network's delay bound allows.
        Storage jobs complete, except those `keep_io` keeps. Every process runs all along,
        so a primary cut off from every peer must stop saying so (CUT_OFF_BOUND)."""
        for _ in range(rounds):
            self._not_run()
            for _ in range(5000):
                if not self._settle_once(hold, hold_calls, keep_io):
                    break
                if until():
                    self.check()
                    return True
            # A primary's commit ends after what its streams carried meanwhile (the acks of
            # the batch it commits may come first).
            for node in self.committing():
                if not slow_commit(node.index):
                    self.commit(node)
            for node in self.nodes:
                if node.running:
                    self.tick(node.index)
            self.check()
            self._not_run()
            self._check_cut_off()
            self._check_silence_watched()
            if until():
                return True
            step = HEARTBEAT / 2
            if respect_deadline:
                step = min(step, self.deadline() - self.now)
                if step <= 0:
                    return until()
            self.advance(self.now + step)
        return until()

    def _settle_once(
        self,
        hold: Callable[[Link, str], bool],
        hold_calls: Callable[[Call], bool],
        keep_io: Callable[[int, Job], bool],
    ) -> bool:
        """One thing happens, if anything can: an executor's next input, a storage job, a
        stream message, a call (in that order of preference)."""
        for node in self.nodes:
            if node.running and len(node.inbox) and self._inbox_due(node):
                self.process(node.index)
                return True
        for node in self.nodes:
            storage = node.storage
            if (
                self._io_runnable(node)
                and storage is not None
                and not keep_io(node.index, storage.jobs[0])
            ):
                self.complete_io(node.index)
                return True
        streams = [x for x in self.stream_deliveries() if not hold(*x)]
        if streams:
            self.deliver(*streams[0])
            return True
        calls = [c for c in self.call_deliveries() if not hold_calls(c)]
        if calls:
            self.deliver_call(calls[0])
            return True
        return False

    def _inbox_due(self, node: Node) -> bool:
        """Its executor gets to its next input now (a busy one takes it `lag` after it came)."""
        arrived = node.inbox.oldest()
        return node.lag <= 0 or arrived is None or self.now - arrived >= node.lag - 1e-9

    def _not_run(self) -> None:
        for node in self.nodes:
            # (A stalled database holds a primary's step-down: the new epoch it heard of is
            # persisted before anything else it decided is carried out. Until it answers
            # again, the bound does not run -- issue 26's fail-slow databases.)
            if not node.running or node.db_stalled or node.lag > 0:
                node.ran_since = self.now  # (a busy executor's inputs are not taken in time)

    def time_passed_unprocessed(self) -> None:
        """Time passed with no input processed but ticks (the model's time_passes)."""
        for node in self.nodes:
            node.ran_since = self.now

    def _check_cut_off(self) -> None:
        """A primary that no peer has answered for CUT_OFF_BOUND while it ran (and its
        database answered) no longer says it is primary (it cannot acknowledge anything
        anyway, and the others may elect) -- however many settles that time spans."""
        for node in self.nodes:
            if not node.running or node.primary_since is None:
                continue
            if node.core is not None and not node.core.voter_peers():
                continue  # the one voter: it waits for no one
            since = max(node.heard_at, node.primary_since, node.ran_since)
            if self.now - since > CUT_OFF_BOUND:
                raise self.violation(
                    f"replica {node.index} heard from no peer for {self.now - since:.2f}s and "
                    "still says it is primary"
                )

    def _check_silence_watched(self) -> None:
        """Probes go only where a stream is silent: so a running primary hears every probe
        target ack on its stream or probes it, and a running secondary hears its primary on
        its stream or probes every target -- each within UNWATCHED_BOUND. (Otherwise a primary
        might miss a newer epoch or a dead peer behind an open stream, and a secondary never
        elect while it believes a silent stream alive.)"""
        for node in self.nodes:
            core = node.core
            if not node.running or core is None or node.left:
                continue
            bound = UNWATCHED_BOUND + node.lag
            targets = core.probe_targets()
            if node.primary_since is not None:
                for peer in targets:
                    since = max(
                        node.acked_by.get(peer, float("-inf")),
                        node.probed_at.get(peer, float("-inf")),
                        node.primary_since,
                        node.ran_since,
                    )
                    if self.now - since > bound:
                        raise self.violation(
                            f"primary {node.index} neither heard replica {peer} on a stream "
                            f"nor probed it for {self.now - since:.2f}s"
                        )
            elif targets and core.in_sync_set is None:
                since = max(
                    node.stream_heard_at,
                    max(node.probed_at.get(p, float("-inf")) for p in targets),
                    node.ran_since,
                )
                if self.now - since > bound:
                    raise self.violation(
                        f"replica {node.index} neither heard a primary on a stream nor probed "
                        f"anyone for {self.now - since:.2f}s"
                    )

    def primaries(self) -> list[Node]:
        return [n for n in self.nodes if n.core is not None and n.core.role is Role.PRIMARY]

    def converged(self, everyone: bool = True) -> bool:
        """One primary, its commit point at its log's end, and every replica (every live one,
        unless `everyone`) holding that log and showing it committed -- with nothing left to
        do: no input waiting, no storage job, no batch being committed."""
        if any(len(n.inbox) or n.jobs or n.written for n in self.nodes if n.alive):
            return False
        primaries = self.primaries()
        if len(primaries) != 1:
            return False
        p = primaries[0]
        assert p.core is not None
        members = p.core.membership.members
        return p.core.commit_point == len(p.disk.log) and all(
            n.disk.log == p.disk.log
            and (n.commits.committed_seq == len(p.disk.log) or not everyone)
            and (n is p or self.follows_live(n, p))
            for n in self.nodes
            if (everyone or n.alive) and n.index in members
        )

    def follows_live(self, node: Node, primary: Node) -> bool:
        """Streaming from `primary`, heard lately (so it elects nobody on an old silence)."""
        core = node.core
        return (
            core is not None
            and core.following.stream_primary == primary.index
            and core.following_live_primary(self.now)
        )

    # -- invariants ------------------------------------------------------------------------

    def _check_core(self, node: Node) -> None:
        core = node.core
        assert core is not None
        point = core.commit_point
        if point is not None and point > len(node.disk.log):
            raise self.violation(f"replica {node.index}'s commit point {point} is beyond its log")
        if core.vouches(self.now):
            # What its probe replies and its own elections would say, as of this step. With
            # min_insync >= 2 a primary is elected by a majority and waits for no one who did
            # not answer (rules.may_be_vouching_unheard): a replica cut off meanwhile may
            # still vouch for its epoch while a newer one commits without it -- harmless, as
            # it cannot elect alone and a majority holds what that newer primary committed.
            # It vouches for what was committed up to its own epoch. With min_insync = 1 the
            # vouch is what keeps acknowledged writes: it must hold all of them.
            missing = self._first_missing_acked(
                node.disk.log, None if self.min_insync == 1 else core.current_epoch
            )
            if missing is not None:
                raise self.violation(
                    f"replica {node.index} vouches for a log without acknowledged {missing}: "
                    f"{node.disk.log}"
                )
        claim = core.claim()
        if claim is not None:
            # An election of every replica but `claim` may go ahead on it: the most
            # up-to-date of their logs must hold every acknowledged write.
            others = [
                n for n in self.nodes if n.index != claim and core.membership.is_voter(n.index)
            ]
            best = max(
                others, key=lambda n: (n.disk.position().epoch, n.disk.position().seq, -n.index)
            )
            missing = self._first_missing_acked(best.disk.log)
            if missing is not None:
                raise self.violation(
                    f"replica {node.index} claims to be in sync with replica {claim}, but the "
                    f"best log without {claim}'s (replica {best.index}'s) lacks acknowledged "
                    f"{missing}: {best.disk.log}"
                )

    def _first_missing_acked(self, log: list[Entry], up_to_epoch: int | None = None) -> str | None:
        """An acknowledged write or committed event `log` lacks ("r7 at seq 9"), if any --
        of those committed first in an epoch up to `up_to_epoch`, if given."""
        for request_id, (seq, epoch) in self.acked.items():
            if up_to_epoch is not None and epoch > up_to_epoch:
                continue
            if seq > len(log) or log[seq - 1].request_id != request_id:
                return f"{request_id} at seq {seq}"
        committed = [
            entry for entry, epoch in self.committed if up_to_epoch is None or epoch <= up_to_epoch
        ]
        if log[: len(committed)] != committed:
            for seq, entry in enumerate(committed, 1):
                if seq > len(log) or log[seq - 1] != entry:
                    return f"committed {entry} at seq {seq}"
        return None

    def _check_membership(self, node: Node) -> None:
        """The lemma the vouch and the claim rest on (in_sync.py): the in-sync set never
        shrinks behind a member's back. A replica that vouches for its log is counted in
        sync by the primary of its epoch, whenever that primary has formed its set; one
        that claims to be in sync is counted, or was removed unheard (so its primary
        acknowledges nothing alone while it may claim)."""
        core = node.core
        assert core is not None
        vouches = core.vouches(self.now)
        claim = core.claim()
        if not vouches and claim is None:
            return
        for other in self.nodes:
            iss = None if other.core is None else other.core.in_sync_set
            if other is node or iss is None or iss.epoch != core.current_epoch:
                continue
            member = iss.members.get(node.index)
            if vouches and (member is None or not member.in_sync):
                raise self.violation(
                    f"replica {node.index} vouches for its log in epoch {iss.epoch}, whose "
                    f"primary {other.index} does not count it in sync"
                )
            if member is None or not (member.in_sync or member.unconfirmed):
                raise self.violation(
                    f"replica {node.index} claims to be in sync with {claim} in epoch "
                    f"{iss.epoch}, whose primary {other.index} counts it out, confirmed"
                )

    def _check_changes(self, node: Node) -> None:
        """One membership change at a time: a log holds at most one beyond what was committed;
        and only voters are counted in a primary's in-sync set (one being removed until it is
        out: it is told first)."""
        pending = [
            seq
            for seq, entry in enumerate(node.log_as_written(), 1)
            if entry.change is not None and seq > len(self.committed)
        ]
        if len(pending) > 1:
            raise self.violation(
                f"replica {node.index}'s log holds membership changes at seqs {pending}, more "
                f"than one not committed: {node.log_as_written()}"
            )
        core = node.core
        iss = None if core is None else core.in_sync_set
        if core is None or iss is None:
            return
        for m in iss.members.values():
            if m.in_sync and not core.membership.is_voter(m.index) and m.leaving_since is None:
                raise self.violation(
                    f"primary {node.index} counts replica {m.index} in sync, which is no voter "
                    f"({core.membership.describe()})"
                )

    def check(self) -> None:
        if self.violations:
            raise self.violations[0]
        for node in self.nodes:
            self._check_changes(node)
            log = node.disk.log
            ids = [e.request_id for e in log if e.request_id is not None]
            if len(ids) != len(set(ids)):
                raise self.violation(f"replica {node.index} stored a request twice: {log}")
            for seq, entry in enumerate(log, 1):
                if entry.request_id is not None and (seq == 1 or log[seq - 2].epoch != entry.epoch):
                    raise self.violation(
                        f"replica {node.index}'s log has a client write at seq {seq} before its "
                        f"epoch {entry.epoch} started: {log}"
                    )
            core = node.core
            if core is None:
                continue
            self._check_core(node)
            self._check_membership(node)
            if core.role is Role.PRIMARY:
                for request_id, (seq, epoch) in self.acked.items():
                    if epoch <= core.current_epoch and (
                        seq > len(log) or log[seq - 1].request_id != request_id
                    ):
                        raise self.violation(
                            f"primary {node.index} (epoch {core.current_epoch}) lacks "
                            f"acknowledged {request_id} at seq {seq}: {log}"
                        )
            for seq, (entry, epoch) in enumerate(self.committed, 1):
                if seq <= len(log) and log[seq - 1] != entry and log[seq - 1].epoch >= epoch:
                    raise self.violation(
                        f"replica {node.index} holds {log[seq - 1]} at seq {seq}, where the "
                        f"primary of epoch {epoch} committed {entry}"
                    )
                if seq > len(log) or log[seq - 1] != entry:
                    if core.role is Role.PRIMARY and epoch <= core.current_epoch:
                        raise self.violation(
                            f"primary {node.index} (epoch {core.current_epoch}) lacks "
                            f"{entry} at seq {seq}, committed in epoch {epoch}: {log}"
                        )
                    if seq <= node.commits.committed_seq:
                        raise self.violation(
                            f"replica {node.index} shows seq {seq} committed, holding "
                            f"{log[seq - 1] if seq <= len(log) else 'nothing'} where "
                            f"{entry} was committed"
                        )
            for request_id, (seq, epoch) in self.acked.items():
                if seq > len(log) or log[seq - 1].request_id == request_id:
                    continue
                if log[seq - 1].epoch >= epoch:
                    raise self.violation(
                        f"replica {node.index} holds {log[seq - 1]} where {request_id} was "
                        f"acknowledged in epoch {epoch}"
                    )
                if core.vouches(self.now):
                    raise self.violation(
                        f"replica {node.index} vouches for a log without {request_id}"
                    )
        for a in self.nodes:
            for b in self.nodes:
                if a.index >= b.index:
                    continue
                common = min(len(a.disk.log), len(b.disk.log))
                for seq in range(common, 0, -1):
                    if a.disk.log[seq - 1].epoch == b.disk.log[seq - 1].epoch:
                        if a.disk.log[:seq] != b.disk.log[:seq]:
                            raise self.violation(
                                f"replicas {a.index} and {b.index} agree on the epoch at seq "
                                f"{seq} but not before: {a.disk.log} / {b.disk.log}"
                            )
                        break
