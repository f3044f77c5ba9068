"""`make profile`: where a query's time goes, measured, before anything is optimized.

1. Steps (always). A registry and a node run in this process (SQLite, mutual TLS on loopback,
   the load-test policies); each named step of registry/routing.py and node/query.py, and the
   bank's own work, is timed over a few hundred queries at concurrency 1. The p50 of each step
   is printed; the steps run on one event loop here, so they include the others' interference.
2. Sampling (--sample). The registry and one node run as processes, as in `make bench`; while a
   bank loads them at concurrency 64, py-spy samples both (GIL holders, native frames included)
   and the CPU each process spends per query is read from /proc. The functions holding most
   samples are printed and the collapsed stacks kept in bench/profile/ (flame-graph input).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from harness import BANK, CHENGDU_FIRM, LOAD_TEST_CONSENT  # noqa: E402
from one_process import OneProcessNetwork  # noqa: E402

from xinyi.crypto.identity import Role  # noqa: E402

CATEGORIES = ["registration", "tax"]


def _timed(obj, name: str, into: dict[str, list[float]], label: str) -> None:
    """Record the duration of each call of obj.name under `label` (the wrapping --metrics-listen uses)."""
    from xinyi.metrics import time_calls

    time_calls(obj, [name], lambda _name, seconds, _error: into[label].append(seconds))


async def steps(queries: int) -> dict[str, float]:
    async with OneProcessNetwork() as net:
        return await _timed_steps(net, queries)


async def _timed_steps(net: OneProcessNetwork, queries: int) -> dict[str, float]:
    from node.query import STEPS as NODE_STEPS
    from registry.routing import STEPS as REGISTRY_STEPS

    registry, node, bank = net.registry, net.node, net.bank
    consent = (await net.enterprise.grant(BANK, "credit_assessment", CATEGORIES, 30, **LOAD_TEST_CONSENT)).consent_id
    await asyncio.sleep(0.5)

    times: dict[str, list[float]] = collections.defaultdict(list)
    for name in REGISTRY_STEPS:
        _timed(registry.router, name, times, f"registry.{name}")
    for name in NODE_STEPS:
        _timed(node.queries, name, times, f"node.{name}")
    _timed(node.queries, "answer", times, "node: all steps")
    _timed(registry.router, "route", times, "registry: all steps")
    import xinyi.client as client_module

    for name in ("build_query", "open_answer"):  # the bank's side, as BankClient calls them
        original = getattr(client_module, name)

        def wrapper(*a, _f=original, _n=name, **k):
            t = time.perf_counter()
            try:
                return _f(*a, **k)
            finally:
                times[f"bank.{_n}"].append(time.perf_counter() - t)
        setattr(client_module, name, wrapper)

    total = []
    for i in range(queries):
        t = time.perf_counter()
        result = await bank.query(CHENGDU_FIRM, CATEGORIES, "credit_assessment", consent)
        total.append(time.perf_counter() - t)
        assert result.nodes and result.nodes[0].verified, result.to_json()
    times["bank: whole query"] = total
    warm = queries // 5  # the first queries fill caches and channels
    return {k: statistics.median(v[warm:]) * 1000 for k, v in times.items()}


# Frames every sample passes through (the process's entry, the event loop, thread start-up):
# listing them would only push the informative ones off the list.
_PLUMBING = ("0x", "<frozen", "asyncio/", "_asynciomodule.c", "xinyi/cli/", "threading.py", "libpython",
             "concurrent/futures/thread.py")


def top_functions(collapsed: Path, n: int) -> list[tuple[float, str]]:
    """The functions in most samples (inclusive), from py-spy's collapsed stacks."""
    counts: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        if not line.strip():
            continue
        stack, count = line.rsplit(" ", 1)
        total += int(count)
        frames = {re.sub(r":\d+\)$", ")", f) for f in stack.split(";")}
        for frame in frames:
            if " (" in frame and not any(skip in frame for skip in _PLUMBING):
                counts[frame] += int(count)
    return [(100 * c / max(total, 1), f) for f, c in counts.most_common(n)]


async def sample(work: Path, seconds: float, out_dir: Path) -> dict:
    import run as bench_run

    from xinyi.client import BankClient, EnterpriseClient
    from xinyi.crypto.pki import Identity

    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        raise SystemExit("profile: py-spy is not installed (it comes with `pip install -e .[dev]`)")
    work.mkdir(parents=True, exist_ok=True)
    b = bench_run.Bench("quick", work, "")
    firms = b.seed_nodes(["310000"])
    net = b.start_network(["310000"])
    try:
        await b.wait_registered(net["registry"], 1)
        uscc = firms[1]
        enterprise = EnterpriseClient(Identity.load(b.identity(Role.ENTERPRISE, uscc)), net["registry"])
        bank = BankClient(Identity.load(b.identity(Role.BANK, bench_run.BANK)), net["registry"])
        await bank.register_institution()  # consents may name only institutions known to the network
        consent = (await enterprise.grant(BANK, "credit_assessment", ["tax"], 30, **LOAD_TEST_CONSENT)).consent_id
        await enterprise.close()
        await asyncio.sleep(0.5)

        async def query() -> None:
            result = await bank.query(uscc, ["tax"], "credit_assessment", consent)
            assert result.nodes[0].verified

        await bench_run.latency(query, 50)
        pids = {"node": b.procs.procs["node-310000"].pid, "registry": b.procs.procs["registry"].pid,
                "bank (this process)": os.getpid()}
        before = {k: bench_run.cpu_seconds(p) for k, p in pids.items()}
        started = time.perf_counter()
        rate = await bench_run.throughput(query, 64, seconds)
        wall = time.perf_counter() - started
        cpu = {k: (bench_run.cpu_seconds(p) - before[k]) / (rate * wall) * 1000 for k, p in pids.items()}
        # Then sampled, separately: py-spy slows what it samples, so it is not measured above.
        out_dir.mkdir(parents=True, exist_ok=True)
        spies = [subprocess.Popen([spy, "record", "--gil", "--native", "-r", "100", "-d", str(int(seconds)),
                                   "--format", "raw", "-o", str(out_dir / f"{name}.txt"), "-p", str(pids[name])],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for name in ("node", "registry")]
        await asyncio.sleep(0.5)
        await bench_run.throughput(query, 64, seconds)
        for s in spies:
            s.wait()
        await bank.close()
    finally:
        b.procs.stop()
    return {"queries_per_s": rate, "cpu_ms_per_query": cpu}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--sample", action="store_true", help="also sample the server processes with py-spy")
    parser.add_argument("--seconds", type=float, default=8.0, help="load time for --sample")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="xinyi-profile-"))
    try:
        figures = asyncio.run(steps(args.queries))
        print(f"\nWhere a query's time goes: p50 of each step over {args.queries} queries, concurrency 1, one process\n")
        for name, ms in figures.items():
            print(f"  {name:<28} {ms:8.3f} ms")
        if args.sample:
            out_dir = ROOT / "bench" / "profile"
            found = asyncio.run(sample(work / "net", args.seconds, out_dir))
            print(f"\nUnder load (concurrency 64, {found['queries_per_s']:.0f} queries/s): CPU per query")
            for name, ms in found["cpu_ms_per_query"].items():
                print(f"  {name:<28} {ms:8.2f} ms")
            for name in ("node", "registry"):
                print(f"\n{name}: functions in most samples (GIL held), inclusive; stacks in {out_dir / (name + '.txt')}")
                for share, function in top_functions(out_dir / f"{name}.txt", 25):
                    print(f"  {share:5.1f}%  {function}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
