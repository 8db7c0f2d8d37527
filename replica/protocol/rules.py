"""The protocol's leaf rules: pure functions of what a replica knows, used by the core
(core.py, in_sync.py) and tested on their own."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from math import isqrt
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


def electable(electorate: Iterable[CandidateView], voters: Collection[int]) -> bool:
    """Whether the live replicas can be sure to hold every acknowledged event. They can when
    every voter is present (the in-sync set is among them); when one of them vouches
    for its log now (`vouches`: its primary confirmed it in sync lately, so cannot have
    dropped it yet); or when one of them was counted in sync by a primary X (`claim`, however
    long ago) and every voter but X is present: X never acknowledges without an in-sync
    secondary while a secondary it dropped unheard may still claim (InSyncSet), so what X
    acknowledged is on some replica other than X. A restarted replica alone is not enough:
    it cannot know what was acknowledged while it was down. Presence is counted over the
    voters: a replica that is not one holds nothing an acknowledgement counted on."""
    members = list(electorate)
    present = {c.index for c in members}
    needed = set(voters)
    if needed <= present or any(c.vouches for c in members):
        return True
    return any(
        c.claim is not None and c.claim not in present and needed - {c.claim} <= present
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


def choose_primary(
    electorate: Sequence[CandidateView],
    voters: Collection[int],
    leaving: Sequence[CandidateView] = (),
    removing: Collection[int] = (),
) -> int | None:
    """The index the live replicas should elect, or None when no safe choice exists yet.
    `removing`: the voter a membership change not known committed removes; `leaving`: its
    view when it is live but not among `voters` (not counted for electability). It is
    chosen only if its log is strictly ahead of every other's (it may hold what no one else
    does), so that every replica -- the one leaving too, which counts itself among the
    voters before the change -- names the same candidate."""
    if not electorate or not electable(electorate, voters):
        return None
    return max(
        [*electorate, *leaving],
        key=lambda c: (c.position.epoch, c.position.seq, c.index not in removing, -c.index),
    ).index


def next_epoch(max_known_epoch: int, index: int) -> int:
    """The smallest epoch above every epoch known that is replica `index`'s to start: two
    candidates can never start the same epoch, so an epoch always names a single primary
    (which divergence detection relies on) -- for any index and any number of replicas,
    which may change while the cluster runs. Epochs are Cantor's pairing of a round and the
    index (one-to-one, so no two replicas share one): replica 0 starts epochs 1, 3, 6, ...;
    replica 1 epochs 2, 4, 7, ...; replica 2 epochs 5, 8, 12, ... -- small while indexes
    are. (Epoch 0 is no one's: the state before any election.)"""
    if index < 0:
        raise ValueError(f"a replica index is never negative: {index}")
    # The epoch of round r is T(r + index) + index, T(n) = n(n+1)/2: increasing in r.
    total = max(index, _triangle_root(max(0, max_known_epoch - index)))
    while _triangle(total) + index <= max_known_epoch or (total == 0 and index == 0):
        total += 1
    return _triangle(total) + index


def epoch_owner(epoch: int) -> int:
    """The replica whose epoch `epoch` is (see next_epoch): the one replica that may have led
    it. Epoch 0 is none's (no primary yet)."""
    if epoch <= 0:
        raise ValueError(f"epoch {epoch} is no replica's")
    total = _triangle_root(epoch)
    return epoch - _triangle(total)


def _triangle(n: int) -> int:
    return n * (n + 1) // 2


def _triangle_root(value: int) -> int:
    """The largest n with T(n) <= value."""
    n = (isqrt(8 * value + 1) - 1) // 2
    while _triangle(n + 1) <= value:
        n += 1
    while _triangle(n) > value:
        n -= 1
    return n


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


def votes_needed(min_insync: int, voters: int) -> int:
    """Votes (the candidate's own included) a candidate needs. With min_insync = 1 its own is
    enough for the count: every replica that may be vouching must vote anyway
    (may_be_vouching_unheard). With min_insync >= 2 no one is waited for, so the votes must
    meet every group of replicas that can acknowledge a write (min_insync of them): then a
    deposed primary's in-sync secondaries include a voter of the new epoch, which no longer
    acks the old one, and two sides of a partition cannot both acknowledge. On three
    replicas with min_insync 2 that is a majority, two; never fewer than min_insync."""
    if min_insync <= 1:
        return 1
    return min(voters, max(min_insync, voters - min_insync + 1))


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
