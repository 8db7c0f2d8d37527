"""Who this replica is in the cluster right now: role, epoch and the known primary."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from enum import StrEnum

from replica.errors import NotPrimary


class Role(StrEnum):
    PRIMARY = "primary"
    SECONDARY = "secondary"
    CANDIDATE = "candidate"


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

    @property
    def snapshot(self) -> RoleSnapshot:
        return self._snapshot

    def set(self, role: Role, epoch: int, primary_index: int | None, address: str | None) -> None:
        with self._lock:
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
