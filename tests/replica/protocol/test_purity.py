"""The protocol core decides and does nothing else: its package imports no threads, sockets,
gRPC, SQLAlchemy, clocks, randomness or logging, and nothing of the rest of the project."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import replica.protocol

PACKAGE = Path(replica.protocol.__file__).parent
ALLOWED = {"__future__", "collections", "collections.abc", "dataclasses", "enum", "math", "typing"}
FORBIDDEN = ("threading", "socket", "grpc", "sqlalchemy", "random", "logging", "time", "asyncio")


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None and node.level == 0:
            names.add(node.module)
    return names


def test_the_core_imports_only_plain_python_and_itself() -> None:
    modules = sorted(PACKAGE.glob("*.py"))
    assert len(modules) >= 6
    for path in modules:
        outside = {
            name
            for name in imported_modules(path)
            if name not in ALLOWED and not name.startswith("replica.protocol")
        }
        assert not outside, f"{path.name} imports {sorted(outside)}"


def test_importing_the_core_loads_none_of_the_io_modules() -> None:
    probe = (
        "import sys; import replica.protocol; "
        f"print(','.join(m for m in {FORBIDDEN!r} if m in sys.modules and m != 'time'))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        check=True,
        cwd=PACKAGE.parent.parent,
    ).stdout.strip()
    # `time` is loaded by the interpreter itself before any import; the AST check above
    # covers the package's own imports of it.
    assert loaded == "", f"importing replica.protocol loads {loaded}"
