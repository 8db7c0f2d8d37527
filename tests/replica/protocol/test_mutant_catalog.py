"""`make mutants` tests nothing with a mutant whose text no longer occurs in the code, and
stops at one whose mutated code does not compile: every replacement in the catalog must match
exactly once, and the mutated files must still be Python (checked here, on every `make test`)."""

from __future__ import annotations

import pytest

from tests.mutants.catalog import MUTANTS, Mutant
from testsupport.harness import REPO_ROOT


@pytest.mark.parametrize("mutant", MUTANTS, ids=lambda m: m.name)
def test_each_mutant_still_applies_and_compiles(mutant: Mutant) -> None:
    assert mutant.apply(REPO_ROOT)  # raises ValueError where the catalog no longer matches
