"""What a run produces: figures (each with the same-run baseline it is compared with, and the
target it will have to meet), and the errors of phases that failed."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass(frozen=True)
class Target:
    """A goal for a figure: its value (or its ratio to the baseline) at most / at least a bound."""

    comparison: Literal["<=", ">="]
    bound: float
    on: Literal["value", "ratio"] = "value"

    def met_by(self, value: float, ratio: float | None) -> bool | None:
        measured = value if self.on == "value" else ratio
        if measured is None:
            return None
        return measured <= self.bound if self.comparison == "<=" else measured >= self.bound

    def describe(self, unit: str) -> str:
        sign = "≤" if self.comparison == "<=" else "≥"
        if self.on == "ratio":
            return f"{sign} {self.bound:g}x baseline"
        return f"{sign} {self.bound:,g} {unit}"


@dataclass(frozen=True)
class Figure:
    key: str  # e.g. "send_throughput.mysql.senders_32"; stable across full and smoke runs
    title: str
    backend: str | None
    value: float
    unit: str
    baseline_key: str | None = None
    baseline_title: str | None = None
    baseline_value: float | None = None
    baseline_unit: str | None = None
    target: Target | None = None
    details: dict[str, Any] = field(default_factory=dict)
    note: str = ""  # the details worth a glance, for the table

    @property
    def ratio(self) -> float | None:
        if self.baseline_value is None or self.baseline_value == 0:
            return None
        return self.value / self.baseline_value

    @property
    def passed(self) -> bool | None:
        return None if self.target is None else self.target.met_by(self.value, self.ratio)

    def as_dict(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "backend": self.backend,
            "value": _finite(self.value),
            "unit": self.unit,
            "baseline": None
            if self.baseline_key is None
            else {
                "key": self.baseline_key,
                "title": self.baseline_title,
                "value": _finite(self.baseline_value),
                "unit": self.baseline_unit or self.unit,
            },
            "ratio": _finite(self.ratio),
            "target": None
            if self.target is None
            else {
                "comparison": self.target.comparison,
                "bound": self.target.bound,
                "on": self.target.on,
                "text": self.target.describe(self.unit),
            },
            "passed": self.passed,
            "note": self.note,
            "details": self.details,
        }


def _finite(value: float | None) -> float | None:
    """JSON has no NaN or infinity; a figure that could not be computed is null."""
    if value is None or not math.isfinite(value):
        return None
    return round(value, 6)


@dataclass
class Results:
    meta: dict[str, Any] = field(default_factory=dict)
    figures: dict[str, Figure] = field(default_factory=dict)
    errors: list[dict[str, str]] = field(default_factory=list)

    def add(self, figure: Figure) -> Figure:
        self.figures[figure.key] = figure
        return figure

    def value(self, key: str) -> float | None:
        figure = self.figures.get(key)
        return None if figure is None else figure.value

    def compared(
        self,
        key: str,
        title: str,
        backend: str | None,
        value: float,
        unit: str,
        baseline_key: str,
        *,
        baseline_value: float | None = None,
        baseline_title: str | None = None,
        baseline_unit: str | None = None,
        target: Target | None = None,
        details: dict[str, Any] | None = None,
        note: str = "",
    ) -> Figure:
        """Add a figure compared with the baseline figure `baseline_key` of this run (or with
        `baseline_value`, derived from it, e.g. a commit's duration from the commit rate)."""
        baseline = self.figures.get(baseline_key)
        if baseline_value is None and baseline is not None:
            baseline_value = baseline.value
        if baseline_title is None:
            baseline_title = baseline.title if baseline is not None else baseline_key
        if baseline_unit is None:
            baseline_unit = baseline.unit if baseline is not None else unit
        return self.add(
            Figure(
                key=key,
                title=title,
                backend=backend,
                value=value,
                unit=unit,
                baseline_key=baseline_key,
                baseline_title=baseline_title,
                baseline_value=baseline_value,
                baseline_unit=baseline_unit,
                target=target,
                details=details or {},
                note=note,
            )
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "meta": self.meta,
            "figures": {key: figure.as_dict() for key, figure in self.figures.items()},
            "errors": self.errors,
        }
