"""A simulated world for the protocol core: replicas with durable disks, their shells'
threads, and a network of ordered streams and calls -- around real `ReplicaCore` objects.

Nothing here decides anything the protocol decides: every decision comes from the core. This
module only does what the real shell (replica/coordinator.py, primary.py, secondary.py) and
the environment do -- carry out effects in order, one thread at a time, with durable effects
that may take a while; deliver, delay, lose and break messages; crash, restart and pause
processes -- and records the plain facts the invariants need (logs, acknowledged writes).
Where the real shell would only assume something (a replica acks only what it stored, votes
only once the vote is durable), this module checks it at the moment the effect is carried out.
"""

from __future__ import annotations

import itertools
import re
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from eventlog import Position
from replica.protocol import ProtocolConfig, ReplicaCore, Role
from replica.protocol import effects as fx
from replica.protocol import inputs as ins

HEARTBEAT = 0.1
PEER_TIMEOUT = 0.6
INSYNC_TIMEOUT = 1.0
# The shell's deadlines for its calls (replica/coordinator.py): a call not answered by then
# fails, and its caller goes on.
PROBE_TIMEOUT = max(2 * HEARTBEAT, 0.2)
VOTE_TIMEOUT = PEER_TIMEOUT
# min_insync = 1 is safe only on a network whose delays are far below the timeouts, with
# threads that run (a process that does not run is paused, and notices). In that mode
# nothing actionable may wait longer than this -- below the probe deadline: a probe between
# two running replicas is answered.
MAX_DELAY = 0.15


def _kind(text: str) -> str:
    """A decision's wording without its numbers or details, to count decisions by kind."""
    return re.sub(r"\d+(\.\d+)?", "N", text.split(" (")[0].split(": ")[-1])[:70]


class Violation(AssertionError):
    """An invariant of the protocol does not hold."""


@dataclass(frozen=True)
class LocalCommit:
    """A primary's commit of the batch it streamed (not an effect: the writer's own write),
    which may take a while like a durable effect (World.suspend)."""


@dataclass(frozen=True)
class Entry:
    epoch: int
    request_id: str | None  # None: a new primary's epoch_started event


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


# -- the network ------------------------------------------------------------------------------


@dataclass
class Message:
    sent_at: float
    kind: str  # hello, ack (up); divergence, batch, heartbeat (down)
    body: dict[str, Any]


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
    acked_once: bool = False  # the primary's sender and ack reader run from the first ack
    up: deque[Message] = field(default_factory=deque)  # to the primary
    down: deque[Message] = field(default_factory=deque)  # to the secondary
    broken: bool = False
    # When each end learns that the stream ended (None: told already, or nothing to tell).
    secondary_notice: float | None = None
    primary_notice: float | None = None
    last_send_wanted: float = 0.0

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
    replied_at: float = 0.0
    handling: bool = False  # the callee's handler thread is carrying it out

    def __repr__(self) -> str:
        way = "reply" if self.reply is not None else "request"
        return f"<{self.kind} {self.call_id} {way}: {self.caller} -> {self.callee}>"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:  # hypothesis's printer
        printer.text(repr(self))


# -- replicas ---------------------------------------------------------------------------------


@dataclass
class Ctx:
    """What a thread's effects refer to: the call it answers, the stream, the batch."""

    call: Call | None = None
    link: Link | None = None
    batch: list[tuple[int, Entry]] | None = None
    batch_meta: tuple[int, bool, int] = (0, False, 0)  # committed_seq, in_sync, echo
    hello_epoch: int = 0


@dataclass
class Frame:
    effects: deque[fx.Effect]
    ctx: Ctx


@dataclass
class Node:
    index: int
    disk: Disk = field(default_factory=Disk)
    core: ReplicaCore | None = None
    incarnation: int = 0
    paused: bool = False
    # Its database does not answer: every read and write fails (connections killed, the
    # server restarting, a full disk); the process runs on.
    db_down: bool = False
    # What the rest of the process sees (RoleState, CommitTracker).
    role: tuple[Role, int, int | None] = (Role.CANDIDATE, 0, None)
    role_version: int = 0
    committed: int = 0
    term_commit: int = -1  # the highest AdvanceCommit of this term
    # Each shell thread's effects being carried out; `blocked`: waiting for its durable head.
    stacks: dict[str, list[Frame]] = field(default_factory=dict)
    blocked: set[str] = field(default_factory=set)
    inbox: deque[ins.Input] = field(default_factory=deque)  # the coordinator's work queue
    probing: bool = False
    round_id: int = 0
    round: dict[int, ins.ProbeOutcome] = field(default_factory=dict)
    follow: Link | None = None
    pending: dict[str, int] = field(default_factory=dict)  # request id -> seq awaited
    # A primary's batch decided and streamed, its local commit under way (the writer holds
    # its lock until commit() or a failure): the seqs after the disk's log. Lost in a crash.
    written: list[Entry] = field(default_factory=list)

    def log_as_written(self) -> list[Entry]:
        """What the primary's streams read: its log and the batch being committed."""
        return self.disk.log + self.written

    @property
    def alive(self) -> bool:
        return self.core is not None

    @property
    def running(self) -> bool:
        return self.core is not None and not self.paused

    def idle(self, thread: str) -> bool:
        return not self.stacks.get(thread)

    def __repr__(self) -> str:
        return f"<replica {self.index}>"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:  # hypothesis's printer
        printer.text(repr(self))


class World:
    """N replicas, their shells and the network between them, on one logical clock."""

    def __init__(
        self,
        n: int,
        min_insync: int,
        suspend: Callable[[int, fx.Effect | LocalCommit], bool] = lambda index, effect: False,
        batch_events: int = 2,
        observe: Callable[[str], None] = lambda what: None,
    ) -> None:
        self.n = n
        self.batch_events = batch_events
        self.min_insync = min_insync
        self.bounded = min_insync == 1  # see MAX_DELAY
        # Whether replica `index`'s durable effect takes a while (drawn by the model).
        self.suspend = suspend
        self.observe = observe  # told of the protocol's notable decisions (hypothesis events)
        self.now = 0.0
        self.nodes = [Node(i) for i in range(n)]
        self.links: list[Link] = []
        self.calls: list[Call] = []
        self.cut: set[tuple[int, int]] = set()  # directions a -> b that deliver nothing
        self._ids = itertools.count(1)
        # Plain facts for the invariants.
        # request id -> (seq, epoch of the primary that acknowledged it)
        self.acked: dict[str, tuple[int, int]] = {}
        self.acked_at_seq: dict[int, str] = {}
        self.primary_of_epoch: dict[int, int] = {}
        self.next_request = 0
        for node in self.nodes:
            self.restart(node.index)

    # -- replicas --------------------------------------------------------------------------

    def config(self, index: int) -> ProtocolConfig:
        return ProtocolConfig(
            index=index,
            members=tuple(range(self.n)),
            min_insync=self.min_insync,
            heartbeat_interval=HEARTBEAT,
            peer_timeout=PEER_TIMEOUT,
            insync_timeout=INSYNC_TIMEOUT,
            batch_events=self.batch_events,
            max_in_flight=2 * self.batch_events,
        )

    def restart(self, index: int) -> None:
        node = self.nodes[index]
        assert node.core is None
        node.incarnation += 1
        node.core = ReplicaCore(self.config(index), node.disk.current_epoch(), self.now)
        node.role, node.role_version, node.committed, node.term_commit = (
            (Role.CANDIDATE, 0, None),
            0,
            0,
            -1,
        )

    def crash(self, index: int) -> None:
        node = self.nodes[index]
        node.core = None
        node.paused = False
        node.db_down = False  # (its database is another process; a restart finds it up)
        node.stacks.clear()
        node.blocked.clear()  # an unfinished durable effect never happened
        node.inbox.clear()
        node.probing = False
        node.round = {}
        node.pending.clear()
        node.written = []  # its commit never finished
        node.follow = None
        for link in self.links:
            if not link.broken and index in (link.secondary, link.primary):
                self.break_link(link)

    def step(self, node: Node, thread: str, event: ins.Input, ctx: Ctx | None = None) -> None:
        """A shell thread hands the core an input and carries out the effects."""
        assert node.core is not None
        effects = node.core.step(self.now, event)
        self._check_core(node)
        self._push(node, thread, effects, ctx or Ctx())

    def _push(self, node: Node, thread: str, effects: list[fx.Effect], ctx: Ctx) -> None:
        stack = node.stacks.setdefault(thread, [])
        stack.append(Frame(deque(effects), ctx))
        if len(stack) == 1 or thread not in node.blocked:
            self._drain(node, thread)

    def _drain(self, node: Node, thread: str) -> None:
        stack = node.stacks.get(thread, [])
        while stack and thread not in node.blocked and node.core is not None:
            frame = stack[-1]
            if not frame.effects:
                stack.pop()
                continue
            effect = frame.effects[0]
            if isinstance(effect, fx.DURABLE) and self.suspend(node.index, effect):
                node.blocked.add(thread)  # the I/O is under way; resume() completes it
                return
            if isinstance(effect, fx.DURABLE) and node.db_down:
                self._database_failed(node, thread, frame.ctx)
                return
            frame.effects.popleft()
            depth = len(stack)
            self._carry_out(node, thread, effect, frame.ctx)
            if len(stack) > depth:
                return  # a nested step took over this thread and drained or blocked it
        if not stack:
            node.stacks.pop(thread, None)

    def blocked_threads(self) -> list[tuple[int, str]]:
        return [(n.index, t) for n in self.nodes for t in sorted(n.blocked) if n.alive]

    def resume(self, index: int, thread: str) -> None:
        """The durable effect a thread waits for completes (or fails, if the database went
        down meanwhile); the thread goes on."""
        node = self.nodes[index]
        node.blocked.discard(thread)
        stack = node.stacks[thread]
        frame = stack[-1]
        if node.db_down:
            self._database_failed(node, thread, frame.ctx)
            return
        effect = frame.effects.popleft()
        depth = len(stack)
        self._carry_out(node, thread, effect, frame.ctx)
        if len(stack) == depth:
            self._drain(node, thread)
        else:
            # A nested step ran; once it finished, the frames below go on.
            self._drain(node, thread)

    def _database_failed(self, node: Node, thread: str, ctx: Ctx) -> None:
        """A durable effect raised: what the shell does then. The thread's work unwinds; the
        core hears of the effects after it that will now not happen; and the thread's own
        context ends -- its call fails, its stream ends."""
        self.observe("a durable write failed: the database is down")
        stack = node.stacks.pop(thread, [])
        node.blocked.discard(thread)
        for frame in stack:
            for effect in frame.effects:
                if isinstance(effect, fx.OpenStream):
                    node.inbox.append(ins.ReplicationStreamEnded(effect.stream_id))
                elif isinstance(effect, fx.AppendEpochStarted):
                    node.inbox.append(ins.EpochStartFailed("the database is down"))
                elif isinstance(effect, fx.RequestVotes):
                    for voter in effect.voters:
                        node.inbox.append(
                            ins.VoteReplied(voter, effect.epoch, False, 0, "not asked")
                        )
        if thread == "follow":
            link = node.follow
            if link is not None and ctx.batch is not None:
                self.step(node, "follow", ins.StoreFailed(link.secondary_stream, "down"))
            if link is not None:
                self.break_link(link)
        elif thread.startswith("rpc:") and ctx.call is not None:
            ctx.call.handling = False
            self.step(node, thread, ins.DatabaseFailed("down"))
            self._fail(ctx.call, refused=True, gone=False)
        elif ctx.link is not None:
            self.break_link(ctx.link)
        elif thread.startswith("send:"):
            link_id = int(thread.split(":")[1])
            for link in self.links:
                if link.link_id == link_id:
                    self.break_link(link)

    # -- carrying out effects --------------------------------------------------------------

    def _carry_out(self, node: Node, thread: str, effect: fx.Effect, ctx: Ctx) -> None:
        disk = node.disk
        match effect:
            case fx.PersistEpoch(epoch):
                disk.epoch = max(disk.epoch, epoch)
            case fx.Truncate(after_seq):
                self.observe(
                    f"truncated a divergent tail ({len(disk.log) - after_seq} events)"[:38]
                )
                del disk.log[after_seq:]
            case fx.StoreBatch(stream_id):
                self._store(node, thread, stream_id, ctx)
            case fx.AppendEpochStarted(epoch):
                if node.written:
                    # The shell appends it under the writer's lock: a batch the replica
                    # streamed as primary of an older epoch finishes its commit first.
                    self.commit(node)
                disk.log.append(Entry(epoch, None))
                self.step(node, thread, ins.EpochStartAppended(disk.position()))
            case fx.SetRole(role, epoch, primary, version):
                if version > node.role_version:
                    node.role_version = version
                    node.role = (role, epoch, primary)
                    if role is Role.PRIMARY:
                        if self.acked:
                            self.observe("a new primary after acknowledged writes")
                        holder = self.primary_of_epoch.setdefault(epoch, node.index)
                        if holder != node.index:
                            raise Violation(
                                f"replicas {holder} and {node.index} both primary of epoch {epoch}"
                            )
            case fx.StepDown(reason):
                self.observe("step down: " + _kind(reason))
                node.pending.clear()  # the clients see an error and retry
            case fx.ResetCommit(seq):
                node.committed = seq
                node.term_commit = seq
                node.pending.clear()
            case fx.AdvanceCommit(seq):
                self._advance_commit(node, seq)
            case fx.SecondaryCommitted(seq):
                if seq > len(disk.log):
                    raise Violation(
                        f"replica {node.index} shows seq {seq} committed, beyond its log"
                    )
                node.committed = max(node.committed, seq)
            case fx.CommitStalled(reason):
                if reason is not None:
                    node.pending.clear()  # waiters get UNAVAILABLE at once, and retry
            case fx.LogNote(_, text):
                self.observe(_kind(text))
            case fx.WakeSenders():
                pass
            case fx.ProbeAll(epoch, from_primary, announce):
                self._probe_all(node, epoch, from_primary, announce)
            case fx.ReplyProbe(status):
                assert ctx.call is not None
                self._reply(ctx.call, {"status": status, "position": disk.position()})
            case fx.RequestVotes(epoch, position, voters):
                if disk.epoch < epoch:
                    raise Violation(
                        f"replica {node.index} asked for votes in epoch {epoch} before "
                        f"recording it (recorded {disk.epoch})"
                    )
                for voter in voters:
                    self._call(node, "vote", voter, {"epoch": epoch, "position": position})
            case fx.ReplyVote(granted, epoch, reason):
                assert ctx.call is not None
                if granted and disk.epoch < epoch:
                    raise Violation(
                        f"replica {node.index} granted a vote in epoch {epoch} before "
                        f"recording it (recorded {disk.epoch})"
                    )
                self.observe("vote granted" if granted else "vote refused: " + _kind(reason))
                self._reply(ctx.call, {"granted": granted, "epoch": epoch, "reason": reason})
            case fx.OpenStream(stream_id, primary, epoch):
                self._open_stream(node, stream_id, primary, epoch)
            case fx.CancelStream(stream_id):
                link = node.follow
                if link is not None and link.secondary_stream == stream_id:
                    self.break_link(link)
            case fx.SendHello(stream_id, epoch):
                link = node.follow
                if link is not None and link.secondary_stream == stream_id and not link.broken:
                    if node.db_down:
                        self.break_link(link)  # the position cannot be read: the stream ends
                    else:
                        link.up.append(self._hello(node, epoch))
            case fx.SendAck(stream_id, position, in_sync, ack_id):
                if position.seq > len(disk.log) or (
                    position.seq > 0 and disk.log[position.seq - 1].epoch != position.epoch
                ):
                    raise Violation(
                        f"replica {node.index} acked {position} but stores {disk.position()}"
                    )
                link = node.follow
                if link is not None and link.secondary_stream == stream_id and not link.broken:
                    link.up.append(
                        Message(
                            self.now,
                            "ack",
                            {"seq": position.seq, "in_sync": in_sync, "ack_id": ack_id},
                        )
                    )
            case fx.SendDivergence(_, stream_id, epoch):
                link = ctx.link
                assert link is not None
                link.primary_stream = stream_id
                if node.db_down:
                    self.break_link(link)  # its epoch's end cannot be read: UNAVAILABLE
                    return
                end = disk.end_for_epoch(ctx.hello_epoch)
                if ctx.hello_epoch >= epoch and effect.written_seq > end.seq:
                    end = Position(epoch, effect.written_seq)  # (its commit under way)
                if not link.broken:
                    link.down.append(Message(self.now, "divergence", {"epoch": epoch, "end": end}))
            case fx.RefuseStream():
                assert ctx.link is not None
                self.break_link(ctx.link, tell_primary=False)
            case fx.SendEvents(_, stream_id, epoch, after, through, committed, in_sync, echo):
                link = self._served(node, stream_id)
                if link is None:
                    return
                log = node.log_as_written()
                entries = [(s, log[s - 1]) for s in range(after + 1, through + 1)]
                if through > len(log) or node.db_down:
                    self.break_link(link)  # the shell cannot read them: the stream ends
                    return
                link.down.append(
                    Message(
                        self.now,
                        "batch",
                        {
                            "epoch": epoch,
                            "entries": entries,
                            "committed": committed,
                            "in_sync": in_sync,
                            "echo": echo,
                        },
                    )
                )
            case fx.SendHeartbeat(_, stream_id, epoch, committed, _, in_sync, echo):
                link = self._served(node, stream_id)
                if link is not None:
                    body = {"epoch": epoch, "committed": committed, "in_sync": in_sync}
                    link.down.append(Message(self.now, "heartbeat", body | {"echo": echo}))
            case fx.EndStream(_, stream_id):
                link = self._served(node, stream_id)
                if link is not None:
                    self.break_link(link)
            case _:
                raise AssertionError(f"unknown effect {effect}")

    def _advance_commit(self, node: Node, seq: int) -> None:
        if seq < node.term_commit:
            raise Violation(f"replica {node.index}'s commit point moved back to {seq}")
        node.term_commit = seq
        node.committed = max(node.committed, seq)
        log = node.disk.log
        if seq > len(log):
            raise Violation(f"replica {node.index} committed seq {seq} beyond its log")
        for request_id, awaited in list(node.pending.items()):
            if awaited <= seq:
                del node.pending[request_id]
                self._acknowledge(node, request_id, awaited)

    def _acknowledge(self, node: Node, request_id: str, seq: int) -> None:
        if seq > len(node.disk.log):
            raise Violation(
                f"replica {node.index} acknowledged {request_id} at seq {seq}, beyond its "
                f"durable log ({len(node.disk.log)})"
            )
        entry = node.disk.log[seq - 1]
        assert entry.request_id == request_id
        other = self.acked_at_seq.get(seq)
        if other is not None and other != request_id:
            raise Violation(
                f"replica {node.index} acknowledged {request_id} at seq {seq}, where {other} "
                "was acknowledged before: one of them is lost"
            )
        before = self.acked.get(request_id)
        if before is not None and before[0] != seq:
            raise Violation(f"request {request_id} acknowledged at seqs {before[0]} and {seq}")
        assert node.core is not None
        self.acked[request_id] = (seq, node.core.current_epoch)
        self.observe("write acknowledged")
        self.acked_at_seq[seq] = request_id

    def _store(self, node: Node, thread: str, stream_id: int, ctx: Ctx) -> None:
        assert ctx.batch is not None
        log = node.disk.log
        for seq, entry in ctx.batch:
            if seq <= len(log):
                if log[seq - 1] != entry:
                    raise Violation(
                        f"replica {node.index} holds {log[seq - 1]} at seq {seq} where its "
                        f"primary sent {entry}: logs disagree below the stream's start"
                    )
                continue
            if seq != len(log) + 1:
                raise Violation(
                    f"replica {node.index} was sent seq {seq} after its log's end {len(log)}"
                )
            log.append(entry)
        committed, in_sync, echo = ctx.batch_meta
        self.step(
            node,
            thread,
            ins.BatchStored(stream_id, node.disk.position(), committed, in_sync, echo),
        )

    # -- streams ---------------------------------------------------------------------------

    def _hello(self, node: Node, epoch: int) -> Message:
        return Message(self.now, "hello", {"epoch": epoch, "position": node.disk.position()})

    def _open_stream(self, node: Node, stream_id: int, primary: int, epoch: int) -> None:
        if node.follow is not None and not node.follow.broken:
            self.break_link(node.follow)
        target = self.nodes[primary]
        link = Link(
            next(self._ids),
            node.index,
            primary,
            node.incarnation,
            target.incarnation,
            stream_id,
        )
        node.follow = link
        self.links.append(link)
        if not target.alive or node.db_down:
            # Nothing listens (the call fails at once), or the Hello's position cannot be read.
            # Nothing listens: the call fails at once.
            link.broken = True
            link.secondary_notice = self.now
            return
        link.up.append(self._hello(node, epoch))

    def _served(self, node: Node, stream_id: int) -> Link | None:
        for link in self.links:
            if (
                link.primary == node.index
                and link.primary_stream == stream_id
                and link.primary_incarnation == node.incarnation
                and not link.broken
            ):
                return link
        return None

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

    def _link_alive_at(self, link: Link, end: str) -> bool:
        node = self.nodes[link.secondary if end == "secondary" else link.primary]
        incarnation = link.secondary_incarnation if end == "secondary" else link.primary_incarnation
        return node.alive and node.incarnation == incarnation

    # What can happen next on streams (the model picks among these).

    def stream_deliveries(self) -> list[tuple[Link, str]]:
        out = []
        for link in self.links:
            if link.broken:
                if link.secondary_notice is not None and self._can_act(link.secondary, "follow"):
                    out.append((link, "secondary_notice"))
                if link.primary_notice is not None and self._can_act(
                    link.primary, f"serve:{link.link_id}"
                ):
                    out.append((link, "primary_notice"))
                continue
            if (
                link.down
                and (link.primary, link.secondary) not in self.cut
                and self._can_act(link.secondary, "follow")
                and not self._waits_for_write_lock(link)
            ):
                out.append((link, "down"))
            if (
                link.up
                and (link.secondary, link.primary) not in self.cut
                and self._can_act(link.primary, f"serve:{link.link_id}")
            ):
                out.append((link, "up"))
            if link.acked_once and self._can_act(link.primary, f"send:{link.link_id}"):
                out.append((link, "send"))
        return out

    def _waits_for_write_lock(self, link: Link) -> bool:
        """The shell reads the log for a divergence and stores a batch under the writer's
        lock: a replica that stepped down while its writer commits a batch (one that it
        streamed as primary) does neither until that commit ended."""
        node = self.nodes[link.secondary]
        return bool(node.written) and link.down[0].kind in ("divergence", "batch")

    def _can_act(self, index: int, thread: str) -> bool:
        node = self.nodes[index]
        return node.running and node.idle(thread)

    def deliver(self, link: Link, what: str) -> None:
        if what == "secondary_notice":
            link.secondary_notice = None
            node = self.nodes[link.secondary]
            if node.incarnation == link.secondary_incarnation:
                if node.follow is link:
                    node.follow = None
                self.step(node, "follow", ins.ReplicationStreamEnded(link.secondary_stream))
        elif what == "primary_notice":
            link.primary_notice = None
            node = self.nodes[link.primary]
            assert link.primary_stream is not None
            if node.incarnation == link.primary_incarnation:
                self.step(
                    node,
                    f"serve:{link.link_id}",
                    ins.SecondaryDisconnected(link.secondary, link.primary_stream),
                )
        elif what == "down":
            self._deliver_down(link)
        elif what == "up":
            self._deliver_up(link)
        elif what == "send":
            link.last_send_wanted = self.now
            assert link.primary_stream is not None
            self.step(
                self.nodes[link.primary],
                f"send:{link.link_id}",
                ins.SendWanted(link.secondary, link.primary_stream),
            )
        else:
            raise AssertionError(what)

    def _deliver_down(self, link: Link) -> None:
        message = link.down.popleft()
        node = self.nodes[link.secondary]
        sid, body, disk = link.secondary_stream, message.body, node.disk
        if message.kind == "divergence" and node.db_down:
            self.break_link(link)  # its own log's end cannot be read: the stream ends
        elif message.kind == "divergence":
            end = body["end"]
            self.step(
                node,
                "follow",
                ins.DivergenceReceived(
                    sid, body["epoch"], end, disk.position(), disk.end_for_epoch(end.epoch)
                ),
            )
        elif message.kind == "batch":
            entries = body["entries"]
            last_seq, last = entries[-1]
            ctx = Ctx(batch=entries, batch_meta=(body["committed"], body["in_sync"], body["echo"]))
            self.step(
                node,
                "follow",
                ins.BatchReceived(sid, body["epoch"], Position(last.epoch, last_seq)),
                ctx,
            )
        else:
            self.step(
                node,
                "follow",
                ins.HeartbeatReceived(
                    sid, body["epoch"], body["committed"], body["in_sync"], body["echo"]
                ),
            )

    def _deliver_up(self, link: Link) -> None:
        message = link.up.popleft()
        node = self.nodes[link.primary]
        thread = f"serve:{link.link_id}"
        if message.kind == "hello":
            position = message.body["position"]
            self.step(
                node,
                thread,
                ins.SecondaryHello(link.secondary, link.primary_stream, message.body["epoch"]),
                Ctx(link=link, hello_epoch=position.epoch),
            )
        else:
            assert link.primary_stream is not None
            link.acked_once = True
            self.step(
                node,
                thread,
                ins.SecondaryAcked(
                    link.secondary,
                    link.primary_stream,
                    message.body["seq"],
                    message.body["in_sync"],
                    message.body["ack_id"],
                ),
            )

    # -- calls -----------------------------------------------------------------------------

    def _call(self, node: Node, kind: str, callee: int, request: dict[str, Any]) -> Call:
        call = Call(next(self._ids), kind, node.index, callee, node.incarnation, self.now, request)
        call.round_id = node.round_id
        call.timeout = PROBE_TIMEOUT if kind == "probe" else VOTE_TIMEOUT
        self.calls.append(call)
        return call

    def _probe_all(self, node: Node, epoch: int, from_primary: bool, announce: bool) -> None:
        if node.probing and not announce:
            return
        node.probing = True
        node.round_id += 1
        node.round = {}
        for peer in range(self.n):
            if peer != node.index:
                self._call(
                    node,
                    "probe",
                    peer,
                    {"from": node.index, "epoch": epoch, "from_primary": from_primary},
                )

    def _reply(self, call: Call, reply: dict[str, Any]) -> None:
        call.handling = False
        call.reply = reply
        call.replied_at = self.now

    def call_deliveries(self) -> list[Call]:
        out = []
        for call in self.calls:
            if call.handling:
                continue
            if call.reply is None:
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
        if call.reply is None:
            callee = self.nodes[call.callee]
            if not callee.alive:
                # Nothing listens on its port: the call fails at once (TCP RST).
                self._fail(call, refused=True, gone=True)
                return
            if callee.db_down:
                # It reads its log before answering: UNAVAILABLE, like a refused connection,
                # and its core hears why first.
                self.step(callee, f"rpc:{call.call_id}", ins.DatabaseFailed("down"))
                self._fail(call, refused=True, gone=False)
                return
            call.handling = True
            thread = f"rpc:{call.call_id}"
            request = call.request
            if call.kind == "probe":
                event: ins.Input = ins.ProbeReceived(
                    request["from"], request["epoch"], request["from_primary"]
                )
            else:
                event = ins.VoteRequested(
                    call.caller, request["epoch"], request["position"], callee.disk.position()
                )
            self.step(callee, thread, event, Ctx(call=call))
            return
        self.calls.remove(call)
        caller = self.nodes[call.caller]
        if not caller.alive or caller.incarnation != call.caller_incarnation:
            return
        reply = call.reply
        if call.kind == "probe":
            status: fx.ReplicaStatus = reply["status"]
            view = ins.PeerView(
                status.index,
                status.role,
                status.epoch,
                reply["position"],
                status.in_sync,
                status.trusted,
                status.following_live_primary,
                status.claim,
            )
            self._probe_outcome(caller, call, ins.ProbeOutcome(call.callee, view))
        else:
            caller.inbox.append(
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
        if call.kind == "probe":
            self._probe_outcome(caller, call, ins.ProbeOutcome(call.callee, None, refused, gone))
        else:
            caller.inbox.append(
                ins.VoteReplied(call.callee, call.request["epoch"], False, 0, "unreachable")
            )

    def _probe_outcome(self, caller: Node, call: Call, outcome: ins.ProbeOutcome) -> None:
        if call.round_id != caller.round_id:
            return  # an older round's
        caller.round[call.callee] = outcome
        if len(caller.round) == self.n - 1:
            outcomes = tuple(caller.round[i] for i in sorted(caller.round))
            caller.probing = False
            caller.round = {}
            caller.inbox.append(ins.ProbesAnswered(Position(0, 0), outcomes))

    def run_inbox(self, index: int) -> None:
        node = self.nodes[index]
        event = node.inbox.popleft()
        if isinstance(event, ins.ProbesAnswered):  # the shell reads its position now
            if node.db_down:
                return  # it cannot: the round is dropped, the next tick probes again
            event = ins.ProbesAnswered(node.disk.position(), event.outcomes)
        self.step(node, "coordinator", event)

    def tick(self, index: int) -> None:
        self.step(self.nodes[index], "coordinator", ins.Tick())

    # -- clients ---------------------------------------------------------------------------

    def writable(self) -> list[Node]:
        return [
            n
            for n in self.nodes
            if n.running and n.role[0] is Role.PRIMARY and n.idle("writer") and not n.written
        ]

    def committing(self) -> list[Node]:
        """Primaries whose writer is committing a streamed batch."""
        return [n for n in self.nodes if n.running and n.written]

    def client_write(self, node: Node, request_id: str) -> bool:
        """What the writer does with one command: refused unless the role shown is primary; a
        request id already in the log waits for its event; otherwise admission, then the
        event is decided and streamed (Written), and its local commit starts: commit()
        finishes it (Appended), or it fails (LocalWriteFailed)."""
        assert node.core is not None
        if node.db_down:
            return False  # UNAVAILABLE, nothing applied
        log = node.disk.log
        for seq, entry in enumerate(log, 1):
            if entry.request_id == request_id:
                node.pending[request_id] = seq
                if node.committed >= seq and node.core.commit_point is not None:
                    del node.pending[request_id]
                    self._acknowledge(node, request_id, seq)
                return True
        if node.core.write_refusal() is not None:
            return False
        node.written.append(Entry(node.role[1], request_id))
        seq = len(log) + len(node.written)
        node.pending[request_id] = seq
        self.step(node, "writer", ins.Written(seq))
        return True

    def commit(self, node: Node, outcome: str = "ok") -> None:
        """The writer's commit of its streamed batch ends: "ok"; "failed" (rolled back); or
        "in doubt" (it did commit, but the writer saw an error: a connection lost on COMMIT).
        A database that is down fails it."""
        assert node.written
        epoch = node.written[0].epoch
        if node.db_down and outcome == "ok":
            outcome = "failed"
        if outcome != "failed":
            node.disk.log.extend(node.written)
        node.written = []
        if outcome == "ok":
            self.step(node, "writer", ins.Appended(len(node.disk.log)))
        else:
            self.observe(f"a streamed batch's local commit {outcome}")
            node.pending.clear()  # the clients see an error and retry
            self.step(node, "writer", ins.LocalWriteFailed(epoch, outcome))

    # -- time ------------------------------------------------------------------------------

    def deadline(self) -> float:
        """On a bounded network: the latest time things that can happen must have happened
        by (inf when unbounded)."""
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
            elif what == "primary_notice":
                assert link.primary_notice is not None
                times.append(link.primary_notice)
            else:
                times.append(link.last_send_wanted)
        for call in self.call_deliveries():
            if call.reply is None or call.replied_at <= call.sent_at + MAX_DELAY:
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
        keep_blocked: Callable[[int, str], bool] = lambda index, thread: False,
    ) -> bool:
        """Run every replica and deliver everything (except what `hold` keeps back), half a
        heartbeat of logical time per round, until `until()` or `rounds` ran out. With
        `respect_deadline`, time passes no further than the network's delay bound allows.
        Durable effects under way complete, except those of the threads `keep_blocked` names."""
        for _ in range(rounds):
            while waiting := [x for x in self.blocked_threads() if not keep_blocked(*x)]:
                self.resume(*waiting[0])
            for _ in range(200):
                streams = [x for x in self.stream_deliveries() if x[1] != "send" and not hold(*x)]
                if streams:
                    self.deliver(*streams[0])
                    continue
                calls = [c for c in self.call_deliveries() if not hold_calls(c)]
                if not calls:
                    break
                self.deliver_call(calls[0])
            # A primary's commit ends after what its streams carried meanwhile (the acks of
            # the batch it commits may come first).
            for node in self.committing():
                if not keep_blocked(node.index, "writer") and not self.suspend(
                    node.index, LocalCommit()
                ):
                    self.commit(node)
            for link, what in self.stream_deliveries():
                if what == "send" and not hold(link, what):
                    self.deliver(link, what)
            for node in self.nodes:
                while node.running and node.inbox and node.idle("coordinator"):
                    self.run_inbox(node.index)
                if node.running and node.idle("coordinator"):
                    self.tick(node.index)
            self.check()
            if until():
                return True
            step = HEARTBEAT / 2
            if respect_deadline:
                step = min(step, self.deadline() - self.now)
                if step <= 0:
                    return until()
            self.advance(self.now + step)
        return until()

    def primaries(self) -> list[Node]:
        return [n for n in self.nodes if n.core is not None and n.core.role is Role.PRIMARY]

    def converged(self, everyone: bool = True) -> bool:
        """One primary, its commit point at its log's end, and every replica (every live one,
        unless `everyone`) holding that log and showing it committed."""
        primaries = self.primaries()
        if len(primaries) != 1:
            return False
        p = primaries[0]
        assert p.core is not None
        return p.core.commit_point == len(p.disk.log) and all(
            n.disk.log == p.disk.log and (n.committed == len(p.disk.log) or not everyone)
            for n in self.nodes
            if everyone or n.alive
        )

    # -- invariants ------------------------------------------------------------------------

    def _check_core(self, node: Node) -> None:
        core = node.core
        assert core is not None
        point = core.commit_point
        if point is not None and point > len(node.disk.log):
            raise Violation(f"replica {node.index}'s commit point {point} is beyond its log")
        if core.trusted(self.now):
            # What its probe replies and its own elections would say, as of this step.
            missing = self._first_missing_acked(node.disk.log)
            if missing is not None:
                raise Violation(
                    f"replica {node.index} vouches for a log without acknowledged {missing}: "
                    f"{node.disk.log}"
                )
        claim = core.claim()
        if claim is not None:
            # An election of every replica but `claim` may go ahead on it: the most
            # up-to-date of their logs must hold every acknowledged write.
            others = [n for n in self.nodes if n.index != claim]
            best = max(
                others, key=lambda n: (n.disk.position().epoch, n.disk.position().seq, -n.index)
            )
            missing = self._first_missing_acked(best.disk.log)
            if missing is not None:
                raise Violation(
                    f"replica {node.index} claims to be in sync with replica {claim}, but the "
                    f"best log without {claim}'s (replica {best.index}'s) lacks acknowledged "
                    f"{missing}: {best.disk.log}"
                )

    def _first_missing_acked(self, log: list[Entry]) -> str | None:
        """An acknowledged write `log` lacks ("r7 at seq 9"), if any."""
        for request_id, (seq, _epoch) in self.acked.items():
            if seq > len(log) or log[seq - 1].request_id != request_id:
                return f"{request_id} at seq {seq}"
        return None

    def check(self) -> None:
        for node in self.nodes:
            log = node.disk.log
            ids = [e.request_id for e in log if e.request_id is not None]
            if len(ids) != len(set(ids)):
                raise Violation(f"replica {node.index} stored a request twice: {log}")
            for seq, entry in enumerate(log, 1):
                if entry.request_id is not None and (seq == 1 or log[seq - 2].epoch != entry.epoch):
                    raise Violation(
                        f"replica {node.index}'s log has a client write at seq {seq} before its "
                        f"epoch {entry.epoch} started: {log}"
                    )
            core = node.core
            if core is None:
                continue
            if core.role is Role.PRIMARY:
                for request_id, (seq, epoch) in self.acked.items():
                    if epoch <= core.current_epoch and (
                        seq > len(log) or log[seq - 1].request_id != request_id
                    ):
                        raise Violation(
                            f"primary {node.index} (epoch {core.current_epoch}) lacks "
                            f"acknowledged {request_id} at seq {seq}: {log}"
                        )
            for request_id, (seq, epoch) in self.acked.items():
                if seq > len(log) or log[seq - 1].request_id == request_id:
                    continue
                if log[seq - 1].epoch >= epoch:
                    raise Violation(
                        f"replica {node.index} holds {log[seq - 1]} where {request_id} was "
                        f"acknowledged in epoch {epoch}"
                    )
                if core.trusted(self.now):
                    raise Violation(f"replica {node.index} vouches for a log without {request_id}")
        for a in self.nodes:
            for b in self.nodes:
                if a.index >= b.index:
                    continue
                common = min(len(a.disk.log), len(b.disk.log))
                for seq in range(common, 0, -1):
                    if a.disk.log[seq - 1].epoch == b.disk.log[seq - 1].epoch:
                        if a.disk.log[:seq] != b.disk.log[:seq]:
                            raise Violation(
                                f"replicas {a.index} and {b.index} agree on the epoch at seq "
                                f"{seq} but not before: {a.disk.log} / {b.disk.log}"
                            )
                        break
