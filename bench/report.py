"""The results as a table (built from the JSON form, so a saved run prints the same table,
plain or Markdown) and as JSON files: `<dir>/latest.json` and a timestamped copy (`smoke-`
prefixed for smoke runs)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

HEADERS = ("figure", "backend", "value", "baseline (same run)", "ratio", "target", "result", "note")
RIGHT_ALIGNED = {2, 4}  # value, ratio


def format_number(value: float | None, unit: str) -> str:
    if value is None:
        return "n/a"
    magnitude = abs(value)
    if magnitude >= 100:
        text = f"{value:,.0f}"
    elif magnitude >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.2f}"
    return f"{text} {unit}"


def _row(figure: Mapping[str, Any]) -> tuple[str, ...]:
    baseline = figure.get("baseline")
    baseline_text = ""
    if baseline is not None:
        value = format_number(baseline["value"], str(baseline["unit"]))
        baseline_text = f"{baseline['title']}: {value}"
    ratio = figure.get("ratio")
    target = figure.get("target")
    passed = figure.get("passed")
    return (
        str(figure["title"]),
        str(figure.get("backend") or ""),
        format_number(figure.get("value"), str(figure["unit"])),
        baseline_text,
        "" if ratio is None else f"{ratio:.3g}x",
        "" if target is None else str(target["text"]),
        "" if target is None else {True: "pass", False: "MISS", None: "n/a"}[passed],
        str(figure.get("note") or ""),
    )


def format_table(results: Mapping[str, Any], *, markdown: bool = False) -> str:
    rows = [HEADERS, *(_row(figure) for figure in results["figures"].values())]
    errors: Sequence[Mapping[str, str]] = results.get("errors", [])
    problems = [f"ERROR {e['backend']} {e['phase']}: {e['error']}" for e in errors]
    problems += [f"ANOMALY {text}" for text in results.get("meta", {}).get("anomalies", [])]
    if markdown:
        rule = ("---:" if i in RIGHT_ALIGNED else "---" for i in range(len(HEADERS)))
        lines = [_markdown_line(row) for row in rows]
        lines.insert(1, "|" + "|".join(rule) + "|")
        if problems:
            lines += ["", *problems]
        return "\n".join(lines)
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADERS))]
    lines = [_line(row, widths) for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines + problems)


def _line(row: Sequence[str], widths: Sequence[int]) -> str:
    cells = (
        cell.rjust(widths[i]) if i in RIGHT_ALIGNED else cell.ljust(widths[i])
        for i, cell in enumerate(row)
    )
    return "  ".join(cells).rstrip()


def _markdown_line(row: Sequence[str]) -> str:
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |"


def write_json(results: Mapping[str, Any], directory: Path, stamp: str, prefix: str) -> Path:
    """Write `<prefix>latest.json` and `<prefix><stamp>.json`; the timestamped path."""
    directory.mkdir(parents=True, exist_ok=True)
    text = json.dumps(results, indent=2, ensure_ascii=False) + "\n"
    stamped = directory / f"{prefix}{stamp}.json"
    stamped.write_text(text)
    (directory / f"{prefix}latest.json").write_text(text)
    return stamped
