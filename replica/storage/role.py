"""Who this replica is in the cluster right now: role, epoch and the known primary. Set only
by the executor (the core's SetRole); read by any thread."""

from __future__ import annotations

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

    @property
    def snapshot(self) -> RoleSnapshot:
        return self._snapshot

    def set(self, role: Role, epoch: int, primary_index: int | None) -> None:
        address = None if primary_index is None else self._addresses.get(primary_index)
        self._snapshot = RoleSnapshot(role, epoch, primary_index, address)

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
