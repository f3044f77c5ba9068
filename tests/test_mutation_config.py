"""mutation.toml against the code as it is: every listed equivalent mutant still exists, once.

An equivalent is skipped by `make mutate` and `make mutate-quick`. Listed by what it changes (not by
line), it survives edits elsewhere in the file; when the code it names changes, this test says so
here, in `make test`, instead of the mutant coming back as a survivor in CI's mutation run or, worse,
a listing silently matching a different mutant.
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import mutate  # noqa: E402

from cosmic_ray.work_db import WorkDB, use_db  # noqa: E402

SETTINGS, MODULES, EQUIVALENTS = mutate.load_config()


def _mutants(path: str, tmp: Path) -> list:
    """Every mutant cosmic-ray makes of the file (its own `init`, nothing run)."""
    config, session = tmp / "c.toml", tmp / "s.sqlite"
    config.write_text(f'[cosmic-ray]\nmodule-path = "{path}"\ntimeout = 1\nexcluded-modules = []\n'
                      'test-command = "false"\n[cosmic-ray.distributor]\nname = "local"\n')
    subprocess.run([str(Path(sys.executable).parent / "cosmic-ray"), "init", str(config), str(session)],
                   cwd=ROOT, check=True, capture_output=True)
    with use_db(str(session), WorkDB.Mode.open) as db:
        return [w.mutations[0] for w in db.work_items]


@pytest.mark.parametrize("path", sorted({e.file for e in EQUIVALENTS}))
def test_each_listed_equivalent_names_exactly_one_mutant_of_the_code(path: str, tmp_path: Path):
    source = (ROOT / path).read_text()
    listed = [e for e in EQUIVALENTS if e.file == path]
    matched = Counter()
    for spec in _mutants(path, tmp_path):
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
