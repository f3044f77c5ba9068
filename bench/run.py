"""`make bench` / `make bench-quick`: the query path measured beside the bare transport it runs on.

One run starts, as separate processes on loopback with mutual TLS: the registry and the nodes
(`xinyi registry serve`, `xinyi node serve`, as in the demo), and a baseline of the same
processes and hops whose handler only echoes (bench/echo.py). The product and the baseline are
measured alternately, round after round, so the machine's noise affects both alike. Figures are
printed as a table and written, with the machine they ran on, to bench/results.json. Nothing
here is asserted: targets are reported as met or not.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "scripts"))

from harness import LOAD_TEST_CONSENT, load_test_policies  # noqa: E402

from xinyi.clock import now_ms  # noqa: E402
from xinyi.crypto.identity import Principal, Role  # noqa: E402
from xinyi.crypto.pki import Identity, RootCA  # noqa: E402
from xinyi.records import uscc as uscc_codes  # noqa: E402

BANK = "914403001922038216"
LICENCE = "B0014H144030001"
# Provinces beside Shanghai that hold a record of the fan-out firms (declared holders).
EXTRA_NODES = ["320000", "330000", "340000", "350000", "360000", "370000", "410000", "420000", "430000"]

PROFILES = {
    "quick": dict(latency_samples=120, rounds=2, throughput_seconds=3.0, concurrency=64, fanout=(1, 3),
                  fanout_samples=40, query_sizes=(10_000, 100_000), query_samples=100, audit_entries=20_000,
                  proof_sizes=(10_000, 100_000), ingest_enterprises=600, commit_samples=100, replica_rounds=1,
                  replica_seconds=3.0, failover_kills=2),
    "full": dict(latency_samples=400, rounds=3, throughput_seconds=5.0, concurrency=64, fanout=(1, 3, 10),
                 fanout_samples=100, query_sizes=(10_000, 100_000, 1_000_000), query_samples=200,
                 audit_entries=50_000, proof_sizes=(10_000, 100_000, 1_000_000), ingest_enterprises=3000,
                 commit_samples=300, replica_rounds=2, replica_seconds=5.0, failover_kills=5),
}


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def firm(area: str, n: int) -> str:
    return uscc_codes.with_check_character(f"91{area}MA{n:07d}"[:17].replace("I", "1").replace("O", "0"))


class Procs:
    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, args: list[str]) -> subprocess.Popen:
        out = open(self.logs / f"{name}.log", "w")
        proc = subprocess.Popen(args, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        self.procs[name] = proc
        return proc

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()

    def cpu_by_party(self) -> dict[str, float]:
        """CPU seconds so far of the bank (this process), the registry and node 310000, and of
        the echo's stand-ins for them (counted for the baseline's runs: only one side is busy)."""
        return {"bank": own_cpu_seconds(),
                "registry": self.cpu_seconds("registry") + self.cpu_seconds("echo-registry"),
                "node": self.cpu_seconds("node-310000") + self.cpu_seconds("echo-node")}

    def cpu_seconds(self, prefix: str) -> float:
        """User + system CPU so far of the running processes whose name starts with `prefix`."""
        return sum(cpu_seconds(proc.pid) for name, proc in self.procs.items()
                   if name.startswith(prefix) and proc.poll() is None)

    def peak_rss_mb(self, name: str) -> float:
        for line in Path(f"/proc/{self.procs[name].pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def latency(call, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        await call()
        out.append((time.perf_counter() - t) * 1000)
    return out


async def throughput(call, concurrency: int, seconds: float, calls: list[int] | None = None) -> float:
    """Calls per second with `concurrency` callers for `seconds`; the count is appended to `calls`."""
    done = 0
    stop_at = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < stop_at:
            await call()
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    if calls is not None:
        calls.append(done)
    return done / (time.perf_counter() - started)


def own_cpu_seconds() -> float:
    """User + system CPU of this process: the bank's client, in the benchmark."""
    t = os.times()
    return t.user + t.system


class Bench:
    def __init__(self, profile: str, work: Path, pg: str) -> None:
        self.p = PROFILES[profile]
        self.profile = profile
        self.work = work
        self.pg = pg
        self.results: dict = {"profile": profile, "figures": {}, "targets": {}}
        self.procs = Procs(work)
        self.root = RootCA.create()
        self.ids: dict[str, Path] = {}

    def identity(self, role: Role, pid: str) -> Path:
        key = f"{role}-{pid}"
        if key not in self.ids:
            licence = LICENCE if role is Role.BANK else ""
            self.ids[key] = self.root.issue(Principal(role, pid), licence=licence).save(self.work / "certs")
        return self.ids[key]

    def fig(self, name: str, value, unit: str = "") -> None:
        self.results["figures"][name] = {"value": value, "unit": unit}
        log(f"{name}: {value} {unit}")

    def target(self, name: str, met: bool, detail: str) -> None:
        self.results["targets"][name] = {"met": bool(met), "detail": detail}

    # -- building blocks -----------------------------------------------------------------
    def audit_and_proofs(self) -> None:
        import audit as audit_bench

        with tempfile.TemporaryDirectory() as tmp:
            r = asyncio.run(audit_bench.appends_per_second(f"sqlite:///{tmp}/a.db", self.p["audit_entries"], 256))
            one = asyncio.run(audit_bench.commit_latency(f"sqlite:///{tmp}/one.db", self.p["commit_samples"]))
        self.fig("audit_appends_per_s_sqlite", r["per_second"], "entries/s")
        self.fig("audit_entries_per_commit", r["entries_per_commit"])
        self.target("durable audit appends >= 10,000/s", r["per_second"] >= 10_000, f"{r['per_second']}/s (SQLite, synchronous=FULL)")
        self.commit_ms = one["p50_ms"]  # sets the floor under the p50 targets (network_figures)
        self.fig("audit_commit_p50_ms_sqlite", self.commit_ms, "ms")
        proofs = audit_bench.proof_times(self.p["proof_sizes"], samples=500)
        for size, f in proofs.items():
            self.fig(f"inclusion_proof_ms_p50_at_{size}", f["inclusion_ms_p50"], "ms")
            self.fig(f"consistency_proof_ms_p50_at_{size}", f["consistency_ms_p50"], "ms")

    def ingestion(self) -> None:
        from gen_data import generate

        from node.ingest import ingest_file
        from node.store import NodeStore

        data = self.work / "ingest-data"
        generate(data, self.p["ingest_enterprises"], seed=3)
        files = [data / f"{n}.jsonl" for n in ("510000", "510100", "310000")]
        for backend in ("sqlite", "postgresql"):
            if backend == "sqlite":
                url = f"sqlite:///{self.work / 'ingest.db'}"
            else:
                url = self._pg_schema("ingest")
            store = NodeStore(url)
            store.create_schema()
            lines, seconds = 0, 0.0
            for f in files:
                report = ingest_file(f, store)
                lines += report.inserted
                seconds += report.seconds
            store.close()
            rate = round(lines / seconds)
            self.fig(f"ingestion_records_per_s_{backend}", rate, "records/s")
            goal = 50_000 if backend == "sqlite" else 30_000
            self.target(f"ingestion >= {goal:,}/s into {backend}", rate >= goal, f"{rate}/s over {lines} records")

    def _pg_schema(self, name: str) -> str:
        from sqlalchemy import create_engine, text

        schema = f"bench_{name}_{os.getpid()}"
        engine = create_engine(self.pg)
        with engine.begin() as c:
            c.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
            c.execute(text(f'CREATE SCHEMA "{schema}"'))
        engine.dispose()
        self._schemas = getattr(self, "_schemas", []) + [schema]
        return f"{self.pg}?options=-csearch_path%3D{schema}"

    def drop_schemas(self) -> None:
        from sqlalchemy import create_engine, text

        engine = create_engine(self.pg)
        with engine.begin() as c:
            for s in getattr(self, "_schemas", []):
                c.execute(text(f'DROP SCHEMA IF EXISTS "{s}" CASCADE'))
        engine.dispose()

    def routing(self) -> None:
        from xinyi.directory import Directory
        from xinyi.v1 import directory_pb2

        provinces = [f"{p}0000" for p in range(11, 66) if p not in (17, 18, 19, 20, 24, 25, 26, 27, 28, 29, 30, 38, 39,
                                                                           40, 47, 48, 49, 55, 56, 57, 58, 59, 60)]
        nodes = {}
        for i in range(400):
            pid = provinces[i % len(provinces)][:2] + f"{(i // len(provinces)) + 1:02d}00" if i >= len(provinces) else provinces[i]
            nodes[pid] = directory_pb2.NodeEntry(node_id=pid, endpoint="127.0.0.1:1")
        directory = Directory(1, 0, "national", nodes)
        usccs = [firm(random.choice(list(nodes))[:4] + "01", i) for i in range(2000)]
        t = time.perf_counter()
        for _ in range(5):
            for u in usccs:
                directory.route(u)
        per = (time.perf_counter() - t) / (5 * len(usccs)) * 1e6
        self.fig("routing_decision_us_400_nodes", round(per, 2), "µs")
        self.target("routing decision < 50 µs with 400 nodes", per < 50, f"{per:.2f} µs over {len(nodes)} nodes")

    # -- the network ---------------------------------------------------------------------
    def start_network(self, node_ids: list[str]) -> dict:
        policies = load_test_policies(self.work)
        reg = f"127.0.0.1:{free_port()}"
        py = [sys.executable, "-m", "xinyi.cli"]
        self.procs.start("registry", py + ["registry", "serve", "--identity", str(self.identity(Role.REGISTRY, "national")),
                                           "--listen", reg, "--db", f"sqlite:///{self.work / 'registry.db'}",
                                           "--policies", str(policies)])
        addrs = {}
        self.node_argv = {}
        for node in node_ids:
            addrs[node] = f"127.0.0.1:{free_port()}"
            self.node_argv[node] = py + ["node", "serve", "--identity", str(self.identity(Role.NODE, node)),
                                         "--listen", addrs[node], "--registry", reg,
                                         "--db", f"sqlite:///{self.work / (node + '.db')}", "--policies", str(policies)]
            self.procs.start(f"node-{node}", self.node_argv[node])
        return {"registry": reg, "nodes": addrs}

    def seed_nodes(self, node_ids: list[str]) -> dict[int, str]:
        """Fan-out firms: the firm for n is held by Shanghai and n-1 other provinces."""
        from node.store import NodeStore, Record

        fanout_firms = {n: firm("310115", 9_000_000 + n) for n in (1, 3, 10)}
        for node in node_ids:
            store = NodeStore(f"sqlite:///{self.work / (node + '.db')}")
            store.create_schema()
            records = []
            for n, uscc in fanout_firms.items():
                holders = ["310000", *EXTRA_NODES[: n - 1]]
                if node in holders:
                    records.append(Record(uscc, "tax", "2026-06-15", f"tax bureau {node}",
                                          {"period": "2026-05", "tax_paid": "1000.00", "credit_rating": "A"}))
            store.add_records(records, now_ms())
            store.close()
        return fanout_firms

    def fill(self, node: str, target: int) -> None:
        """Grow a node's store to `target` records (other firms), as a loaded province would be."""
        from node.store import NodeStore, Record

        store = NodeStore(f"sqlite:///{self.work / (node + '.db')}")
        have = store.count_records()
        batch, n = [], have
        while n < target:
            uscc = firm("310104", n // 12)
            month = n % 12 + 1
            batch.append(Record(uscc, "tax", f"2025-{month:02d}-15", "tax bureau",
                                {"period": f"2025-{month:02d}", "tax_paid": f"{n % 9000}.00", "credit_rating": "B"}))
            n += 1
            if len(batch) == 20_000:
                store.add_records(batch, now_ms())
                batch = []
        store.add_records(batch, now_ms())
        store.close()

    async def wait_registered(self, reg: str, count: int) -> None:
        from xinyi.client import BankClient, ClientError

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                async with BankClient(Identity.load(self.identity(Role.BANK, BANK)), reg) as bank:
                    if len((await bank.directory(refresh=True)).nodes) >= count:
                        return
            except ClientError:
                pass
            await asyncio.sleep(0.3)
        raise SystemExit("bench: nodes did not register in 60 s; see the logs in " + str(self.work))

    async def network_figures(self) -> None:
        from xinyi.client import BankClient, EnterpriseClient, OperatorHoldings
        from echo import bare_channel

        node_ids = ["310000", *EXTRA_NODES[: max(self.p["fanout"]) - 1]]
        firms = self.seed_nodes(node_ids)
        self.fill("310000", self.p["query_sizes"][0])
        net = self.start_network(node_ids)
        # The baseline: the same processes and hops, echoing.
        echo_node = f"127.0.0.1:{free_port()}"
        echo_reg = f"127.0.0.1:{free_port()}"
        py = [sys.executable, str(ROOT / "bench" / "echo.py")]
        self.procs.start("echo-node", py + ["--identity", str(self.identity(Role.NODE, "310000")), "--listen", echo_node])
        self.procs.start("echo-registry", py + ["--identity", str(self.identity(Role.REGISTRY, "national")),
                                                "--listen", echo_reg, "--forward", echo_node, "--forward-id", "310000"])
        await self.wait_registered(net["registry"], len(node_ids))
        # The fan-out firms' records at other provinces' nodes are out of those nodes' areas: the
        # platform operator approves their claims, so that routing reaches them.
        async with OperatorHoldings(Identity.load(self.identity(Role.REGISTRY, "national")), net["registry"]) as operator:
            for claim in await operator.claims(state="pending"):
                await operator.review(claim.node_id, claim.uscc, approve=True)
        await asyncio.sleep(1.0)

        bank_id = Identity.load(self.identity(Role.BANK, BANK))
        one = firms[1]
        consents = {}
        for uscc in set(firms.values()):
            ent = EnterpriseClient(Identity.load(self.identity(Role.ENTERPRISE, uscc)), net["registry"])
            consents[uscc] = (await ent.grant(BANK, "credit_assessment", ["tax"], 30, **LOAD_TEST_CONSENT)).consent_id
            await ent.close()
        await asyncio.sleep(0.5)

        bank = BankClient(bank_id, net["registry"])
        await bank.directory(refresh=True)
        payload = os.urandom(900)  # about the size of a signed query envelope
        # The baseline's client is as bare as its servers: no interceptors (bench/echo.py).
        base2 = bare_channel(bank_id, echo_reg, Role.REGISTRY).unary_unary("/bench.Echo/Echo")
        base1 = bare_channel(bank_id, echo_node, Principal(Role.NODE, "310000")).unary_unary("/bench.Echo/Echo")

        async def product() -> None:
            result = await bank.query(one, ["tax"], "credit_assessment", consents[one])
            assert result.nodes[0].verified, result.to_json()

        async def direct() -> None:
            view = await bank.query_node(net["nodes"]["310000"], "310000", one, ["tax"], "credit_assessment", consents[one])
            assert view.verified, view

        async def baseline2() -> None:
            await base2(payload, timeout=10)

        async def baseline1() -> None:
            await base1(payload, timeout=10)

        for name, call in (("product", product), ("direct", direct), ("baseline2", baseline2), ("baseline1", baseline1)):
            await latency(call, 20)  # warm up channels and caches
        lat = {k: [] for k in ("product", "baseline2", "direct", "baseline1")}
        thr = {k: [] for k in lat}
        cpu_ms = {k: {"bank": [], "registry": [], "node": []} for k in lat}
        calls = {"product": product, "baseline2": baseline2, "direct": direct, "baseline1": baseline1}
        for r in range(self.p["rounds"]):
            log(f"round {r + 1}/{self.p['rounds']}: latency and throughput, product and baseline alternately")
            for name in ("baseline2", "product", "baseline1", "direct"):
                lat[name] += await latency(calls[name], self.p["latency_samples"])
            for name in ("baseline2", "product", "baseline1", "direct"):
                before = self.procs.cpu_by_party()
                done: list[int] = []
                thr[name].append(await throughput(calls[name], self.p["concurrency"], self.p["throughput_seconds"], done))
                after = self.procs.cpu_by_party()
                for party in before:
                    cpu_ms[name][party].append((after[party] - before[party]) * 1000 / done[0])
        f = {}
        for name in lat:
            f[name] = (statistics.median(lat[name]), pct(lat[name], 0.99), statistics.median(thr[name]))
        for name, label in (("product", "full_path_via_registry"), ("baseline2", "baseline_2_hops"),
                            ("direct", "direct_to_node"), ("baseline1", "baseline_1_hop")):
            self.fig(f"{label}_p50_ms", round(f[name][0], 3), "ms")
            self.fig(f"{label}_p99_ms", round(f[name][1], 3), "ms")
            self.fig(f"{label}_throughput_c{self.p['concurrency']}", round(f[name][2]), "calls/s")
        # CPU per query of each party under load (the throughput runs), the product beside the
        # bare echo: the echo's "registry" and "node" are its two relaying and echoing processes.
        for name, label in (("product", "full_path"), ("baseline2", "baseline_2_hops")):
            for party, samples in cpu_ms[name].items():
                self.fig(f"{label}_cpu_ms_per_query_{party}", round(statistics.median(samples), 3), "ms")
        for party, goal in (("registry", 1.0), ("node", 1.2), ("bank", 0.5)):
            spent = statistics.median(cpu_ms["product"][party])
            self.target(f"{party} CPU per query <= {goal} ms", spent <= goal, f"{spent:.2f} ms")
        p50_ratio = f["product"][0] / f["baseline2"][0]
        thr_ratio = f["product"][2] / f["baseline2"][2]
        self.fig("full_path_p50_ratio_to_baseline", round(p50_ratio, 2), "x")
        self.fig("full_path_throughput_ratio_to_baseline", round(thr_ratio, 2), "x")
        self.fig("direct_p50_ratio_to_baseline", round(f["direct"][0] / f["baseline1"][0], 2), "x")
        self.fig("direct_throughput_ratio_to_baseline", round(f["direct"][2] / f["baseline1"][2], 2), "x")
        # The floor the durability rules set, whatever else is made faster: the node commits its
        # entry before its answer leaves, the registry its forwarding before any node sees the
        # query (tests/test_routing_record.py) and its outcome before the answer leaves (the
        # failover and kill -9 invariants). The bare echo commits nothing.
        commit = self.commit_ms
        for label, commits, name, base, goal in (("full_path", 3, "product", "baseline2", 1.5),
                                                 ("direct", 1, "direct", "baseline1", 2.0)):
            floor = (f[base][0] + commits * commit) / f[base][0]
            self.fig(f"{label}_p50_floor_ratio_to_baseline", round(floor, 2), "x")
            ratio = f[name][0] / f[base][0]
            self.target(f"{label.replace('_', ' ')} p50 <= {goal} x baseline", ratio <= goal,
                        f"{ratio:.2f} x; its {commits} durable commit(s) of {commit:.2f} ms alone make {floor:.2f} x")
        self.target("full path throughput >= 0.6 x baseline", thr_ratio >= 0.6, f"{thr_ratio:.2f} x")

        # Fan-out: the same query answered by 1, 3 or 10 nodes.
        fan = {}
        for n in self.p["fanout"]:
            uscc = firms[n]

            async def ask(uscc=uscc, n=n) -> None:
                result = await bank.query(uscc, ["tax"], "credit_assessment", consents[uscc])
                assert sum(v.verified for v in result.nodes) == n, result.to_json()

            await latency(ask, 10)
            cpu = self.procs.cpu_seconds("node-")
            fan[n] = statistics.median(await latency(ask, self.p["fanout_samples"]))
            cpu = (self.procs.cpu_seconds("node-") - cpu) / self.p["fanout_samples"] * 1000
            self.fig(f"fanout_{n}_nodes_p50_ms", round(fan[n], 3), "ms")
            # What the nodes spend on one such query, all together: with more nodes than cores,
            # answering concurrently cannot take less than this divided by the cores.
            self.fig(f"fanout_{n}_nodes_cpu_ms_per_query", round(cpu, 2), "ms")
        top = max(self.p["fanout"])
        self.target(f"fan-out to {top} nodes p50 <= 1.5 x single-node p50", fan[top] <= 1.5 * fan[1],
                    f"{fan[top] / fan[1]:.2f} x")

        # Query time as the node's store grows: direct, so the node's own work is what varies.
        sizes = {}
        for size in self.p["query_sizes"]:
            log(f"growing node 310000 to {size:,} records")
            self.fill("310000", size)
            await latency(direct, 10)
            sizes[size] = statistics.median(await latency(direct, self.p["query_samples"]))
            self.fig(f"query_p50_ms_at_{size}_records", round(sizes[size], 3), "ms")
        lo, hi = min(sizes), max(sizes)
        self.target(f"query p50 at {hi:,} records <= 1.2 x at {lo:,}", sizes[hi] <= 1.2 * sizes[lo],
                    f"{sizes[hi] / sizes[lo]:.2f} x")
        rss = self.procs.peak_rss_mb("node-310000")
        self.fig(f"node_peak_rss_mb_with_{hi}_records", round(rss, 1), "MB")
        if hi >= 1_000_000:
            self.target("node RSS < 500 MB with 10^6 records", rss < 500, f"{rss:.0f} MB")
        await self.workers_figures(net, bank_id, one, consents[one], product)
        await bank.close()

    async def workers_figures(self, net: dict, bank_id: Identity, uscc: str, consent_id: str, product) -> None:
        """Throughput of node 310000 run as 1 process and with --workers 2, alternately (the node
        is restarted for each round), so that the machine's noise affects both alike.

        Banks on 8 connections ask it directly (the kernel spreads connections, not calls, over
        the workers); the full path goes through the registry, which keeps 2 per node."""
        from xinyi.client import BankClient, ClientError

        node, addr = "310000", net["nodes"]["310000"]
        direct: dict[int, list[float]] = {1: [], 2: []}
        full: dict[int, list[float]] = {1: [], 2: []}
        running = f"node-{node}"
        for rnd in range(self.p["rounds"]):
            for workers in (1, 2):
                old = self.procs.procs.pop(running)
                old.send_signal(signal.SIGTERM)
                old.wait(timeout=30)
                running = f"node-{node}-w{workers}-r{rnd}"
                self.procs.start(running, [*self.node_argv[node], *(["--workers", str(workers)] if workers > 1 else [])])
                banks = [BankClient(bank_id, net["registry"]) for _ in range(8)]
                turn = iter(range(1 << 62))

                async def direct_many() -> None:
                    view = await banks[next(turn) % len(banks)].query_node(addr, node, uscc, ["tax"],
                                                                            "credit_assessment", consent_id)
                    assert view.verified, view

                deadline = time.monotonic() + 60
                while True:  # until the restarted node answers on every connection and through the registry
                    try:
                        for _ in range(2 * len(banks)):
                            await direct_many()
                        await product()
                        break
                    except (ClientError, AssertionError):
                        if time.monotonic() > deadline:
                            raise SystemExit(f"bench: node {node} with --workers {workers} did not answer in 60 s")
                        await asyncio.sleep(0.5)
                log(f"round {rnd + 1}/{self.p['rounds']}: throughput with {workers} worker(s)")
                direct[workers].append(await throughput(direct_many, self.p["concurrency"], self.p["throughput_seconds"]))
                full[workers].append(await throughput(product, self.p["concurrency"], self.p["throughput_seconds"]))
                for b in banks:
                    await b.close()
        for workers in (1, 2):
            label = f"{workers}_worker{'s' if workers > 1 else ''}"
            self.fig(f"direct_throughput_{label}_c{self.p['concurrency']}", round(statistics.median(direct[workers])),
                     "calls/s")
            self.fig(f"full_path_throughput_{label}_c{self.p['concurrency']}", round(statistics.median(full[workers])),
                     "calls/s")

    async def replica_figures(self) -> None:
        """Registry replicas on one PostgreSQL database (bench/replicas.py)."""
        import replicas

        os.environ["XINYI_TEST_PG"] = self.pg  # where tests/testdb.py makes the registry's schema
        await replicas.measure(self, throughput=throughput, cpu_seconds=cpu_seconds, log=log)

    def run(self) -> dict:
        started = time.perf_counter()
        self.results["machine"] = {"python": platform.python_version(), "platform": platform.platform(),
                                   "cpus": os.cpu_count(), "cpu_model": _cpu_model(), "memory_gib": _memory_gib(),
                                   "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "load_avg_at_start": _load()}
        try:
            self.routing()
            self.audit_and_proofs()
            self.ingestion()
            asyncio.run(self.network_figures())
            self.procs.stop()  # the replicas' network has the cores to itself
            asyncio.run(self.replica_figures())
        finally:
            self.procs.stop()
            self.drop_schemas()
        self.results["machine"]["load_avg_at_end"] = _load()
        self.results["seconds"] = round(time.perf_counter() - started, 1)
        return self.results


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _load() -> list[float]:
    """1, 5 and 15 minute load averages: on a shared machine, the figures' context."""
    return [round(x, 2) for x in os.getloadavg()]


def _memory_gib() -> float:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        return float("nan")


def print_table(results: dict) -> None:
    m = results["machine"]
    print(f"\nXinyi benchmark ({results['profile']}), {m['cpus']} CPUs ({m['cpu_model']}), {m['memory_gib']} GiB, "
          f"{results['seconds']} s, load average {m['load_avg_at_start']} at the start, {m['load_avg_at_end']} at the end\n")
    width = max(len(k) for k in results["figures"])
    for name, f in results["figures"].items():
        print(f"  {name:<{width}}  {f['value']:>12} {f['unit']}")
    print("\nTargets:")
    for name, t in results["targets"].items():
        print(f"  [{'met' if t['met'] else 'MISSED'}] {name}: {t['detail']}")
    for note in results.get("notes", []):
        print(f"\nNote: {note}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a reduced set, under two minutes")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results.json")
    parser.add_argument("--pg", default=os.environ.get("XINYI_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test"))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="xinyi-bench-"))
    try:
        results = Bench("quick" if args.quick else "full", work, args.pg).run()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    args.out.write_text(json.dumps(results, indent=2, ensure_ascii=False))
    print_table(results)
    print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
