"""Registry replicas in `make bench` (issue 13, item 8): throughput and registry CPU per query with
1, 2 and 3 `xinyi registry serve` processes on one PostgreSQL database, and the time from a
kill -9 of a replica to the first query answered through another.

The network is tests/adversarial/procnet.py's (the processes the replica tests start): three
replicas known to the node and the clients, one node (Chengdu, on SQLite, as in the rest of the
benchmark), the registry in a PostgreSQL schema of its own, dropped afterwards. With k replicas
running, the bank's load is spread over them: one client per replica, the workers taking turns.

What this machine allows: the bank, the node and every replica share its cores. With 2 cores the
queries are already CPU-bound with one replica, so more replicas add availability, not
throughput; what they can show here is what a replica costs (registry CPU per query, which grows
with shared state in the database and locks) and how fast a client moves on when one dies.
"""

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "adversarial"))

from harness import CHENGDU_FIRM  # noqa: E402
from procnet import CATEGORIES, PURPOSE, started  # noqa: E402
from sqlalchemy import create_engine, text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402
from testdb import Databases, pg_base_url  # noqa: E402

from xinyi.client import BankClient, ClientError, QueryAlreadyReceived  # noqa: E402

NODE = "510100"
REPLICAS = (1, 2, 3)
READY_S = 60.0  # a replica started and answering; a failover seen


def load() -> str:
    """The machine's load average over 1, 5 and 15 minutes: the machine may be shared, so the
    figures come with it."""
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


async def measure(bench, *, throughput, cpu_seconds, log) -> None:
    """Both figures, on a network started for them and stopped afterwards. `bench` is run.py's
    Bench (p, fig, results, work); the others its measuring helpers."""
    work = bench.work / "replicas"
    databases = Databases("postgresql", work)
    # Named, so that the PostgreSQL backends serving the replicas can be found and their CPU counted.
    app = f"xinyi-bench-{os.getpid()}"
    registry = make_url(databases.new("registry")).update_query_dict({"application_name": app})
    backends = PostgresBackends(app, cpu_seconds)
    try:
        net = await started(work, databases, nodes=(NODE,), replicas=max(REPLICAS), start_replicas=1,
                            db_urls={"registry": registry.render_as_string(hide_password=False),
                                     NODE: f"sqlite:///{work / 'node.db'}"})
        try:
            consent = await net.grant(deliver_to=[NODE])
            await _throughput(bench, net, consent, throughput, cpu_seconds, backends, log)
            await _failover(bench, net, consent, log)
        except BaseException:
            print(net.dump_logs()[-20_000:], file=sys.stderr)
            raise
        finally:
            await net.stop()
    finally:
        backends.close()
        databases.drop_all()


class PostgresBackends:
    """CPU of the PostgreSQL server processes serving connections named `app` (the database
    server is on this machine). A backend that exits between two readings takes its CPU with
    it, so the figure is a lower bound; the replicas' pools keep their connections."""

    def __init__(self, app: str, cpu_seconds) -> None:
        self.app, self.cpu_seconds = app, cpu_seconds
        self.engine = create_engine(pg_base_url())

    def cpu(self) -> dict[int, float]:
        with self.engine.connect() as c:
            pids = c.execute(text("SELECT pid FROM pg_stat_activity WHERE application_name = :a"), {"a": self.app})
            out = {}
            for (pid,) in pids:
                try:
                    out[pid] = self.cpu_seconds(pid)
                except OSError:  # exited meanwhile
                    pass
            return out

    @staticmethod
    def spent(before: dict[int, float], after: dict[int, float]) -> float:
        return sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())

    def close(self) -> None:
        self.engine.dispose()


async def _answered(bank: BankClient, consent: str) -> None:
    result = await bank.query(CHENGDU_FIRM, CATEGORIES, PURPOSE, consent)
    assert result.answered, result.to_json()


async def _run_replicas(net, k: int) -> None:
    """Exactly the first k replicas running (the others stopped with SIGTERM), each answering."""
    starting = []
    for i, replica in enumerate(net.registries):
        running = replica.proc is not None and replica.proc.poll() is None
        if i < k and not running:
            replica.start()
            starting.append(replica)
        elif i >= k and running:
            replica.proc.send_signal(signal.SIGTERM)
            replica.proc.wait(timeout=30)
    for replica in starting:
        await replica.wait_for_log("serving on port", timeout=READY_S)


async def _until_answered(bank: BankClient, consent: str) -> None:
    deadline = time.monotonic() + READY_S
    while True:
        try:
            return await _answered(bank, consent)
        except (ClientError, AssertionError):
            if time.monotonic() > deadline:
                raise SystemExit(f"bench: no query answered through {bank.target} in {READY_S:.0f} s")
            await asyncio.sleep(0.3)


async def _throughput(bench, net, consent: str, throughput, cpu_seconds, backends, log) -> None:
    p = bench.p
    rates: dict[int, list[float]] = {k: [] for k in REPLICAS}
    cpu_ms: dict[int, list[float]] = {k: [] for k in REPLICAS}
    pg_ms: dict[int, list[float]] = {k: [] for k in REPLICAS}
    busy: dict[int, list[float]] = {k: [] for k in REPLICAS}
    load_before = load()
    for rnd in range(p["replica_rounds"]):
        # Up, then down: drift of the shared machine's load weighs on every count alike.
        for k in REPLICAS if rnd % 2 == 0 else tuple(reversed(REPLICAS)):
            await _run_replicas(net, k)
            banks = [BankClient(net.bank_identity, addr) for addr in net.registry_addrs[:k]]
            try:
                for bank in banks:
                    await _until_answered(bank, consent)
                    for _ in range(10):  # warm up channels and caches
                        await _answered(bank, consent)
                turn = iter(range(1 << 62))

                async def spread() -> None:
                    await _answered(banks[next(turn) % k], consent)

                replicas = [r.proc.pid for r in net.registries[:k]]
                node = net.nodes[NODE].proc.pid
                before = [cpu_seconds(pid) for pid in replicas], cpu_seconds(node), time.process_time()
                pg_before = backends.cpu()
                started_at = time.perf_counter()
                rate = await throughput(spread, p["concurrency"], p["replica_seconds"])
                elapsed = time.perf_counter() - started_at
                database = backends.spent(pg_before, backends.cpu())
                registry = sum(cpu_seconds(pid) for pid in replicas) - sum(before[0])
                spent = registry + database + cpu_seconds(node) - before[1] + time.process_time() - before[2]
            finally:
                for bank in banks:
                    await bank.close()
            queries = rate * elapsed
            rates[k].append(rate)
            cpu_ms[k].append(registry / queries * 1000)
            pg_ms[k].append(database / queries * 1000)
            busy[k].append(spent / (elapsed * os.cpu_count()) * 100)
            log(f"round {rnd + 1}/{p['replica_rounds']}: {k} replica(s): {rate:.0f} queries/s, "
                      f"registry CPU {cpu_ms[k][-1]:.2f} ms/query (PostgreSQL {pg_ms[k][-1]:.2f}), "
                f"all of it {busy[k][-1]:.0f} % of the cores, load {load()}")
    c = p["concurrency"]
    for k in REPLICAS:
        bench.fig(f"registry_{k}_replicas_throughput_c{c}", round(statistics.median(rates[k])), "queries/s")
        bench.fig(f"registry_{k}_replicas_cpu_ms_per_query", round(statistics.median(cpu_ms[k]), 2), "ms")
        bench.fig(f"registry_{k}_replicas_postgres_cpu_ms_per_query", round(statistics.median(pg_ms[k]), 2), "ms")
        # Bank (this process), node, replicas and their PostgreSQL backends, against every core.
        bench.fig(f"registry_{k}_replicas_machine_cpu_busy", round(statistics.median(busy[k])), "%")
    bench.fig("registry_replicas_load_avg_before", load_before, "load 1/5/15 min")
    bench.fig("registry_replicas_load_avg_after", load(), "load 1/5/15 min")
    top = max(REPLICAS)
    gain = statistics.median(rates[top]) / statistics.median(rates[1])
    cost = [statistics.median(cpu_ms[k]) for k in (1, top)]
    bench.results.setdefault("notes", []).append(
        f"Registry replicas on {os.cpu_count()} cores: the bank, the node, every replica and PostgreSQL share "
        f"them, so a replica cannot bring cores of its own. {top} replicas answered {gain:.2f} x the queries of "
        f"one, at {cost[0]:.2f} -> {cost[1]:.2f} ms of registry CPU per query. Here replicas add availability, "
        "not throughput; more throughput needs replicas on hosts of their own.")


async def _failover(bench, net, consent: str, log) -> None:
    """A bank given every replica's address queries without pause; the replica it uses is killed
    (kill -9) and the time to the first query answered through another is taken. The killed
    replica is started again before the next kill."""
    await _run_replicas(net, max(REPLICAS))
    bank = BankClient(net.bank_identity, net.registry_addrs)
    took: list[float] = []
    received_again = failed_total = replayed_self = 0
    try:
        await _until_answered(bank, consent)
        for _ in range(bench.p["failover_kills"]):
            victim_addr = bank.target
            victim = net.registries[net.registry_addrs.index(victim_addr)]
            killed_at: float | None = None
            first: float | None = None
            failed: list[str] = []

            async def stream() -> None:
                nonlocal first, received_again, replayed_self
                while first is None:
                    try:
                        await _answered(bank, consent)
                    except QueryAlreadyReceived:
                        received_again += 1  # in flight at the kill: the next replica had it on record
                        continue
                    except (ClientError, AssertionError) as e:
                        # The retry of a query in flight at the kill, refused as a replay of itself:
                        # the killed replica had claimed its nonce and died before recording it.
                        replayed_self += isinstance(e, ClientError) and e.failure.reason == "REPLAYED_NONCE"
                        failed.append(str(e)[:300])
                        if len(failed) > 50:
                            raise SystemExit(f"bench: queries fail after the kill: {failed[-1]}")
                        continue
                    if killed_at is not None and bank.target != victim_addr:
                        first = time.perf_counter()

            task = asyncio.create_task(stream())
            await asyncio.sleep(1.0)  # a steady stream before the kill
            killed_at = time.perf_counter()
            net.kill(victim.name)
            await asyncio.wait_for(task, READY_S)
            took.append((first - killed_at) * 1000)
            failed_total += len(failed)
            log(f"kill -9 {victim.name}: first query answered through {bank.target} "
                      f"{took[-1]:.0f} ms later; {len(failed)} failed{': ' + failed[0] if failed else ''}")
            net.start_again(victim.name)
            await victim.wait_for_log("serving on port", timeout=READY_S)
    finally:
        await bank.close()
    bench.fig("registry_failover_ms_median", round(statistics.median(took)), "ms")
    bench.fig("registry_failover_ms_max", round(max(took)), "ms")
    bench.fig("registry_failover_ms_each", " / ".join(f"{t:.0f}" for t in took), "ms")
    bench.fig("registry_failover_queries_failed", failed_total)
    bench.fig("registry_failover_queries_received_again", received_again)
    bench.fig("registry_failover_retries_refused_as_replay", replayed_self)
    bench.fig("registry_failover_load_avg", load(), "load 1/5/15 min")
