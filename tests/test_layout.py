"""The rooms of `replica/` (its __init__.py says what each holds): imports flow one way, down
server -> chat -> replication -> storage -> protocol, with the root's two leaves (config,
errors) open to every room but the pure protocol core; and no module reaches into another
room's private `_names`."""

from __future__ import annotations

import ast
import re
import subprocess
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
        if isinstance(node, ast.ImportFrom) and node.level > 0:
            # (none in this package: absolute imports say which room they reach)
            found.append((node.lineno, "replica.<relative import>", []))
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
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


# -- names that point at code ---------------------------------------------------------------

REPO = REPLICA.parent
TOP = ("replica", "tests", "bench", "client", "eventlog", "projections", "testsupport", "chaos",
       "migrations", "docs", "protos")  # fmt: skip
PATH = re.compile(r"\b((?:" + "|".join(TOP) + r")/[\w/.-]+?\.(?:py|md|toml|proto))\b")
DOTTED = re.compile(r"(?<![\w./-])(replica(?:\.\w+)+)")


def _texts() -> list[Path]:
    files = subprocess.run(
        ["git", "ls-files", "*.py", "*.md", "Makefile"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return [REPO / f for f in files if (REPO / f).is_file()]


def _resolves(dotted: str) -> bool:
    """`replica.storage.writer.LogWriter` names a module (and a name defined in it)."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        base = REPO.joinpath(*parts[:cut])
        module = base.with_suffix(".py") if not base.is_dir() else base / "__init__.py"
        if module.is_file():
            rest = parts[cut:]
            if not rest:
                return True
            source = module.read_text()
            return re.search(rf"\b(class|def)\s+{rest[0]}\b|^\s*{rest[0]}\b\s*[:=]", source, re.M)
    return False


def _prose(path: Path) -> list[tuple[int, str]]:
    """(line, text) of what a reader reads as prose: a Python file's docstrings and comments,
    a Markdown file's code spans -- not code, where `replica.x` may be a variable's field."""
    text = path.read_text()
    if path.suffix != ".py":
        return [(n, " ".join(re.findall(r"`([^`]+)`", line))) for n, line in
                enumerate(text.splitlines(), 1)]  # fmt: skip
    found = []
    for node in ast.walk(ast.parse(text)):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
            value = body[0].value
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                for offset, line in enumerate(value.value.splitlines()):
                    found.append((value.lineno + offset, line))
    for n, line in enumerate(text.splitlines(), 1):
        if "#" in line:
            found.append((n, line[line.index("#") :]))
    return found


def test_no_stale_names() -> None:
    """Every file path named anywhere, and every `replica.` module path named in docstrings,
    comments and docs, exists (files were moved: a comment naming the old place misleads)."""
    stale = []
    for path in _texts():
        if path.resolve() == Path(__file__).resolve():
            continue
        where = path.relative_to(REPO)
        for n, line in enumerate(path.read_text().splitlines(), 1):
            for found in PATH.findall(line):
                if not (REPO / found).exists():
                    stale.append(f"{where}:{n}: {found}")
        for n, line in _prose(path):
            for found in DOTTED.findall(line):
                if not _resolves(found.rstrip(".")):
                    stale.append(f"{where}:{n}: {found}")
    assert stale == []


def test_the_cli_uses_only_the_librarys_public_names() -> None:
    """client/cli/ is built as any program would be: from what `client` exports (and the wire
    limits both sides share), never from the library's modules."""
    cli = REPO / "client" / "cli"
    found = []
    for path in sorted(cli.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                modules = [node.module]
                if node.module == "client":  # `from client import failover` reaches in too
                    modules = [f"client.{a.name}" for a in node.names if a.name.islower()]
            elif isinstance(node, ast.Import):
                modules = [a.name for a in node.names]
            else:
                continue
            for module in modules:
                top = module.split(".")[0]
                if top == "client" and module != "client" and not module.startswith("client.cli"):
                    found.append(f"{path.relative_to(REPO)}:{node.lineno}: {module}")
                if top == "protos" and module != "protos.wire":
                    found.append(f"{path.relative_to(REPO)}:{node.lineno}: {module}")
    assert found == []
