"""A registry and a node in one process, for the measurements that look inside it
(`make profile`'s steps, bench/heap.py)."""

from __future__ import annotations

import asyncio
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from harness import BANK, CHENGDU_FIRM, LICENCE, SEED, load_test_policies  # noqa: E402

from xinyi.clock import now_ms  # noqa: E402
from xinyi.crypto.identity import Principal, Role  # noqa: E402
from xinyi.crypto.pki import RootCA  # noqa: E402


class OneProcessNetwork:
    """A registry and a Chengdu node in this process (SQLite, mutual TLS on loopback, the
    load-test policies), a registered bank and the Chengdu firm's enterprise client."""

    async def __aenter__(self) -> "OneProcessNetwork":
        from node.server import NodeConfig, NodeServer
        from registry.server import RegistryConfig, RegistryServer
        from xinyi.client import BankClient, EnterpriseClient

        work = Path(tempfile.mkdtemp(prefix="xinyi-one-process-"))
        self._work = work
        root = RootCA.create()
        policies = load_test_policies(work)
        self.registry = RegistryServer(RegistryConfig(root.issue(Principal(Role.REGISTRY, "national")), "127.0.0.1:0",
                                                      f"sqlite:///{work / 'registry.db'}", policy_dir=policies))
        await self.registry.start()
        address = f"127.0.0.1:{self.registry.port}"
        self.node = NodeServer(NodeConfig(root.issue(Principal(Role.NODE, "510100")), "127.0.0.1:0",
                                          f"sqlite:///{work / 'node.db'}", registry=address, policy_dir=policies))
        await asyncio.to_thread(self.node.store.create_schema)
        await asyncio.to_thread(self.node.store.add_records, SEED["510100"], now_ms())
        await self.node.start()
        await asyncio.wait_for(self.node.registered.wait(), 10)
        self.bank = BankClient(root.issue(Principal(Role.BANK, BANK), licence=LICENCE), address)
        self.enterprise = EnterpriseClient(root.issue(Principal(Role.ENTERPRISE, CHENGDU_FIRM)), address)
        await self.bank.register_institution()  # consents may name only institutions known to the network
        return self

    async def __aexit__(self, *_) -> None:
        await self.bank.close()
        await self.enterprise.close()
        await self.node.stop()
        await self.registry.stop()
        shutil.rmtree(self._work, ignore_errors=True)
