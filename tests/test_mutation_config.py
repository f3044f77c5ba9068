"""mutation.toml against the code as it is: every listed equivalent mutant still exists, once.

An equivalent is skipped by `make mutate` and `make mutate-quick`. Listed by what it changes (not by
line), it survives edits elsewhere in the file; when the code it names changes, this test says so
here, in `make test`, instead of the mutant coming back as a survivor in CI's mutation run or, worse,
a listing silently matching a different mutant.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import mutate  # noqa: E402

from cosmic_ray.ast import ast_nodes, get_ast_from_path  # noqa: E402
from cosmic_ray.ast.ast_query import ASTQuery  # noqa: E402
from cosmic_ray.plugins import get_operator  # noqa: E402
from cosmic_ray.work_item import MutationSpec  # noqa: E402

SETTINGS, MODULES, EQUIVALENTS = mutate.load_config()


def _mutants(path: str, operators: set[str]) -> list[MutationSpec]:
    """The mutants cosmic-ray's `init` makes of the file with these operators, numbered as it
    numbers them (cosmic_ray.commands.init): only the operators listed, not all ninety."""
    tree = get_ast_from_path(ROOT / path)
    specs = []
    for name in sorted(operators):
        operator = get_operator(name)()
        positions = ((node, start, end) for node in ast_nodes(tree) for start, end in operator.mutation_positions(node))
        for occurrence, (node, start, end) in enumerate(positions):
            specs.append(MutationSpec(module_path=path, operator_name=name, occurrence=occurrence, start_pos=start,
                                      end_pos=end, definition_name=ASTQuery(node).get_definition_name()))
    return specs


@pytest.mark.parametrize("path", sorted({e.file for e in EQUIVALENTS}))
def test_each_listed_equivalent_names_exactly_one_mutant_of_the_code(path: str):
    source = (ROOT / path).read_text()
    listed = [e for e in EQUIVALENTS if e.file == path]
    matched = Counter()
    for spec in _mutants(path, {e.operator for e in listed}):
        hit = mutate._equivalent_for(spec, listed, source)
        if hit is not None:
            matched[(hit[0].function, hit[0].operator, hit[1])] += 1
    wrong = [f"{e.function} {e.operator}: {change!r} matches {matched[(e.function, e.operator, change)]} mutants"
             for e in listed for change in e.changes if matched[(e.function, e.operator, change)] != 1]
    assert not wrong, "mutation.toml: update or remove these equivalents:\n" + "\n".join(wrong)


def test_every_module_and_check_listed_exists():
    """A check renamed or a module moved would otherwise just drop out of the mutation run."""
    for module in MODULES:
        spans = mutate._function_spans((ROOT / module.path).read_text())
        for name in (*module.checks, *module.quick):
            assert any(q == name or q.endswith("." + name) or q.startswith(name + ".") for q in spans), \
                f"mutation.toml: {module.path} has no function {name}"
        for test in module.tests:
            if not test.startswith("-") and test.startswith("tests/"):
                assert (ROOT / test.split("::")[0]).is_file(), f"mutation.toml: {module.path}: no test file {test}"
