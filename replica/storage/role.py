"""Who this replica is in the cluster right now: role, epoch and the known primary. Set only
by the executor (the core's SetRole); read by any thread."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass

from replica.errors import NotPrimary
from replica.protocol import Role

__all__ = ["Role", "RoleSnapshot", "RoleState"]


@dataclass(frozen=True)
class RoleSnapshot:
    role: Role
    epoch: int
    primary_index: int | None
    primary_address: str | None


class RoleState:
    def __init__(self, index: int, addresses: Mapping[int, str] | None = None) -> None:
        """`addresses`: each replica's client address, told to clients sent elsewhere (read
        when the role changes: it may change as replicas join)."""
        self.index = index
        self._addresses: Mapping[int, str] = addresses if addresses is not None else {}
        self._snapshot = RoleSnapshot(Role.CANDIDATE, 0, None, None)
        self._changed = threading.Condition()
        # This secondary's stream from the primary ended, and nothing was heard since: the
        # primary it names may be gone (killed a moment ago), and an election may follow.
        self._primary_silent = False

    @property
    def snapshot(self) -> RoleSnapshot:
        return self._snapshot

    def set(self, role: Role, epoch: int, primary_index: int | None) -> None:
        address = None if primary_index is None else self._addresses.get(primary_index)
        with self._changed:
            self._snapshot = RoleSnapshot(role, epoch, primary_index, address)
            self._primary_silent = False
            self._changed.notify_all()

    def stream_from_primary_ended(self) -> None:
        """This secondary's replication stream from the primary ended (the executor)."""
        with self._changed:
            self._primary_silent = True

    def heard_from_primary(self) -> None:
        """A batch or a heartbeat came from the primary (the executor; cheap when nothing
        changes)."""
        if self._primary_silent:
            with self._changed:
                self._primary_silent = False
                self._changed.notify_all()

    def primary_known(self) -> bool:
        """Whether this replica is the primary, or names one it has not lost touch with."""
        snap = self._snapshot
        return snap.role is Role.PRIMARY or (
            snap.primary_index is not None and not self._primary_silent
        )

    def await_primary(self, timeout: float) -> bool:
        """Waits up to `timeout` seconds while no primary is known (an election under way; or
        the one named just went silent, and one may follow; or this replica is cut off from
        the others); whether one is known now -- this replica or another."""
        with self._changed:
            return self._changed.wait_for(self.primary_known, timeout)

    def require_primary(self) -> RoleSnapshot:
        snap = self._snapshot
        if snap.role is not Role.PRIMARY:
            where = (
                f"the primary is replica {snap.primary_index} at {snap.primary_address}"
                if snap.primary_address
                else "no primary is known yet; retry shortly"
            )
            raise NotPrimary(
                f"replica {self.index} is not the primary; {where}", snap.primary_address
            )
        return snap
