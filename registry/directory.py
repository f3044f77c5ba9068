"""The registry's view of the network: registered nodes, the signed directory, who holds what."""

from __future__ import annotations

import asyncio
from typing import Callable

from registry.store import NodeRow, RegistryStore
from xinyi.clock import Clock
from xinyi.crypto.envelope import sign
from xinyi.crypto.identity import Principal
from xinyi.crypto.pki import Identity, PKIError, TrustAnchor
from xinyi.directory import Directory
from xinyi.errors import Refusal
from xinyi.v1 import directory_pb2, scoring_pb2


class NetworkDirectory:
    """Keeps the signed directory current; re-signs only when a node's endpoint or key changes."""

    def __init__(self, identity: Identity, store: RegistryStore, clock: Clock) -> None:
        self.identity = identity
        self.trust: TrustAnchor = identity.trust()
        self.store = store
        self.clock = clock
        self._current: Directory | None = None
        self._holdings: dict[str, frozenset[str]] = {}
        self._lock = asyncio.Lock()
        self.on_registered: Callable[[str], None] = lambda node_id: None  # the registry renews its channels

    async def load(self) -> None:
        async with self._lock:
            await self._rebuild()

    async def refresh(self) -> Directory:
        """Re-sign after a change that is not a registration (a model approval)."""
        async with self._lock:
            await self._rebuild()
        return self.current

    async def register(self, node: Principal, endpoint: str, signing_cert: bytes, held_usccs: list[str]) -> Directory:
        """A node (authenticated by its TLS certificate) registers its endpoint and signing key."""
        if not endpoint or ":" not in endpoint:
            raise Refusal.invalid("endpoint", "must be host:port where the registry and banks reach this node")
        signer, _ = self._verify_signing_cert(signing_cert)
        if signer != node:
            raise Refusal.unauthenticated(
                "signing_cert", f"names {signer}, but the caller is {node}; a node registers only its own key", "WRONG_NODE_KEY"
            )
        row = NodeRow(node.id, endpoint, signing_cert, self.clock())
        async with self._lock:
            await asyncio.to_thread(self.store.upsert_node, row, list(held_usccs))
            await self._rebuild()
        self.on_registered(node.id)
        assert self._current is not None
        return self._current

    def _verify_signing_cert(self, der: bytes):
        try:
            return self.trust.verify_signing_cert(der)
        except PKIError as e:
            raise Refusal.unauthenticated("signing_cert", str(e), "BAD_CERTIFICATE") from None

    async def _rebuild(self) -> None:
        version, nodes = await asyncio.to_thread(self.store.list_nodes)
        approvals = await asyncio.to_thread(self.store.approved_models)
        self._holdings = await asyncio.to_thread(self.store.all_holdings)
        if self._current is not None and self._current.version == version:
            return
        body = directory_pb2.DirectoryBody(
            version=version,
            issued_at_ms=self.clock(),
            registry_id=self.identity.principal.id,
            nodes=[
                directory_pb2.NodeEntry(
                    node_id=n.node_id, endpoint=n.endpoint, signing_cert=n.signing_cert, registered_at_ms=n.registered_at_ms
                )
                for n in nodes
            ],
            models=[scoring_pb2.ModelApproval.FromString(a) for a in approvals],
        )
        self._current = Directory.verify(sign(self.identity, body), self.trust)

    @property
    def current(self) -> Directory:
        if self._current is None:
            raise RuntimeError("directory not loaded; call load() first")
        return self._current

    def route(self, uscc: str) -> list[str]:
        return self.current.route(uscc, self._holdings.get(uscc, frozenset()))
