"""The protocol's leaf rules: pure functions of what a replica knows, used by the core
(core.py, in_sync.py) and tested on their own."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol


class LogPosition(Protocol):
    """Where a log ends: the epoch of its last event, then its seq (eventlog.Position is one).
    The core compares positions but never makes them: they are facts the shell read."""

    @property
    def epoch(self) -> int: ...

    @property
    def seq(self) -> int: ...


def position_key(position: LogPosition) -> tuple[int, int]:
    """Logs are compared as in an election: the higher epoch of the last event wins, then the
    higher seq."""
    return (position.epoch, position.seq)


def less_up_to_date(a: LogPosition, b: LogPosition) -> bool:
    return position_key(a) < position_key(b)


class ProbeOutcomeLike(Protocol):
    """One peer's answer to a probe round (inputs.ProbeOutcome is one)."""

    @property
    def index(self) -> int: ...

    @property
    def view(self) -> object | None: ...

    @property
    def refused(self) -> bool: ...

    @property
    def process_gone(self) -> bool: ...


@dataclass(frozen=True)
class CandidateView:
    """What an election knows of one live replica."""

    index: int
    position: LogPosition  # its log's last (epoch, seq)
    epoch: int  # the highest epoch it has seen (and maybe voted in)
    vouches: bool  # holds every acknowledged event now (ReplicaCore.vouches)
    # The primary that counts it in sync, as it last heard, though maybe not lately
    # (ReplicaCore.claim); None when it claims nothing.
    claim: int | None = None


def log_order_key(c: CandidateView) -> tuple[int, int, int]:
    """The most up-to-date log wins (epoch of its last event, then seq); ties go to the lowest
    index, so that replicas that see the same logs name the same candidate."""
    return (c.position.epoch, c.position.seq, -c.index)


def electable(electorate: Iterable[CandidateView], cluster_size: int) -> bool:
    """Whether the live replicas can be sure to hold every acknowledged event. They can when
    the whole cluster is present (the in-sync set is among them); when one of them vouches
    for its log now (`vouches`: its primary confirmed it in sync lately, so cannot have
    dropped it yet); or when one of them was counted in sync by a primary X (`claim`, however
    long ago) and every replica but X is present: X never acknowledges without an in-sync
    secondary while a secondary it dropped unheard may still claim (InSyncSet), so what X
    acknowledged is on some replica other than X. A restarted replica alone is not enough:
    it cannot know what was acknowledged while it was down."""
    members = list(electorate)
    present = {c.index for c in members}
    if len(present) >= cluster_size or any(c.vouches for c in members):
        return True
    return any(
        c.claim is not None and c.claim not in present and len(present) >= cluster_size - 1
        for c in members
    )


def may_be_vouching_unheard(
    outcomes: Iterable[ProbeOutcomeLike], lost_primary: int | None, min_insync: int
) -> tuple[int, ...]:
    """The peers whose votes an election needs though they did not answer its probes: with
    min_insync = 1 the vouch, not a majority, keeps acknowledged writes, so every replica that
    may be vouching must vote -- and be counted in sync by the new primary -- or have stopped.
    One that does not answer at all
    (no refusal: a timeout) may be running and vouching -- a pause shorter than the pause
    detector notices, a stalled thread -- and would go on vouching while the new primary
    acknowledged writes without it. A refusal is safe: a dead process restarts vouching for
    nothing, and a replica that answers UNAVAILABLE stopped vouching first. The primary that
    was lost is not waited for: a primary vouches for nothing, and steps down when it wakes.
    With min_insync >= 2 a majority of votes keeps the writes, and no one is waited for."""
    if min_insync >= 2:
        return ()
    return tuple(
        o.index
        for o in outcomes
        if o.view is None and not o.refused and not o.process_gone and o.index != lost_primary
    )


def choose_primary(electorate: Sequence[CandidateView], cluster_size: int) -> int | None:
    """The index the live replicas should elect, or None when no safe choice exists yet."""
    if not electorate or not electable(electorate, cluster_size):
        return None
    return max(electorate, key=log_order_key).index


def next_epoch(max_known_epoch: int, slot: int, cluster_size: int) -> int:
    """The smallest epoch above every epoch known whose remainder modulo the cluster size is
    the candidate's slot: two candidates can never start the same epoch, so an epoch always
    names a single primary (which divergence detection relies on)."""
    return (max_known_epoch // cluster_size + 1) * cluster_size + slot


def truncation_point(
    own_last: LogPosition, primary_end: LogPosition, own_end_for_primary_epoch: LogPosition
) -> int:
    """Where a secondary's log must be cut, given the primary's last position among events
    with epoch <= the secondary's last epoch (`primary_end`) and the secondary's own last
    position among events with epoch <= primary_end.epoch. Repeat the exchange until nothing
    is cut."""
    return min(own_last.seq, primary_end.seq, own_end_for_primary_epoch.seq)


def commit_point(primary_durable_seq: int, in_sync_acked: Iterable[int]) -> int:
    """The highest seq durable in the primary's own log and acknowledged by every in-sync
    secondary (the primary streams events before its own commit of them is done)."""
    return min([primary_durable_seq, *in_sync_acked])


def enough_in_sync(in_sync_secondaries: int, min_insync: int) -> bool:
    """min_insync counts the primary itself."""
    return in_sync_secondaries + 1 >= min_insync


def votes_needed(min_insync: int) -> int:
    """Votes (the candidate's own included) a candidate needs. With min_insync >= 2, a majority
    of a three-replica cluster, so that two sides of a partition cannot both elect."""
    return max(1, min_insync)


def vouches(in_sync: bool, confirmed_for: float | None, vouch_window: float) -> bool:
    """Whether a secondary may vouch in an election for holding every acknowledged event now.

    Only while its primary counts it in sync and it knows so, and only for `vouch_window`
    (half the in-sync timeout) after it sent the newest ack the primary then confirmed it in
    sync with (`confirmed_for`; None if none was): the primary said so only after receiving
    that ack, and drops no member sooner than `insync_timeout` after its last "in sync" to
    it -- from its stream breaking, from its getting stuck storing, from its not confirming
    that it is leaving. Counted from the ack's sending on this replica's own clock, so no
    word delayed in the network (a partition that heals, a slow link), no stall storing a
    batch and no lost stream can stretch the vouch past the drop. A silent stream does not
    keep it either: a partition looks just like a paused primary. (The claim does:
    rules.electable.)"""
    return in_sync and confirmed_for is not None and confirmed_for < vouch_window
