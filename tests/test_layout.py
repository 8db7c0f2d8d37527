"""The rooms of `replica/` (its __init__.py says what each holds): imports flow one way, down
server -> chat -> replication -> storage -> protocol, with the root's two leaves (config,
errors) open to every room but the pure protocol core; and no module reaches into another
room's private `_names`."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPLICA = Path(__file__).resolve().parents[1] / "replica"
ORDER = ("protocol", "storage", "replication", "chat", "server")  # each may import those before it
LEAVES = ("config", "errors")  # at the root: may import nothing of replica
ENTRY_POINTS = ("__main__", "launcher")  # at the root: may import anything


def room_of(module: str) -> str:
    """`replica.storage.writer` -> "storage"; `replica.config` -> "config"."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def allowed(room: str) -> set[str]:
    if room in ENTRY_POINTS:
        return set(ORDER) | set(LEAVES) | set(ENTRY_POINTS)
    if room in LEAVES:
        return {room}
    if room == "protocol":
        return {"protocol"}
    return set(ORDER[: ORDER.index(room) + 1]) | set(LEAVES)


def imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line, module, names imported from it) for every import of `replica...` in `path`."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "replica":
                for alias in node.names:
                    found.append((node.lineno, f"replica.{alias.name}", []))
            elif node.module.startswith("replica."):
                found.append((node.lineno, node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("replica."):
                    found.append((node.lineno, alias.name, []))
    return found


def module_name(path: Path, root: Path) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def violations(root: Path = REPLICA) -> list[str]:
    found = []
    for path in sorted(root.rglob("*.py")):
        me = module_name(path, root)
        room = room_of(me) if "." in me else ""
        if me.count(".") == 1 and room not in ORDER:
            room = me.split(".")[1]  # a root module: a leaf or an entry point
        if not room:
            continue  # replica/__init__.py
        for line, target, names in imports(path):
            there = room_of(target)
            where = f"{path.relative_to(root.parent)}:{line}"
            if there not in allowed(room):
                found.append(f"{where}: {room}/ may not import {target}")
            if there != room:
                private = [p for p in target.split(".") if p.startswith("_")]
                private += [n for n in names if n.startswith("_")]
                if private:
                    found.append(f"{where}: reaches into {target}'s {', '.join(private)}")
    return found


def test_imports_follow_the_rooms_order() -> None:
    assert violations() == []


def test_every_room_says_what_it_holds() -> None:
    for room in ORDER:
        init = REPLICA / room / "__init__.py"
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and len(doc) > 100, f"{init} needs a docstring: what it owns, what it may import"
    flat = sorted(p.stem for p in REPLICA.glob("*.py") if p.stem not in ("__init__",))
    assert flat == sorted({*LEAVES, *ENTRY_POINTS}), f"replica/ holds more than its rooms: {flat}"


@pytest.mark.parametrize(
    ("room", "line", "found"),
    [
        ("storage", "from replica.chat.service import ChatService", "storage/ may not import"),
        ("protocol", "from replica.errors import Unavailable", "protocol/ may not import"),
        ("chat", "from replica.replication.peers import _fresh", "reaches into"),
        ("replication", "import replica.server.node", "replication/ may not import"),
    ],
)
def test_a_forbidden_import_is_found(tmp_path: Path, room: str, line: str, found: str) -> None:
    """The rule fails when one forbidden import is added (on a copy of the package)."""
    copy = tmp_path / "replica"
    (copy / room).mkdir(parents=True)
    (copy / "__init__.py").write_text("")
    (copy / room / "__init__.py").write_text("")
    (copy / room / "mod.py").write_text(line + "\n")
    (problem,) = violations(copy)
    assert found in problem and "mod.py:1" in problem
