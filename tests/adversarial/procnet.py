"""A network of real processes for the adversarial suite: the registry and the nodes started with
the real CLI (tests/processes.py `Proc`), real certificates from a fresh root, stores on the back
end under test; the bank, the enterprise and the auditor are clients in the test process.

Each process can be SIGKILLed and started again on the same store, as an operator's machine
would crash and come back.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from harness import BANK, CHENGDU_FIRM, GUARANTOR, LICENCE, OTHER_BANK, SEED, load_test_policies
from processes import Proc, free_port, wait_registered

from node.store import NodeStore
from xinyi.client import BankClient, EnterpriseClient
from xinyi.clock import now_ms
from xinyi.crypto.identity import Principal, Role
from xinyi.crypto.pki import Identity, RootCA

PURPOSE = "credit_assessment"
CATEGORIES = ["registration", "tax", "judicial"]
# Chengdu (510100) and Sichuan (510000) both route the Chengdu firm: one can fail while the other answers.
NODES = ("510100", "510000")
INSTITUTIONS = ((BANK, Role.BANK), (OTHER_BANK, Role.BANK), (GUARANTOR, Role.GUARANTOR))
# A consent the load can use thousands of times (load_test_policies allows it for credit_assessment).
MANY = dict(fetch_type="periodic", max_fetches=1000000, fetch_period="day")


class ProcNetwork:
    """Registry + nodes as `xinyi ... serve` processes; `db_urls` maps "registry" and each node id
    to the URL of its store (a node whose URL is missing gets a fresh one from `databases`).
    `replicas`: registry processes on the one registry store ("registry", "registry-2", ...),
    each on its own address; the nodes and clients know them all (repeated --registry) unless
    told one. `start()` starts the first `start_replicas`."""

    def __init__(self, tmp: Path, databases=None, *, nodes=NODES, db_urls: dict[str, str] | None = None,
                 seed: bool = True, replicas: int = 1, start_replicas: int | None = None) -> None:
        self.tmp = tmp
        self.node_ids = tuple(nodes)
        self.logs = tmp / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.certs = tmp / "certs"
        self.root = RootCA.create()
        self.root.save(self.certs)
        self._ids: dict[Principal, Identity] = {}
        self.policies = load_test_policies(tmp)
        urls = dict(db_urls or {})
        for name in ("registry", *self.node_ids):
            if name not in urls:
                urls[name] = databases.new(name if name == "registry" else f"node{name}")
        self.db_urls = urls
        self.registry_addrs = [f"127.0.0.1:{free_port()}" for _ in range(replicas)]
        self.registry_addr = self.registry_addrs[0]
        self.node_addrs = {n: f"127.0.0.1:{free_port()}" for n in self.node_ids}
        self.registries = [Proc("registry" if i == 0 else f"registry-{i + 1}",
                                ["registry", "serve", "--identity", self._dir(Role.REGISTRY, "national"),
                                 "--listen", addr, "--db", urls["registry"], "--policies", str(self.policies)], self.logs)
                           for i, addr in enumerate(self.registry_addrs)]
        self.registry = self.registries[0]
        self._start_replicas = replicas if start_replicas is None else start_replicas
        knows = [arg for addr in self.registry_addrs for arg in ("--registry", addr)]
        self.nodes = {n: Proc(f"node-{n}", ["node", "serve", "--identity", self._dir(Role.NODE, n),
                                            "--listen", self.node_addrs[n], *knows,
                                            "--db", urls[n], "--policies", str(self.policies)], self.logs)
                      for n in self.node_ids}
        self._seed = seed
        self._clients: list = []

    # -- identities ---------------------------------------------------------------------------
    def identity(self, role: Role, principal_id: str) -> Identity:
        key = Principal(role, principal_id)
        if key not in self._ids:
            licence = LICENCE if role in (Role.BANK, Role.GUARANTOR) else ""
            self._ids[key] = self.root.issue(key, licence=licence)
        return self._ids[key]

    def _dir(self, role: Role, principal_id: str) -> str:
        return str(self.identity(role, principal_id).save(self.certs))

    @property
    def bank_identity(self) -> Identity:
        return self.identity(Role.BANK, BANK)

    @property
    def auditor(self) -> Identity:
        return self.identity(Role.AUDITOR, "audit-office")

    @property
    def procs(self) -> list[Proc]:
        return [*self.registries, *self.nodes.values()]

    # -- processes ----------------------------------------------------------------------------
    def seed(self) -> None:
        """The seeded records of each node that concern the Chengdu firm."""
        for n in self.node_ids:
            store = NodeStore(self.db_urls[n])
            try:
                store.create_schema()
                store.add_records([r for r in SEED.get(n, []) if r.uscc == CHENGDU_FIRM], now_ms())
            finally:
                store.close()

    async def start(self) -> "ProcNetwork":
        if self._seed:
            await asyncio.to_thread(self.seed)
        first, *others = self.registries[:self._start_replicas]
        first.start()
        if others:  # the first makes the schema; the others find it
            await first.wait_for_log("serving on port", timeout=20)
            for replica in others:
                replica.start()
            for replica in others:
                await replica.wait_for_log("serving on port", timeout=20)
        for n in self.node_ids:
            self.nodes[n].start()
        for n in self.node_ids:
            await self.wait_registered(n)
        for institution, role in INSTITUTIONS:
            # A bank's client opening makes the bank known to the network (where the network
            # asks institutions to register before consents may name them).
            async with BankClient(self.identity(role, institution), self.registry_addrs) as client:
                await asyncio.wait_for(client.directory(), 10)
        return self

    async def wait_registered(self, node: str, timeout: float = 20.0) -> None:
        await wait_registered(self.bank_identity, self.auditor, self.registry_addrs, self.node_addrs[node], self.procs,
                              timeout=timeout, node=node)

    def _proc(self, name: str) -> Proc:
        return next((r for r in self.registries if r.name == name), None) or self.nodes[name]

    def kill(self, name: str) -> None:
        """SIGKILL a registry replica ("registry", "registry-2", ...) or a node, and reap it."""
        proc = self._proc(name)
        proc.kill()
        assert proc.proc.returncode == -9, f"{proc.name} was not SIGKILLed (status {proc.proc.returncode})"

    def start_again(self, name: str) -> None:
        """The same command on the same store, as after a crash."""
        self._proc(name).start()

    def dump_logs(self) -> str:
        return "\n".join(p.dump_logs() for p in self.procs)

    @contextlib.asynccontextmanager
    async def watched(self):
        """`async with net.watched():` every process stopped at the end, and their logs printed
        when the test failed."""
        try:
            yield self
        except BaseException:
            print(self.dump_logs())
            raise
        finally:
            await self.stop()

    async def stop(self) -> None:
        for c in self._clients:
            await c.close()
        for p in self.procs:
            p.kill()

    # -- clients -----------------------------------------------------------------------------
    def bank(self, bank_id: str = BANK, registry: str = "") -> BankClient:
        """A bank's client of the registry replica at `registry`, or of them all (failing over)."""
        client = BankClient(self.identity(Role.BANK, bank_id), registry or self.registry_addrs)
        self._clients.append(client)
        return client

    def enterprise(self, uscc: str = CHENGDU_FIRM, registry: str = "") -> EnterpriseClient:
        client = EnterpriseClient(self.identity(Role.ENTERPRISE, uscc), registry or self.registry_addrs)
        self._clients.append(client)
        return client

    async def grant(self, *, grantee: str = BANK, categories=CATEGORIES, once: bool = False, deliver_to=()) -> str:
        """A consent of the Chengdu firm for the bank; `deliver_to`: nodes that must have it."""
        extra = {} if once else MANY
        record = await asyncio.wait_for(self.enterprise().grant(grantee, PURPOSE, list(categories), 30, **extra), 15)
        missing = set(deliver_to) - set(record.delivered_to)
        assert not missing, f"consent {record.consent_id} was not delivered to {sorted(missing)}: {record}"
        return record.consent_id


async def started(tmp: Path, databases=None, **kwargs) -> ProcNetwork:
    """A started network; its logs are printed when starting fails."""
    net = ProcNetwork(tmp, databases, **kwargs)
    try:
        return await net.start()
    except BaseException:
        print(net.dump_logs())
        await net.stop()
        raise
