"""`make soak`: does memory stay flat under steady load with ever new consents?

Starts the registry and one node as separate processes (`xinyi registry serve`, `xinyi node
serve`, as in the demo), then for --minutes (10 by default) an enterprise grants consents and a
bank asks once under each, about --rate queries a second: every query names a consent never
seen before, which is what made the servers' per-consent caches grow without end. Each minute
the resident memory (RSS) of both servers is printed, with their audit log sizes; at the end,
the growth per minute after warm-up (6 minutes, or the first minute of a shorter run): the
consent caches fill up to their bounds and the replay guard fills its five-minute window during
warm-up, and are flat after it. Nothing is asserted; not part of `make test` or CI.

    python bench/soak.py [--minutes 10] [--rate 50] [--db postgresql+psycopg://USER@HOST/DB]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))  # this checkout's code, as the servers it starts run it

from harness import BANK, CHENGDU_FIRM, SEED  # noqa: E402
from processes import NODE, Proc, free_port, network_identities, wait_registered  # noqa: E402

from node.store import NodeStore  # noqa: E402
from xinyi.audit.checkpoint import parse_note  # noqa: E402
from xinyi.client import AuditClient, BankClient, ClientError, EnterpriseClient  # noqa: E402
from xinyi.clock import now_ms  # noqa: E402
from xinyi.crypto.identity import Principal, Role  # noqa: E402

CATEGORIES = ["registration", "tax"]
PURPOSE = "credit_assessment"
GRANTERS = 4        # concurrent grants: granting costs the registry more than a query does
ASKERS = 8          # concurrent queries
WARM_UP_MINUTES = 6  # the replay window (5 min) and the caches filled; growth is counted after this
READY_CONSENTS = 200  # granted, not yet asked: the queue between the two


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def log(msg: str) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def database(base: str | None, work: Path, name: str) -> str:
    if base is None:
        return f"sqlite:///{work / (name + '.db')}"
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    schema = f"soak_{name}_{uuid.uuid4().hex[:8]}"
    engine = create_engine(base)
    with engine.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    engine.dispose()
    return make_url(base).update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(hide_password=False)


async def soak(minutes: float, rate: float, db: str | None, work: Path) -> int:
    logs = work / "logs"
    logs.mkdir()
    ids, dirs = network_identities(work / "certs")
    node_db, registry_db = database(db, work, "node"), database(db, work, "registry")
    store = NodeStore(node_db)
    try:
        store.create_schema()
        store.add_records([r for r in SEED["510100"] + SEED["510000"] if r.uscc == CHENGDU_FIRM], now_ms())
    finally:
        store.close()
    registry, node_addr = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    reg = Proc("registry", ["registry", "serve", "--identity", str(dirs["registry"]), "--listen", registry,
                            "--db", registry_db], logs)
    node = Proc("node", ["node", "serve", "--identity", str(dirs["node"]), "--listen", node_addr,
                         "--registry", registry, "--db", node_db], logs)
    procs = [reg, node]
    reg.start()
    node.start()
    try:
        await wait_registered(ids["bank"], ids["auditor"], registry, node_addr, procs, timeout=60)
        log(f"registry pid {reg.proc.pid}, node pid {node.proc.pid}; {minutes:g} min at up to {rate:g} queries/s, "
            f"each under a new consent; logs in {logs}")
        ready: asyncio.Queue[str] = asyncio.Queue(READY_CONSENTS)
        counts = {"granted": 0, "answered": 0, "failed": 0}
        stop = asyncio.Event()
        interval = 1.0 / rate
        next_slot = time.monotonic()

        async def granter(enterprise: EnterpriseClient) -> None:
            while not stop.is_set():
                try:
                    record = await enterprise.grant(BANK, PURPOSE, CATEGORIES, 30)
                except ClientError as e:
                    counts["failed"] += 1
                    log(f"grant failed: {e}")
                    await asyncio.sleep(1)
                    continue
                counts["granted"] += 1
                await ready.put(record.consent_id)

        async def asker(bank: BankClient) -> None:
            nonlocal next_slot
            while not stop.is_set():
                consent_id = await ready.get()
                slot = next_slot = max(next_slot + interval, time.monotonic())
                await asyncio.sleep(max(0.0, slot - time.monotonic()))
                try:
                    result = await bank.query(CHENGDU_FIRM, CATEGORIES, PURPOSE, consent_id)
                    ok = any(v.verified and v.status == "ok" for v in result.nodes)
                except ClientError:
                    ok = False
                counts["answered" if ok else "failed"] += 1

        samples: list[Sample] = []

        async def sample(minute: float, audits: list[AuditClient]) -> None:
            for p in procs:
                p.check_alive()
            sizes = [parse_note((await a.checkpoint()).checkpoint).checkpoint.size for a in audits]
            samples.append(Sample(minute, rss_mb(reg.proc.pid), rss_mb(node.proc.pid), counts["answered"], *sizes))
            now, prev = samples[-1], samples[-2] if len(samples) > 1 else None
            delta = f"  (+{now.registry - prev.registry:5.1f}, +{now.node - prev.node:5.1f})" if prev else ""
            log(f"min {now.minute:4.1f}  registry {now.registry:6.1f} MB  node {now.node:6.1f} MB{delta}  "
                f"answered {now.answered} ({now.answered - (prev.answered if prev else 0)} this minute), "
                f"granted {counts['granted']}, failed {counts['failed']}, audit entries {now.registry_log}+{now.node_log}")

        async with EnterpriseClient(ids["enterprise"], registry) as enterprise, \
                BankClient(ids["bank"], registry) as bank, \
                AuditClient(ids["auditor"], registry, Role.REGISTRY) as registry_audit, \
                AuditClient(ids["auditor"], node_addr, Principal(Role.NODE, NODE)) as node_audit:
            audits = [registry_audit, node_audit]
            tasks = [asyncio.create_task(granter(enterprise)) for _ in range(GRANTERS)]
            tasks += [asyncio.create_task(asker(bank)) for _ in range(ASKERS)]
            start = time.monotonic()
            await sample(0.0, audits)
            try:
                minute = 0
                while minute < minutes:
                    step = min(1.0, minutes - minute)
                    await asyncio.sleep(max(0.0, start + (minute + step) * 60 - time.monotonic()))
                    minute += step
                    await sample(minute, audits)
            finally:
                stop.set()
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

        print_summary(samples)
        return 0
    except BaseException:
        for p in procs:
            print(p.dump_logs())
        raise
    finally:
        for p in procs:
            p.kill()


@dataclass
class Sample:
    minute: float
    registry: float  # RSS, MB
    node: float
    answered: int
    registry_log: int  # audit entries
    node_log: int


def print_summary(samples: list[Sample]) -> None:
    print()
    print(f"{'minute':>7} {'registry MB':>12} {'node MB':>9} {'queries':>9} {'registry log':>13} {'node log':>9}")
    for s in samples:
        print(f"{s.minute:7.1f} {s.registry:12.1f} {s.node:9.1f} {s.answered:9d} {s.registry_log:13d} {s.node_log:9d}")
    # Growth is measured from the end of warm-up: the caches fill (up to their bounds) and the replay
    # guard fills its five-minute window; after that memory should only follow the audit logs.
    base = next((s for s in samples if s.minute >= WARM_UP_MINUTES), None) or next(
        (s for s in samples if s.minute >= 1.0), None)
    end = samples[-1]
    if base is None or end.minute <= base.minute:
        print("\nrun at least two minutes to see growth after the first")
        return
    span = end.minute - base.minute
    queries = end.answered - base.answered
    print(f"\nfrom minute {base.minute:g} to {end.minute:g}: {queries} queries, each under a consent never seen before "
          f"({queries / span / 60:.1f} a second)")
    for name, grown_mb, entries in (("registry", end.registry - base.registry, end.registry_log - base.registry_log),
                                    ("node", end.node - base.node, end.node_log - base.node_log)):
        per_query = f"{grown_mb * 2**20 / queries:6.0f} B per query" if queries else ""
        per_entry = f", {grown_mb * 2**20 / entries:5.0f} B per audit entry ({entries} new)" if entries else ""
        print(f"  {name:8} {grown_mb / span:+6.2f} MB/min   {per_query}{per_entry}")
    print("(the audit log's Merkle tree keeps about a quarter of a byte an entry in memory, its finished blocks "
          "being read back from the store for proofs; a minute's figure moves by 1-2 MB with the allocator)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="how long the load runs (default 10)")
    parser.add_argument("--rate", type=float, default=50.0, help="queries a second at most (default 50)")
    parser.add_argument("--db", default=None,
                        help="a PostgreSQL URL to put both stores in (fresh schemas); default SQLite files")
    args = parser.parse_args()
    if args.minutes <= 0 or args.rate <= 0:
        parser.error("--minutes and --rate must be positive")
    with tempfile.TemporaryDirectory(prefix="xinyi-soak-") as work:
        sys.exit(asyncio.run(soak(args.minutes, args.rate, args.db, Path(work))))


if __name__ == "__main__":
    main()
