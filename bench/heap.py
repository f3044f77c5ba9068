"""Where a server's Python heap grows under steady load with ever new consents (`make soak`'s
question, answered inside the process).

    python bench/heap.py [--warm 60] [--measure 240] [--cache 32]

A registry and a node run in this process (bench/one_process.py); an
enterprise grants a consent and a bank asks once under it, four at a time, first for --warm
seconds, then for --measure. tracemalloc compares the heap after the two (a full collection
before each) and prints the allocation sites that grew most, with their call paths. The
per-consent caches are shrunk to --cache entries so that their bounds are reached within a short
run: what still grows is either bounded by time (the replay guard keeps each nonce while its
query's timestamp is fresh, five minutes) or a leak. Nothing is asserted; not part of
`make test` or CI. tracemalloc slows the process several times over: the rate is not a figure.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from one_process import BANK, CHENGDU_FIRM, OneProcessNetwork  # noqa: E402

PURPOSE = "credit_assessment"
CATEGORIES = ["registration", "tax"]


async def grant_and_ask(net: OneProcessNetwork, seconds: float, done: list[int]) -> None:
    """Grant a consent, ask under it once it reached the node (retried until it did), repeat."""
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        consent = (await net.enterprise.grant(BANK, PURPOSE, CATEGORIES, 30)).consent_id
        for _ in range(50):
            result = await net.bank.query(CHENGDU_FIRM, CATEGORIES, PURPOSE, consent)
            if result.nodes and result.nodes[0].verified:
                break
            await asyncio.sleep(0.05)
        done[0] += 1


async def run(warm: float, measure: float, top: int) -> None:
    done = [0]
    async with OneProcessNetwork() as net:
        await asyncio.gather(*(grant_and_ask(net, warm, done) for _ in range(4)))
        gc.collect()
        before, warmed = tracemalloc.take_snapshot(), done[0]
        size_before = tracemalloc.get_traced_memory()[0]
        await asyncio.gather(*(grant_and_ask(net, measure, done) for _ in range(4)))
        gc.collect()
        after = tracemalloc.take_snapshot()
        size_after = tracemalloc.get_traced_memory()[0]
    queries = done[0] - warmed
    print(f"after {warmed} queries of warm-up, {queries} more: the traced heap went from "
          f"{size_before / 1e6:.2f} to {size_after / 1e6:.2f} MB ({(size_after - size_before) / max(queries, 1):.0f} "
          "bytes a query)")
    mine = [tracemalloc.Filter(False, tracemalloc.__file__)]
    for stat in after.filter_traces(mine).compare_to(before.filter_traces(mine), "traceback")[:top]:
        print(f"\n{stat.size_diff / 1024:+.1f} KiB in {stat.count_diff:+d} blocks, allocated at")
        for line in stat.traceback.format(most_recent_first=True)[:8]:
            print("   ", line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--warm", type=float, default=60.0, help="seconds of load before the first snapshot")
    parser.add_argument("--measure", type=float, default=240.0, help="seconds of load between the snapshots")
    parser.add_argument("--cache", type=int, default=32, help="entries each per-consent cache may hold")
    parser.add_argument("--top", type=int, default=10, help="allocation sites to print")
    args = parser.parse_args()
    import xinyi.query
    import xinyi.store

    xinyi.query.USE_CACHE_LIMIT = xinyi.store.CONSENT_CACHE_LIMIT = args.cache  # read when the servers start
    tracemalloc.start(12)
    asyncio.run(run(args.warm, args.measure, args.top))


if __name__ == "__main__":
    main()
