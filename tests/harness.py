"""A real network for tests: registry and nodes as grpc.aio servers on loopback ports, with
real certificates from a fresh root, and the stores on the back end under test."""

from __future__ import annotations

import asyncio
import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

from node.server import NodeConfig, NodeServer
from node.store import Record
from registry.server import RegistryConfig, RegistryServer
from xinyi.client import AuditClient, BankClient, EnterpriseClient, OperatorHoldings
from xinyi.clock import now_ms
from xinyi.crypto.identity import Principal, Role
from xinyi.crypto.pki import Identity, RootCA
from xinyi.records import uscc as uscc_codes
from xinyi.rpc.channels import secure_channel

LICENCE = "B0014H144030001"  # a financial licence number, carried in bank and guarantor certificates
BANK = "914403001922038216"
OTHER_BANK = "91440300708461136T"
GUARANTOR = "91100000100003962T"
# Enterprises with valid USCCs: Jinjiang district (Chengdu, Sichuan), Pudong (Shanghai), Mianyang (Sichuan).
CHENGDU_FIRM = uscc_codes.with_check_character("91510104MA6CW8J7X")
SHANGHAI_FIRM = uscc_codes.with_check_character("91310115MA1K3Y9P2")
MIANYANG_FIRM = uscc_codes.with_check_character("91510700MA62TRE4X")
XINJIANG_FIRM = uscc_codes.with_check_character("91650100MA77QX8A1")  # no node serves 65xxxx

REG = {"name": "成都锦江测试科技有限公司", "legal_representative": "张三", "registered_capital": "1000000.00",
       "established": "2015-03-02", "status": "active"}


def tax(period: str, paid: str = "12000.00", rating: str = "A") -> dict:
    return {"period": period, "tax_paid": paid, "credit_rating": rating}


SEED: dict[str, list[Record]] = {
    "510100": [
        Record(CHENGDU_FIRM, "registration", "2026-06-30", "成都市市场监督管理局", REG),
        Record(CHENGDU_FIRM, "judicial", "2026-05-01", "成都市中级人民法院",
               {"case_no": "(2026)川01民初123号", "court": "成都市中级人民法院", "filed": "2026-04-01",
                "role": "defendant", "amount": "50000.00", "status": "pending"}),
    ],
    "510000": [
        Record(CHENGDU_FIRM, "tax", "2026-06-15", "国家税务总局四川省税务局", tax("2026-05")),
        Record(CHENGDU_FIRM, "tax", "2026-05-15", "国家税务总局四川省税务局", tax("2026-04")),
        Record(MIANYANG_FIRM, "tax", "2026-06-15", "国家税务总局四川省税务局", tax("2026-05", rating="B")),
    ],
    "310000": [
        Record(SHANGHAI_FIRM, "tax", "2026-06-15", "国家税务总局上海市税务局", tax("2026-05")),
        # A Sichuan firm's branch penalty in Shanghai: the node claims it holds records for it, and
        # start_network has the platform operator approve that claim.
        Record(MIANYANG_FIRM, "admin_penalty", "2026-03-10", "上海市市场监督管理局",
               {"decision_no": "沪市监罚〔2026〕12号", "authority": "上海市市场监督管理局", "decided": "2026-03-01",
                "reason": "虚假宣传", "amount": "20000.00"}),
    ],
}


@dataclass
class Network:
    root: RootCA
    tmp: Path
    databases: object  # conftest.Databases
    registry: RegistryServer | None = None
    nodes: dict[str, NodeServer] = field(default_factory=dict)
    _ids: dict[Principal, Identity] = field(default_factory=dict)
    _clients: list = field(default_factory=list)

    def identity(self, role: Role, principal_id: str) -> Identity:
        key = Principal(role, principal_id)
        if key not in self._ids:
            licence = LICENCE if role in (Role.BANK, Role.GUARANTOR) else ""
            self._ids[key] = self.root.issue(key, licence=licence)
        return self._ids[key]

    @property
    def registry_addr(self) -> str:
        return f"127.0.0.1:{self.registry.port}"

    def node_addr(self, node_id: str) -> str:
        return f"127.0.0.1:{self.nodes[node_id].port}"

    async def start_registry(self, *, metrics_listen: str | None = None) -> None:
        self.registry = RegistryServer(
            RegistryConfig(self.identity(Role.REGISTRY, "national"), "127.0.0.1:0", self.databases.new("registry"),
                           metrics_listen=metrics_listen)
        )
        await self.registry.start()

    async def start_node(self, node_id: str, records: list[Record] = (), *, register: bool = True,
                         metrics_listen: str | None = None) -> NodeServer:
        node = NodeServer(
            NodeConfig(self.identity(Role.NODE, node_id), "127.0.0.1:0", self.databases.new(f"node{node_id}"),
                       registry=self.registry_addr if register else None, metrics_listen=metrics_listen)
        )
        await asyncio.to_thread(node.store.create_schema)
        if records:
            await asyncio.to_thread(node.store.add_records, list(records), now_ms())
        await node.start()
        if register:
            await asyncio.wait_for(node.registered.wait(), 10)
        self.nodes[node_id] = node
        return node

    def _track(self, client):
        self._clients.append(client)
        return client

    def bank(self, bank_id: str = BANK, role: Role = Role.BANK) -> BankClient:
        return self._track(BankClient(self.identity(role, bank_id), self.registry_addr))

    async def register_institution(self, institution_id: str, role: Role = Role.BANK) -> None:
        """What a bank's, guarantor's or department's client does when it opens: make itself known
        to the network, so that consents may name it."""
        async with BankClient(self.identity(role, institution_id), self.registry_addr) as client:
            await client.register_institution()

    def operator(self) -> OperatorHoldings:
        """The platform operator, with the registry's own identity."""
        return self._track(OperatorHoldings(self.identity(Role.REGISTRY, "national"), self.registry_addr))

    def enterprise(self, uscc: str = CHENGDU_FIRM) -> EnterpriseClient:
        return self.enterprise_as(Role.ENTERPRISE, uscc)

    def enterprise_as(self, role: Role, principal_id: str) -> EnterpriseClient:
        """A consent client for an enterprise, or for a representative signing for one."""
        return self._track(EnterpriseClient(self.identity(role, principal_id), self.registry_addr))

    def auditor(self, target: str, expect, role: Role = Role.AUDITOR, principal_id: str = "audit-office") -> AuditClient:
        return self._track(AuditClient(self.identity(role, principal_id), target, expect))

    def channel(self, role: Role, principal_id: str, target: str, expect):
        return self._track(_ChannelCloser(secure_channel(self.identity(role, principal_id), target, expect)))

    async def grant(self, uscc: str = CHENGDU_FIRM, grantee: str = BANK, purpose: str = "credit_assessment",
                    categories=("registration", "tax", "judicial"), days: int = 30) -> str:
        record = await self.enterprise(uscc).grant(grantee, purpose, list(categories), days)
        return record.consent_id

    async def stop(self) -> None:
        for c in self._clients:
            await c.close()
        for node in self.nodes.values():
            await node.stop(0)
        if self.registry:
            await self.registry.stop(0)


class _ChannelCloser:
    def __init__(self, channel) -> None:
        self.channel = channel

    async def close(self) -> None:
        await self.channel.close()


# The institutions the tests name in consents; each registers as its client would when it opens.
INSTITUTIONS = ((BANK, Role.BANK), (OTHER_BANK, Role.BANK), (GUARANTOR, Role.GUARANTOR))


async def start_network(tmp: Path, databases, nodes=("510100", "510000", "310000"), *,
                        metrics_listen: str | None = None) -> Network:
    """`metrics_listen` (e.g. 127.0.0.1:0): every server also serves its Prometheus metrics."""
    net = Network(RootCA.create(), tmp, databases)
    await net.start_registry(metrics_listen=metrics_listen)
    for node_id in nodes:
        await net.start_node(node_id, SEED.get(node_id, []), metrics_listen=metrics_listen)
    for institution_id, role in INSTITUTIONS:
        await net.register_institution(institution_id, role)
    if "310000" in nodes:
        await net.operator().review("310000", MIANYANG_FIRM, approve=True)  # Shanghai's branch penalty record
    return net


def expired_identity(root: RootCA, principal: Principal) -> Identity:
    past = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=30)
    return root.issue(principal, not_before=past, not_after=past + dt.timedelta(days=1))


def load_test_policies(tmp: Path) -> Path:
    """The real policies, except that credit_assessment consents may be periodic with a huge
    ceiling: a load test needs thousands of fetches under one consent."""
    import shutil

    from xinyi.policy import DEFAULT_POLICY_DIR

    out = tmp / "load-test-policies"
    shutil.copytree(DEFAULT_POLICY_DIR, out, ignore=shutil.ignore_patterns("__pycache__", "*.py"))
    fair_use = out / "fair_use.toml"
    text = fair_use.read_text()
    head, rest = text.split("[purpose.credit_assessment]", 1)
    section, tail = rest.split("[purpose.", 1)
    section = section.replace('fetch_types = ["once"]',
                              'fetch_types = ["once", "periodic"]\nmax_fetches = 1000000\nfetch_period = "day"', 1)
    fair_use.write_text(head + "[purpose.credit_assessment]" + section + "[purpose." + tail)
    return out


LOAD_TEST_CONSENT = dict(fetch_type="periodic", max_fetches=1000000, fetch_period="day")
