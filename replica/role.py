"""Who this replica is in the cluster right now: role, epoch and the known primary."""

from __future__ import annotations

import threading
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
    def __init__(self, index: int) -> None:
        self.index = index
        self._lock = threading.Lock()
        self._snapshot = RoleSnapshot(Role.CANDIDATE, 0, None, None)
        self._version = 0

    @property
    def snapshot(self) -> RoleSnapshot:
        return self._snapshot

    def set(
        self,
        role: Role,
        epoch: int,
        primary_index: int | None,
        address: str | None,
        version: int | None = None,
    ) -> None:
        """`version`: the protocol core's (SetRole); an older one than shown is ignored."""
        with self._lock:
            if version is not None:
                if version <= self._version:
                    return
                self._version = version
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
