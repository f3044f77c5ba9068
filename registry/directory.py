"""The registry's view of the network: registered nodes, the signed directory, who holds what.

Routing reads only the signed directory: an enterprise's route is the nodes of its area plus
the out-of-area holdings the platform operator approved (registry/membership.py), so that a
node cannot put itself on an enterprise's route by saying it holds records for it.
"""

from __future__ import annotations

import asyncio
from typing import Callable

from registry.store import DirectoryContent, EndpointTaken, NodeRow, Registration, RegistryStore
from xinyi.clock import Clock
from xinyi.crypto.envelope import sign
from xinyi.crypto.identity import Principal
from xinyi.crypto.pki import Identity, PKIError, TrustAnchor
from xinyi.directory import Directory
from xinyi.errors import Kind, Refusal
from xinyi.records import uscc as uscc_codes
from xinyi.v1 import directory_pb2, envelope_pb2, scoring_pb2

MAX_ENDPOINT = 255  # characters of host:port
# Out-of-area claims one node may make (a registration message holds at most ~200,000 USCCs).
MAX_CLAIMS = 50_000


class NetworkDirectory:
    """Keeps the signed directory current; re-signs only when what it publishes changes. With
    several replicas, the first to need a version signs it and the others serve those bytes."""

    def __init__(self, identity: Identity, store: RegistryStore, clock: Clock) -> None:
        self.identity = identity
        self.trust: TrustAnchor = identity.trust()
        self.store = store
        self.clock = clock
        self._current: Directory | None = None
        self._lock = asyncio.Lock()
        self.on_registered: Callable[[str], None] = lambda node_id: None  # the registry renews its channels

    async def load(self) -> None:
        """At start and after the registry's identity was renewed (SIGHUP): a new signing key
        retires the recorded one into the directory's registry_keys."""
        async with self._lock:
            await asyncio.to_thread(self.store.note_own_key, str(self.identity.principal),
                                    self.identity.signing_cert_der, self.clock())
            await self._rebuild()

    async def refresh(self) -> Directory:
        """Re-sign after a change that is not a registration (a model approval, a reviewed claim,
        a new institution)."""
        async with self._lock:
            await self._rebuild()
        return self.current

    async def register(self, node: Principal, endpoint: str, signing_cert: bytes,
                       held_usccs: list[str]) -> tuple[Directory, Registration]:
        """A node (authenticated by its TLS certificate) registers its endpoint and signing key,
        and claims the enterprises outside its own area it holds records for (pending until the
        platform operator approves them)."""
        _check_endpoint(endpoint)
        claimed = _outside_claims(node.id, held_usccs)
        signer, _ = self._verify_signing_cert(signing_cert)
        if signer != node:
            raise Refusal.unauthenticated(
                "signing_cert", f"names {signer}, but the caller is {node}; a node registers only its own key", "WRONG_NODE_KEY"
            )
        row = NodeRow(node.id, endpoint, signing_cert, self.clock())
        async with self._lock:
            try:
                registration = await asyncio.to_thread(self.store.upsert_node, row, claimed)
            except EndpointTaken:
                # Never say whose it is: a refusal names no third party.
                raise Refusal(Kind.DENIED, "ENDPOINT_TAKEN", "endpoint: is registered by another node; a node "
                              "registers only an endpoint of its own") from None
            await self._rebuild()
        self.on_registered(node.id)
        assert self._current is not None
        return self._current, registration

    def _verify_signing_cert(self, der: bytes):
        try:
            return self.trust.verify_signing_cert(der)
        except PKIError as e:
            raise Refusal.unauthenticated("signing_cert", str(e), "BAD_CERTIFICATE") from None

    async def follow(self) -> bool:
        """Take up a newer version, signed by any replica (the registry's follower calls this
        several times a second). True when the directory changed."""
        async with self._lock:
            before = self._current
            await self._rebuild()
        return self._current is not before

    async def _rebuild(self) -> None:
        """Serve the newest version: the directory a replica signed for it already, else one
        signed here (registry/store.py decides which, under the version's lock)."""
        have = self._current.version if self._current is not None else -1
        newest = await asyncio.to_thread(self.store.signed_directory_at, have, self._sign, self.clock())
        if newest is None:
            return
        _, envelope = newest
        self._current = Directory.verify(envelope_pb2.SignedEnvelope.FromString(envelope), self.trust)

    def _sign(self, content: DirectoryContent) -> bytes:
        history = content.key_histories
        body = directory_pb2.DirectoryBody(
            version=content.version,
            issued_at_ms=self.clock(),
            registry_id=self.identity.principal.id,
            nodes=[
                directory_pb2.NodeEntry(
                    node_id=n.node_id, endpoint=n.endpoint, signing_cert=n.signing_cert, registered_at_ms=n.registered_at_ms,
                    previous_keys=_periods(history.get(f"node/{n.node_id}", ())),
                )
                for n in content.nodes
            ],
            registry_keys=_periods(history.get(str(self.identity.principal), ())),
            models=[scoring_pb2.ModelApproval.FromString(a) for a in content.approvals],
            holdings=[directory_pb2.HoldingEntry(uscc=h.uscc, node_id=h.node_id, approved_at_ms=h.decided_at_ms)
                      for h in content.holdings],
            institutions=[directory_pb2.InstitutionEntry(id=i.institution_id, role=i.role, licence=i.licence,
                                                         registered_at_ms=i.registered_at_ms) for i in content.institutions],
            authorities=content.authorities,
            revocation_lists=content.revocation_lists,
        )
        return sign(self.identity, body).SerializeToString(deterministic=True)

    @property
    def current(self) -> Directory:
        if self._current is None:
            raise RuntimeError("directory not loaded; call load() first")
        return self._current

    def route(self, uscc: str) -> list[str]:
        """The nodes to ask about an enterprise, from the signed directory alone."""
        return self.current.route(uscc)


def _periods(rows) -> list[directory_pb2.KeyPeriod]:
    return [directory_pb2.KeyPeriod(signing_cert=cert, valid_from_ms=since, valid_until_ms=until) for cert, since, until in rows]


def _check_endpoint(endpoint: str) -> None:
    why = "must be host:port where the registry and banks reach this node"
    if not endpoint or len(endpoint) > MAX_ENDPOINT or not endpoint.isprintable() or " " in endpoint:
        raise Refusal.invalid("endpoint", f"{why}, at most {MAX_ENDPOINT} printable characters")
    host, _, port = endpoint.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise Refusal.invalid("endpoint", why)


def _outside_claims(node_id: str, held_usccs: list[str]) -> list[str]:
    """The valid USCCs a node claims outside its own area (its own area is routed anyway)."""
    if len(held_usccs) > MAX_CLAIMS:
        raise Refusal(Kind.TOO_LARGE, "TOO_MANY_CLAIMS",
                      f"held_usccs: {len(held_usccs)} enterprises; at most {MAX_CLAIMS} per node")
    for i, code in enumerate(held_usccs):
        problem = uscc_codes.problem(code)
        if problem:
            raise Refusal.invalid(f"held_usccs[{i}]", f"is not a USCC: {problem}")
    return sorted({u for u in held_usccs if not uscc_codes.in_area_of(node_id, u)})
