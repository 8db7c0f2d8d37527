"""The protocol's settings, in seconds and replica indexes (built from the cluster config by
the shell: this package reads no files)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ProtocolConfig:
    index: int
    # The voters the cluster config names: the membership until a membership event in the
    # log says otherwise (membership.py). A replica that joined later is in none of them.
    members: tuple[int, ...]
    min_insync: int = 1
    heartbeat_interval: float = 0.1
    peer_timeout: float = 0.6  # a primary silent this long may be replaced
    insync_timeout: float = 1.0  # a secondary behind or gone this long leaves the in-sync set
    # A primary whose database makes no progress this long hands over to an in-sync
    # secondary (fail-slow storage); by default twice the in-sync timeout.
    storage_timeout: float = 2.0
    batch_events: int = 500  # events per replication batch
    max_in_flight: int = 5000  # events sent to a secondary and not yet acked

    @property
    def cluster_size(self) -> int:
        return len(self.members)

    @property
    def promotion_lag(self) -> int:
        """A learner is promoted only while within this many events of the log's end..."""
        return self.batch_events

    @property
    def promotion_steady(self) -> float:
        """...and only once it has kept that close for this long (several heartbeats)."""
        return 5 * self.heartbeat_interval

    @property
    def peers(self) -> tuple[int, ...]:
        return tuple(i for i in self.members if i != self.index)

    @property
    def probe_timeout(self) -> float:
        """How long a probe waits for its answer (one between two running replicas comes well
        within it)."""
        return max(self.heartbeat_interval * 2, 0.2)

    @property
    def vouch_window(self) -> float:
        """A primary drops an unreachable member after insync_timeout; the member stops
        vouching for its log well before that."""
        return self.insync_timeout / 2

    @property
    def stalled_after(self) -> float:
        """A database on which an operation has waited this long is stalled: the replica
        answers its peers UNAVAILABLE (it stops vouching first), so that an election does not
        wait on it -- well before a primary's own storage_timeout has it step down, so that
        once it did, the others elect without it at once."""
        return self.storage_timeout / 2

    @property
    def pause_threshold(self) -> float:
        """A gap this long between two inputs means the process did not run (SIGSTOP, a stall
        of the whole process): the shell ticks every heartbeat interval and never blocks its
        tick on I/O, so on a merely busy machine inputs keep coming."""
        return max(4 * self.heartbeat_interval, self.peer_timeout / 2)

    @property
    def stream_quiet_after(self) -> float:
        """A replication stream on which nothing was heard for this long is quiet: its two ends
        probe each other again (while it is alive, heartbeats and acks prove what a probe would
        -- every heartbeat interval). Well under the peer timeout, so that a secondary's probe
        rounds are under way before it may elect."""
        return min(3 * self.heartbeat_interval, self.peer_timeout / 2)

    @property
    def idle_after(self) -> float:
        """A stream sent no events for this long is idle: its heartbeats go out every
        idle_heartbeat_interval. (A write's commit point still reaches the secondaries within
        a heartbeat interval: its stream was busy a moment ago.)"""
        return 10 * self.heartbeat_interval

    @property
    def idle_heartbeat_interval(self) -> float:
        """How often an idle stream hears a heartbeat (and so acks): up to twice as seldom as a
        busy one -- the heartbeats and their acks are most of an idle cluster's CPU -- yet so
        that every threshold reading them still hears one in time: at least one and a half
        per quiet threshold (stream_alive, InSyncSet.streaming: or the ends would probe) and
        two and a half per vouch window (a secondary's word of being in sync, renewed by
        every heartbeat that echoes its ack, must not lapse between two)."""
        return max(
            self.heartbeat_interval,
            min(
                2 * self.heartbeat_interval, self.stream_quiet_after / 1.5, self.vouch_window / 2.5
            ),
        )

    @property
    def awake_window(self) -> float:
        """Removing a silent secondary is safe only once a primary has been running, and so
        heartbeating, for longer than a secondary waits before electing."""
        return self.peer_timeout * 1.5
