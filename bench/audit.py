"""Audit log figures: durable appends per second with group commit, and proof times at 10^4..10^6.

    python bench/audit.py [--entries 20000] [--concurrency 256] [--pg URL]

Each append is awaited until its batch is committed (SQLite WAL with synchronous=FULL, or a
PostgreSQL commit), exactly as a node awaits it before an answer leaves.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import statistics
import tempfile
import time

from node.store import NodeStore
from xinyi.audit import merkle
from xinyi.audit.entry import AuditEntry
from xinyi.audit.log import AuditLog
from xinyi.clock import now_ms
from xinyi.crypto.identity import Principal, Role
from xinyi.crypto.pki import RootCA


_ENTRY = AuditEntry(at_ms=now_ms(), caller_role="bank", caller_id="914403001922038216", action="query",
                    decision="allow", uscc="91510104MA6CW8J7X9", categories=("registration", "tax"),
                    purpose="credit_assessment", consent_id="a" * 32, request_hash="b" * 64, trace_id="c" * 32)


@contextlib.asynccontextmanager
async def _node_log(url: str):
    """A node's audit log on a new store at `url`, closed (and the store) on the way out."""
    store = NodeStore(url)
    store.create_schema()
    log = AuditLog(store, RootCA.create().issue(Principal(Role.NODE, "510100")), now_ms)
    await log.open()
    try:
        yield log
    finally:
        await log.close()
        store.close()


async def appends_per_second(url: str, entries: int, concurrency: int) -> dict:
    per_worker = entries // concurrency
    async with _node_log(url) as log:

        async def worker() -> None:
            for _ in range(per_worker):
                await log.append(_ENTRY)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        seconds = time.perf_counter() - started
        batches = log.batches
    total = per_worker * concurrency
    return {"entries": total, "seconds": round(seconds, 3), "per_second": round(total / seconds),
            "commits": batches, "entries_per_commit": round(total / max(batches, 1), 1)}


async def commit_latency(url: str, appends: int) -> dict:
    """One entry at a time, each awaited until committed: the latency of one durable commit,
    which every answer waits for once at the node and, through the registry, twice more (its
    forwarding record before any node sees the query, its outcome before the answer leaves)."""
    took = []
    async with _node_log(url) as log:
        for _ in range(appends):
            started = time.perf_counter()
            await log.append(_ENTRY)
            took.append((time.perf_counter() - started) * 1000)
    return {"appends": appends, "p50_ms": round(statistics.median(took), 3)}


def proof_times(sizes=(10**4, 10**5, 10**6), samples=1000) -> dict:
    out = {}
    rng = random.Random(1)
    tree = merkle.MerkleTree(track_index=False)
    for size in sizes:
        tree.extend(os.urandom(32) for _ in range(size - tree.size))
        inc, con, lengths = [], [], []
        for _ in range(samples):
            i = rng.randrange(size)
            t = time.perf_counter()
            lengths.append(len(tree.inclusion_proof(i, size)))
            inc.append(time.perf_counter() - t)
            m = rng.randrange(1, size)
            t = time.perf_counter()
            lengths.append(len(tree.consistency_proof(m, size)))
            con.append(time.perf_counter() - t)
        out[str(size)] = {"inclusion_ms_p50": round(statistics.median(inc) * 1000, 4),
                          "inclusion_ms_max": round(max(inc) * 1000, 4),
                          "consistency_ms_p50": round(statistics.median(con) * 1000, 4),
                          "consistency_ms_max": round(max(con) * 1000, 4),
                          "proof_hashes_max": max(lengths)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--entries", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--pg", default=os.environ.get("XINYI_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        print("sqlite  ", asyncio.run(appends_per_second(f"sqlite:///{tmp}/audit.db", args.entries, args.concurrency)))
        print("sqlite, one at a time", asyncio.run(commit_latency(f"sqlite:///{tmp}/one.db", 300)))
    from sqlalchemy import create_engine, text

    schema = f"bench_{os.getpid()}"
    admin = create_engine(args.pg)
    with admin.begin() as c:
        c.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        url = f"{args.pg}?options=-csearch_path%3D{schema}"
        print("postgres", asyncio.run(appends_per_second(url, args.entries, args.concurrency)))
    finally:
        with admin.begin() as c:
            c.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    print("proofs  ", proof_times())


if __name__ == "__main__":
    main()
