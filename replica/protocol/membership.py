"""Who is in the cluster: the voters (elect, vouch, count for commits), the learners (follow
and catch up, count for nothing) and the indexes that were removed (never used again).

Membership is state in the log: each membership event carries the whole membership after it,
and a replica acts on the latest one in its own log -- written or stored, committed or not
(Raft's rule for single-server changes) -- or on the cluster config's replicas before any.
The shell tells the core (inputs.MembershipChanged) whenever that changes: after a write, a
stored batch, a truncation. One change at a time, each committed before the next
(ReplicaCore.membership_change_refusal), so two memberships in force at once differ by one
replica at most."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class MembershipError(ValueError):
    """A membership change that cannot be made (the message says why, for an operator)."""


class ChangeKind(StrEnum):
    ADD = "add"  # as a learner
    PROMOTE = "promote"  # a learner to voter
    REMOVE = "remove"


@dataclass(frozen=True, slots=True)
class MembershipChange:
    kind: ChangeKind
    index: int


@dataclass(frozen=True, slots=True)
class Membership:
    voters: frozenset[int]
    learners: frozenset[int] = field(default_factory=frozenset)
    removed: frozenset[int] = field(default_factory=frozenset)
    seq: int = 0  # where the event that set it is in the log (0: the config's replicas)
    # The voters before the change at `seq` (None for the initial membership): until that
    # change is known committed, elections count both (see ReplicaCore.election_voters).
    voters_before: frozenset[int] | None = None

    @classmethod
    def initial(cls, voters: tuple[int, ...] | frozenset[int]) -> Membership:
        return cls(frozenset(voters))

    @property
    def voters_in_transition(self) -> frozenset[int]:
        """The voters before and after the latest change, together."""
        return self.voters | (self.voters_before or frozenset())

    @property
    def members(self) -> frozenset[int]:
        return self.voters | self.learners

    def is_voter(self, index: int) -> bool:
        return index in self.voters

    def is_member(self, index: int) -> bool:
        return index in self.voters or index in self.learners

    def refusal(self, change: MembershipChange) -> str | None:
        """Why `change` cannot be made to this membership, if it cannot (the rules that need
        no more than the membership itself; the primary's own are in the core)."""
        i = change.index
        match change.kind:
            case ChangeKind.ADD:
                if i < 0:
                    return f"a replica index is never negative ({i})"
                if self.is_member(i):
                    role = "voter" if self.is_voter(i) else "learner"
                    return f"index {i} is in use (replica {i} is a {role})"
                if i in self.removed:
                    return (
                        f"index {i} belonged to a replica that was removed; indexes are never "
                        f"reused (choose one above {max(self.members | self.removed)})"
                    )
            case ChangeKind.PROMOTE:
                if self.is_voter(i):
                    return f"replica {i} is a voter already"
                if i not in self.learners:
                    return f"replica {i} is not a learner of this cluster"
            case ChangeKind.REMOVE:
                if not self.is_member(i):
                    return f"replica {i} is not a member of this cluster"
                if self.voters == {i}:
                    return f"replica {i} is the last voter (a cluster needs one)"
        return None

    def changed(self, change: MembershipChange, seq: int) -> Membership:
        """The membership after `change`, set by the event at `seq`."""
        refusal = self.refusal(change)
        if refusal is not None:
            raise MembershipError(refusal)
        i = change.index
        match change.kind:
            case ChangeKind.ADD:
                voters, learners, removed = self.voters, self.learners | {i}, self.removed
            case ChangeKind.PROMOTE:
                voters, learners, removed = self.voters | {i}, self.learners - {i}, self.removed
            case ChangeKind.REMOVE:
                voters, learners = self.voters - {i}, self.learners - {i}
                removed = self.removed | {i}
        return Membership(voters, learners, removed, seq, self.voters)

    def describe(self) -> str:
        voters = ", ".join(str(i) for i in sorted(self.voters))
        text = f"voters {voters}"
        if self.learners:
            text += "; learners " + ", ".join(str(i) for i in sorted(self.learners))
        return text
