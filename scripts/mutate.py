"""Mutation testing of the security checks: cosmic-ray, one module at a time, each with its own tests.

    python scripts/mutate.py --jobs 2            # every listed module, two at a time (make mutate)
    python scripts/mutate.py --quick --jobs 2    # the fixed sample of the most critical checks (make mutate-quick)
    python scripts/mutate.py --module xinyi/crypto/envelope.py [--module ...]
    python scripts/mutate.py --survivors-of test-output/mutation/report-full.json   # re-run only the survivors
    python scripts/mutate.py --report-only    # the report of the sessions a run (finished or not) left

The modules, the tests that cover each, the check functions of the quick sample, the operators
left out and the mutants that are true equivalents are in mutation.toml (repository root).

The mutation engine is cosmic-ray (`cosmic-ray init` / `cosmic-ray exec`); this script only chooses
which of its mutants to run (marking the rest skipped in cosmic-ray's own session database) and
reads the results back. Cosmic-ray rewrites the module under test in place, so everything runs in
a copy of the tree under test-output/mutation/work/, never in the checkout.

Exit status: 0 when every mutant run was killed or is listed as equivalent; 1 when a mutant
survived; 2 when a module's tests fail on the real code (a baseline failure makes every result
meaningless).
"""

from __future__ import annotations

import argparse
import ast
import datetime as dt
import difflib
import json
import os
import queue
import re
import shlex
import shutil
import subprocess
import sys
import time
import tomllib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from cosmic_ray.mutating import mutate_code
from cosmic_ray.plugins import get_operator
from cosmic_ray.work_db import WorkDB, use_db
from cosmic_ray.work_item import MutationSpec, TestOutcome, WorkerOutcome, WorkResult

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "mutation.toml"
OUT = ROOT / "test-output" / "mutation"


@dataclass
class Module:
    path: str
    tests: list[str]
    checks: list[str]  # functions (qualified names or bare names) holding the security checks
    quick: list[str] = field(default_factory=list)  # the subset of checks sampled by --quick


@dataclass
class Equivalent:
    """A mutant that changes no behaviour, named by what it changes, not where: lines move, text stays."""
    file: str
    function: str  # cosmic-ray's definition name: the innermost function holding the mutant
    operator: str
    changes: tuple[str, ...]  # the report's "old  ->  new" text of the mutated line(s): one, or a list of variants
    reason: str


def load_config(path: Path = CONFIG) -> tuple[dict, list[Module], list[Equivalent]]:
    cfg = tomllib.loads(path.read_text())
    modules = [Module(path=m["path"], tests=list(m["tests"]), checks=list(m.get("checks", [])),
                      quick=list(m.get("quick", []))) for m in cfg["module"]]
    equivalents = []
    for e in cfg.get("equivalent", []):
        if not e.get("reason", "").strip():
            raise SystemExit(f"mutation.toml: the equivalent {e.get('change') or e} has no reason")
        missing = {"file", "function", "operator", "change"} - set(e)
        if missing:
            raise SystemExit(f"mutation.toml: the equivalent {e.get('change') or e} has no {', '.join(sorted(missing))} "
                             "(copy function, operator and change from the report's line of the survivor)")
        changes = (e["change"],) if isinstance(e["change"], str) else tuple(e["change"])
        equivalents.append(Equivalent(file=e["file"], function=e["function"], operator=e["operator"],
                                      changes=changes, reason=e["reason"]))
    return cfg.get("settings", {}), modules, equivalents


def _function_spans(source: str) -> dict[str, tuple[int, int]]:
    """Each function's qualified name (Class.method) -> its first and last line."""
    spans: dict[str, tuple[int, int]] = {}

    def walk(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    spans[name] = (child.lineno, child.end_lineno or child.lineno)
                walk(child, name + ".")
    walk(ast.parse(source), "")
    return spans


def _annotation_spans(source: str) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """Where the type annotations are: a mutant there (`str | None` -> `str & None`) changes no check."""
    spans = []

    def mark(node: ast.AST | None) -> None:
        if node is not None:
            spans.append(((node.lineno, node.col_offset), (node.end_lineno, node.end_col_offset)))

    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            mark(node.returns)
            for a in node.args.args + node.args.kwonlyargs + node.args.posonlyargs:
                mark(a.annotation)
            mark(node.args.vararg.annotation if node.args.vararg else None)
            mark(node.args.kwarg.annotation if node.args.kwarg else None)
        elif isinstance(node, ast.AnnAssign):
            mark(node.annotation)
    return spans


def _keyword_markers(source: str) -> set[tuple[int, int]]:
    """Positions of a bare `*` in a def's parameters, which cosmic-ray mutates as if it were a product.

    `/` in its place makes the parameters before it positional-only and the keyword-only ones
    ordinary: every call that was legal stays legal and means the same, so the mutant is equivalent.
    """
    lines = source.splitlines()
    spots = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.args.kwonlyargs and not node.args.vararg:
            for row in range(node.lineno, node.body[0].lineno):
                for col, ch in enumerate(lines[row - 1]):
                    if ch == "*" and lines[row - 1][col:col + 2] != "**" and (col == 0 or lines[row - 1][col - 1] != "*"):
                        spots.add((row, col))
    return spots


def _change_of(source: str, spec: MutationSpec) -> str:
    """What a mutant changes, as the report prints it ("old  ->  new"), found without running it."""
    operator = get_operator(spec.operator_name)(**spec.operator_args)
    mutated = mutate_code(source, operator, spec.occurrence)
    if mutated is None:
        return ""
    return _describe("\n".join(difflib.unified_diff(source.split("\n"), mutated.split("\n"), lineterm="")))


def _equivalent_for(spec: MutationSpec, listed: list[Equivalent], source: str) -> tuple[Equivalent, str] | None:
    """The listed equivalent this mutant is, and which of its changes, or None."""
    candidates = [e for e in listed if e.operator == spec.operator_name and e.function == spec.definition_name]
    if not candidates:
        return None
    change = _change_of(source, spec)
    return next(((e, change) for e in candidates if change in e.changes), None)


def _in_checks(line: int, names: list[str], spans: dict[str, tuple[int, int]]) -> bool:
    for name in names:
        for qual, (first, last) in spans.items():
            if (qual == name or qual.endswith("." + name) or qual.startswith(name + ".")) and first <= line <= last:
                return True
    return False


def _copy_tree(dest: Path) -> None:
    """A copy of the tracked files as they are in the working tree (uncommitted edits included)."""
    if dest.exists():
        shutil.rmtree(dest)
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           check=True, capture_output=True).stdout.decode().split("\0")
    for name in filter(None, files):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    # Certificates and generated files the tests need but git ignores.
    certs = ROOT / "certs"
    if certs.is_dir():
        shutil.copytree(certs, dest / "certs", dirs_exist_ok=True)


def _test_command(settings: dict, module: Module) -> str:
    args = settings.get("pytest_args", ["-x", "-q", "-p", "no:cacheprovider"])
    # Bytecode is not written, so a mutant's .pyc can never be taken for the real module's (or the reverse).
    return " ".join(["env", "PYTHONDONTWRITEBYTECODE=1", "PYTHONPATH=.", shlex.quote(sys.executable), "-m", "pytest",
                     *map(shlex.quote, args), *map(shlex.quote, module.tests)])


def _describe(diff: str | None) -> str:
    if not diff:
        return ""
    minus = [ln[1:].strip() for ln in diff.splitlines() if ln.startswith("-") and not ln.startswith("---")]
    plus = [ln[1:].strip() for ln in diff.splitlines() if ln.startswith("+") and not ln.startswith("+++")]
    return f"{' / '.join(minus)}  ->  {' / '.join(plus)}"


def run_module(settings: dict, module: Module, equivalents: list[Equivalent], work: Path, *, quick: bool,
               sample_every: int, dry_run: bool = False, only: set[tuple] | None = None) -> dict:
    # Each kind of run keeps its own session, so that a check of survivors never clobbers a full run.
    slug = module.path.replace("/", "_").removesuffix(".py") + \
        ("-quick" if quick else "-survivors" if only is not None else "")
    session = OUT / f"{slug}.sqlite"
    config = OUT / f"{slug}.toml"
    timeout = float(settings.get("timeout", 120))
    test_command = _test_command(settings, module)
    config.write_text(
        "[cosmic-ray]\n"
        f"module-path = {json.dumps(module.path)}\n"
        f"timeout = {timeout}\n"
        "excluded-modules = []\n"
        f"test-command = {json.dumps(test_command)}\n"
        "[cosmic-ray.distributor]\nname = \"local\"\n")
    session.unlink(missing_ok=True)
    started = time.monotonic()

    # The real code must pass its tests, else every mutant looks killed.
    base = subprocess.run(test_command, shell=True, cwd=work, capture_output=True, text=True, timeout=timeout * 3)
    baseline_s = time.monotonic() - started
    if base.returncode != 0:
        print(f"{module.path}: its tests fail on the real code:\n{base.stdout[-3000:]}{base.stderr[-2000:]}")
        return {"module": module.path, "baseline_failed": True}

    subprocess.run(["cosmic-ray", "init", str(config), str(session)], cwd=work, check=True,
                   env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"})

    source = (work / module.path).read_text()
    spans = _function_spans(source)
    annotations = _annotation_spans(source)
    markers = _keyword_markers(source)
    leave_out = [re.compile(p) for p in settings.get("exclude_operators", [])]
    scope = module.quick if quick else module.checks
    mine = [e for e in equivalents if e.file == module.path]
    equivalent_of: dict[str, tuple[Equivalent, str]] = {}
    skipped: list[str] = []
    chosen: list[str] = []
    with use_db(str(session), WorkDB.Mode.open) as db:
        items = sorted(db.work_items, key=lambda w: (w.mutations[0].start_pos, w.mutations[0].operator_name,
                                                     w.mutations[0].occurrence))
        for item in items:
            m = item.mutations[0]
            line, col = m.start_pos
            if any(p.search(m.operator_name) for p in leave_out) or (line, col) in markers \
                    or any(a <= (line, col) < b for a, b in annotations) or not _in_checks(line, scope, spans):
                skipped.append(item.job_id)
                continue
            eq = _equivalent_for(m, mine, source) if mine else None
            if eq is not None:
                if eq in equivalent_of.values():
                    raise SystemExit(f"mutation.toml: the equivalent {eq[1]!r} in {eq[0].function} matches more "
                                     "than one mutant (the same change twice in one function); each must be judged "
                                     "on its own: rewrite one of the two lines")
                equivalent_of[item.job_id] = eq
                skipped.append(item.job_id)
                continue
            if only is not None and (module.path, line, col, m.operator_name, m.occurrence) not in only:
                skipped.append(item.job_id)
                continue
            chosen.append(item.job_id)
        if quick and sample_every > 1:
            # A fixed sample: every Nth mutant in source order, the same each run.
            skipped += [j for i, j in enumerate(chosen) if i % sample_every]
            chosen = chosen[::sample_every]
        db.set_multiple_results(skipped, WorkResult(worker_outcome=WorkerOutcome.SKIPPED))
    if not quick and only is None:
        for e in mine:
            for change in e.changes:
                if (e, change) not in equivalent_of.values():
                    print(f"{module.path}: the equivalent listed in mutation.toml as {e.operator} in {e.function}: "
                          f"{change!r} matches no mutant any more (the code changed): remove it", flush=True)
    print(f"{module.path}: {len(chosen)} mutants to run ({len(equivalent_of)} listed as equivalent), "
          f"baseline {baseline_s:.1f}s", flush=True)
    if dry_run:
        return {"module": module.path, "killed": 0, "survived": [], "not_run": [], "mutants": len(chosen),
                "equivalent": [], "seconds": round(time.monotonic() - started, 1)}

    subprocess.run(["cosmic-ray", "exec", str(config), str(session)], cwd=work, check=True,
                   env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"})

    return collect(module, session, list(equivalent_of.values()), time.monotonic() - started)


def collect(module: Module, session: Path, equivalent: list[tuple[Equivalent, str]], seconds: float) -> dict:
    """The outcome of each mutant of a session that was not skipped; those not run yet are counted apart."""
    killed, survived, other = [], [], []
    with use_db(str(session), WorkDB.Mode.open) as db:
        specs = {w.job_id: w.mutations[0] for w in db.work_items}
        done = set()
        for job_id, result in db.results:
            done.add(job_id)
            if result.worker_outcome == WorkerOutcome.SKIPPED:
                continue
            m = specs[job_id]
            row = {"file": module.path, "line": m.start_pos[0], "col": m.start_pos[1], "operator": m.operator_name,
                   "occurrence": m.occurrence, "function": m.definition_name, "change": _describe(result.diff),
                   "job_id": job_id}
            if result.worker_outcome != WorkerOutcome.NORMAL:
                # The worker could not run it (an exception in cosmic-ray itself): neither killed nor survived.
                other.append({**row, "outcome": result.worker_outcome.value})
            elif result.test_outcome == TestOutcome.SURVIVED:
                survived.append(row)
            else:
                # Which test failed first (pytest -x): the evidence that a test kills this mutant.
                failed = re.search(r"^_+ (?:ERROR at \w+ of )?(test\S*) _+$", result.output or "", re.M)
                killed.append({**row, "killed_by": failed.group(1) if failed else "(collection or import error)"})
        pending = len(set(specs) - done)
    return {"module": module.path, "killed": len(killed), "killed_list": killed, "survived": survived, "not_run": other,
            "pending": pending, "equivalent": [{"function": e.function, "operator": e.operator, "change": change,
                                                "reason": e.reason} for e, change in equivalent],
            "mutants": len(killed) + len(survived) + len(other) + pending, "seconds": round(seconds, 1)}


def _survivors(path: Path) -> set[tuple]:
    """(file, line, col, operator, occurrence) of each survivor in a report's JSON or a cosmic-ray session."""
    if path.suffix == ".sqlite":  # a session still running or cut short: its survivors so far
        with use_db(str(path), WorkDB.Mode.open) as db:
            specs = {w.job_id: w.mutations[0] for w in db.work_items}
            return {(str(m.module_path), *m.start_pos, m.operator_name, m.occurrence)
                    for job_id, r in db.results if r.test_outcome == TestOutcome.SURVIVED
                    for m in [specs[job_id]]}
    return {(s["file"], s["line"], s["col"], s["operator"], s["occurrence"])
            for r in json.loads(path.read_text()) for s in r.get("survived", [])}


def _longest_first(modules: list[Module]) -> list[Module]:
    """The modules by their time in the last full run, longest first (unknown ones first of all)."""
    try:
        seconds = {r["module"]: r.get("seconds", 0) for r in json.loads((OUT / "report-full.json").read_text())}
    except (OSError, ValueError):
        return list(modules)
    return sorted(modules, key=lambda m: -seconds.get(m.path, float("inf")))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the fixed sample of mutation.toml's quick checks")
    ap.add_argument("--module", action="append", help="only this module (repeatable)")
    ap.add_argument("--survivors-of", type=Path, metavar="REPORT_JSON",
                    help="run only the mutants that survived in that earlier report (to check new tests kill them)")
    ap.add_argument("--report-only", action="store_true",
                    help="run nothing: report from the sessions an earlier (or a running) run left in test-output/mutation")
    ap.add_argument("--dry-run", action="store_true", help="count the mutants that would run, run none")
    ap.add_argument("--jobs", type=int, default=1, metavar="N",
                    help="modules mutated side by side, each in its own copy of the tree (default 1)")
    args = ap.parse_args(argv)
    settings, modules, equivalents = load_config()
    if args.module:
        unknown = set(args.module) - {m.path for m in modules}
        if unknown:
            ap.error(f"--module: not in mutation.toml: {', '.join(sorted(unknown))}")
        modules = [m for m in modules if m.path in args.module]
    if args.quick:
        modules = [m for m in modules if m.quick]
    OUT.mkdir(parents=True, exist_ok=True)
    if args.report_only:
        results = []
        for module in modules:
            slug = module.path.replace("/", "_").removesuffix(".py") + ("-quick" if args.quick else "")
            if (OUT / f"{slug}.sqlite").exists():
                results.append(collect(module, OUT / f"{slug}.sqlite",
                                       [(e, c) for e in equivalents if e.file == module.path for c in e.changes], 0.0))
        return report(results, quick=args.quick, name="quick" if args.quick else "full")
    only = None
    if args.survivors_of:
        only = _survivors(args.survivors_of)
        modules = [m for m in modules if any(o[0] == m.path for o in only)]
    # Cosmic-ray rewrites the module under test in place, so each job mutates in its own copy of
    # the tree (and so do two runs side by side). A job takes the next module when it is free;
    # the longest modules of the last full run go first, so the jobs end close together.
    jobs = max(1, min(args.jobs, len(modules)))
    copies = [OUT / f"work-{os.getpid()}-{j}" for j in range(jobs)]
    for work in copies:
        _copy_tree(work)
    free: queue.SimpleQueue[Path] = queue.SimpleQueue()
    for work in copies:
        free.put(work)

    def run(module: Module) -> dict:
        work = free.get()
        try:
            return run_module(settings, module, equivalents, work, quick=args.quick,
                              sample_every=int(settings.get("quick_sample_every", 1)), dry_run=args.dry_run, only=only)
        finally:
            free.put(work)

    order = _longest_first(modules)
    with ThreadPoolExecutor(jobs) as pool:
        done = {m.path: r for m, r in zip(order, pool.map(run, order))}
    results = [done[m.path] for m in modules]  # reported in mutation.toml's order
    for work in copies:
        shutil.rmtree(work, ignore_errors=True)
    name = ("quick" if args.quick else "survivors" if args.survivors_of else "full") + \
        ("-" + "+".join(m.replace("/", "_").removesuffix(".py") for m in args.module) if args.module else "")
    return report(results, quick=args.quick, name=name)


def report(results: list[dict], *, quick: bool, name: str) -> int:
    lines = [f"Mutation testing ({'quick sample' if quick else 'full run'}), "
             f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC, cosmic-ray", ""]
    lines.append(f"{'module':36} {'mutants':>7} {'killed':>7} {'survived':>8} {'equiv':>5} {'ratio':>7} {'time':>7}")
    total_k = total_s = 0
    failed = False
    for r in results:
        if r.get("baseline_failed"):
            lines.append(f"{r['module']:36} baseline FAILED: its tests fail on the real code")
            failed = True
            continue
        k, s = r["killed"], len(r["survived"])
        total_k += k
        total_s += s
        ratio = f"{100 * k / (k + s):.1f}%" if k + s else "-"
        pending = f"  ({r['pending']} not run yet)" if r.get("pending") else ""
        lines.append(f"{r['module']:36} {r['mutants']:>7} {k:>7} {s:>8} {len(r['equivalent']):>5} {ratio:>7} "
                     f"{r['seconds']:>6.0f}s{pending}")
    if total_k + total_s:
        lines.append(f"{'overall':36} {'':>7} {total_k:>7} {total_s:>8} {'':>5} "
                     f"{100 * total_k / (total_k + total_s):>6.1f}%")
    lines += ["", "Surviving mutants (file:line:col operator [function]: change):"]
    for r in results:
        for s in r.get("survived", []):
            lines.append(f"  {s['file']}:{s['line']}:{s['col']} {s['operator']} #{s['occurrence']} "
                         f"[{s['function']}]: {s['change']}")
    if not any(r.get("survived") for r in results):
        lines.append("  none")
    if "survivors" in name:
        lines += ["", "Killed (first failing test):"]
        lines += [f"  {k['file']}:{k['line']}:{k['col']} {k['operator']} #{k['occurrence']}: {k['killed_by']}"
                  for r in results for k in r.get("killed_list", [])]
    not_run = [n for r in results for n in r.get("not_run", [])]
    if not_run:
        lines += ["", "Mutants cosmic-ray could not run:"]
        lines += [f"  {n['file']}:{n['line']}:{n['col']} {n['operator']}: {n['outcome']}" for n in not_run]
    text = "\n".join(lines)
    print(text)
    (OUT / f"report-{name}.txt").write_text(text + "\n")
    (OUT / f"report-{name}.json").write_text(json.dumps(results, indent=1))
    if failed:
        return 2
    return 1 if total_s else 0


if __name__ == "__main__":
    sys.exit(main())
