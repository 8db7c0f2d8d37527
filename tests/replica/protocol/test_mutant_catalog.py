"""`make mutants` tests nothing with a mutant whose text no longer occurs in the code, and
stops at one whose mutated code does not compile: every replacement in the catalog must match
exactly once, and the mutated files must still be Python (checked here, on every `make test`)."""

from __future__ import annotations

import pytest

from tests.mutants.catalog import MUTANTS, Mutant
from testsupport.harness import REPO_ROOT


@pytest.mark.parametrize("mutant", MUTANTS, ids=lambda m: m.name)
def test_each_mutant_still_matches_the_code(mutant: Mutant) -> None:
    for file, old, new in mutant.replacements:
        text = (REPO_ROOT / file).read_text()
        assert text.count(old) == 1, f"{mutant.name}: {old!r} occurs {text.count(old)}x in {file}"
        assert old != new


@pytest.mark.parametrize("mutant", MUTANTS, ids=lambda m: m.name)
def test_each_mutant_compiles(mutant: Mutant) -> None:
    mutated: dict[str, str] = {}
    for file, old, new in mutant.replacements:
        text = mutated.get(file, (REPO_ROOT / file).read_text())
        mutated[file] = text.replace(old, new)
    for file, text in mutated.items():
        compile(text, file, "exec")  # raises SyntaxError (an IndentationError, say)
