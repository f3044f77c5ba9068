"""The layout is the architecture: imports run one way, and the domain core has no gRPC in it.

    (cli, web) -> client -> (node, registry, rpc) -> compute -> privacy -> audit -> crypto -> records

with the few top-level modules placed between them (see LAYERS). A module may import its own
part and any part below it, never one above. Imports under `if TYPE_CHECKING:` are left out:
they are type hints, not dependencies at run time.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Lowest first. A part is a package (xinyi.audit) or a top-level module (xinyi.store).
LAYERS: list[tuple[str, ...]] = [
    ("xinyi.errors", "xinyi.clock", "xinyi.config", "xinyi.telemetry", "xinyi.metrics", "xinyi.db", "xinyi.migrations",
     "xinyi.cache", "xinyi.v1"),
    ("xinyi.records",),
    ("xinyi.crypto",),
    ("xinyi.policy", "xinyi.directory", "xinyi.relay"),
    ("xinyi.audit",),
    ("xinyi.privacy", "xinyi.store"),
    ("xinyi.compute", "xinyi.query", "xinyi.registration", "xinyi.quality"),
    ("xinyi.rpc", "node", "registry"),
    ("xinyi.client", "xinyi.auditing"),
    ("xinyi.cli", "xinyi.web"),
]
RANK = {part: rank for rank, parts in enumerate(LAYERS) for part in parts}
# Peers on one layer that must still not lean on each other: the two services share the library only.
# The web app is a front end beside the CLI: the CLI starts it, it never reaches into the CLI.
APART = {("node", "registry"), ("registry", "node"), ("xinyi.web", "xinyi.cli")}

# The domain core: what a query means, independent of how it travels.
CORE = ("xinyi.records", "xinyi.crypto", "xinyi.audit", "xinyi.privacy", "xinyi.compute", "xinyi.policy",
        "xinyi.store", "xinyi.query", "xinyi.quality")


def part_of(module: str) -> str | None:
    """The part a dotted module name belongs to: its longest prefix that LAYERS names."""
    pieces = module.split(".")
    for n in range(len(pieces), 0, -1):
        candidate = ".".join(pieces[:n])
        if candidate in RANK:
            return candidate
    return None


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _type_checking_only(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, imported module) for every import in the file, at any depth, except type-only ones."""
    found: list[tuple[int, str]] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if _type_checking_only(child):
                for other in child.orelse:
                    visit(other)
                continue
            if isinstance(child, ast.Import):
                found.extend((child.lineno, alias.name) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                assert not child.level, f"{path}:{child.lineno}: use absolute imports, as the rest of the code does"
                # `from xinyi import audit` imports the part xinyi.audit, not the package xinyi
                found.extend((child.lineno, f"{child.module}.{alias.name}") for alias in child.names)
            visit(child)

    visit(ast.parse(path.read_text(), str(path)))
    return found


def sources() -> list[Path]:
    files = [p for d in ("xinyi", "node", "registry") for p in (ROOT / d).rglob("*.py")]
    return sorted(p for p in files if "/v1/" not in str(p) and "_policies" not in str(p))


def test_every_module_belongs_to_a_layer():
    homeless = [module_name(p) for p in sources() if part_of(module_name(p)) is None and module_name(p) != "xinyi"]
    assert not homeless, f"place these in LAYERS (tests/test_layout.py): {homeless}"


def test_imports_run_one_way():
    upward = []
    for path in sources():
        here = part_of(module_name(path))
        if here is None:
            continue
        for line, target in imports(path):
            there = part_of(target)
            if there is not None and (RANK[there] > RANK[here] or (here, there) in APART):
                upward.append(f"{path.relative_to(ROOT)}:{line}: {here} (layer {RANK[here]}) imports {there} (layer {RANK[there]})")
    assert not upward, "imports that run upward:\n" + "\n".join(upward)


def test_command_modules_do_not_import_each_other():
    """Each `xinyi` command group is a module of its own; they share xinyi.cli.common only."""
    crossing = []
    for path in sorted((ROOT / "xinyi" / "cli").glob("*.py")):
        if path.name in ("main.py", "__main__.py", "__init__.py"):
            continue
        for line, target in imports(path):
            if target.startswith("xinyi.cli.") and not target.startswith("xinyi.cli.common"):
                crossing.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
    assert not crossing, "\n".join(crossing)


@pytest.mark.parametrize("part", CORE)
def test_the_domain_core_imports_no_grpc(part):
    base = ROOT.joinpath(*part.split("."))
    files = sorted(base.rglob("*.py")) if base.is_dir() else [base.with_suffix(".py")]
    assert files
    grpc_imports = [f"{p.relative_to(ROOT)}:{line}" for p in files for line, target in imports(p)
                    if target == "grpc" or target.startswith("grpc.")]
    assert not grpc_imports, f"{part} is domain code; gRPC belongs in xinyi.rpc, node/ and registry/: {grpc_imports}"


def test_each_part_says_what_it_is_for_and_what_it_may_import():
    for package in ("records", "crypto", "audit", "privacy", "compute", "cli"):
        doc = ast.get_docstring(ast.parse((ROOT / "xinyi" / package / "__init__.py").read_text()))
        assert doc and "import" in doc, f"xinyi/{package}/__init__.py needs a docstring naming what it may import"


def test_the_checker_sees_an_upward_import(tmp_path):
    """The rule above is only as good as its parser: an upward import hidden in a function is found,
    and one under TYPE_CHECKING is not."""
    probe = ROOT / "xinyi" / "records" / "_layout_probe.py"
    probe.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from xinyi.store import BaseStore\n"
                     "def f():\n    from xinyi.privacy import consent\n    return consent\n")
    try:
        found = [(line, part_of(t)) for line, t in imports(probe)]
    finally:
        probe.unlink()
    assert (5, "xinyi.privacy") in found
    assert all(part != "xinyi.store" for _, part in found)
