"""The roles a replica can hold."""

from __future__ import annotations

from enum import StrEnum


class Role(StrEnum):
    PRIMARY = "primary"
    SECONDARY = "secondary"
    CANDIDATE = "candidate"
