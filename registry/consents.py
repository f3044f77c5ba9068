"""Consents at the registry: enterprises grant, revoke and list them; the registry delivers
each to every node that routes for the enterprise. Nodes verify every signature themselves."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Awaitable, Callable

from xinyi.auditlog import AuditLog
from xinyi.clock import Clock
from xinyi.consent import (
    check_consent_id,
    check_grantable,
    to_record,
    verify_consent,
    verify_revocation,
)
from xinyi.envelope import verify
from xinyi.errors import Kind, Refusal
from xinyi.identity import QUERYING_ROLES, Principal, Role
from xinyi.policy import Action, Authorizer, Resource
from xinyi.store import AuditEntry, StoredConsent
from xinyi.v1 import consent_pb2, directory_pb2, envelope_pb2

from registry.directory import NetworkDirectory
from registry.store import RegistryStore

# deliver(node, consent, revocation or None, timeout s) -> True when the node accepted it.
Deliver = Callable[
    [directory_pb2.NodeEntry, envelope_pb2.SignedEnvelope, envelope_pb2.SignedEnvelope | None, float], Awaitable[bool]
]


@dataclass
class ConsentDesk:
    directory: NetworkDirectory
    store: RegistryStore
    authorizer: Authorizer
    deliver: Deliver
    audit_log: AuditLog
    clock: Clock
    delivery_timeout_s: float = 3.0

    async def grant(self, caller: Principal, envelope: envelope_pb2.SignedEnvelope, trace_id: str) -> consent_pb2.ConsentRecord:
        consent = None
        try:
            self._authorize(caller, self._peek_uscc(envelope, consent_pb2.ConsentBody, "consent"))
            consent = verify_consent(envelope, self.directory.trust, self.clock())
            check_grantable(consent, self.clock())
            await asyncio.to_thread(self.store.put_consent, consent)
        except Refusal as r:
            await self._audit(caller, consent, r, trace_id, "grant")
            raise
        delivered, pending = await self._deliver(consent, envelope, None)
        await self._audit(caller, consent, None, trace_id, "grant", delivered, pending)
        return to_record(consent, self.clock(), delivered_to=delivered, pending=pending)

    async def revoke(self, caller: Principal, revocation: envelope_pb2.SignedEnvelope, trace_id: str) -> consent_pb2.ConsentRecord:
        consent = None
        try:
            self._authorize(caller, self._peek_uscc(revocation, consent_pb2.RevocationBody, "revocation"))
            consent_id = self._peek(revocation, consent_pb2.RevocationBody, "revocation").consent_id
            check_consent_id(consent_id, "revocation.consent_id")
            consent = await asyncio.to_thread(self.store.get_consent, consent_id)
            body = verify_revocation(revocation, consent, self.directory.trust)
            if consent.revocation is not None:
                raise Refusal(Kind.PRECONDITION, "CONSENT_ALREADY_REVOKED", f"revocation.consent_id: consent {consent_id} is already revoked")
            await asyncio.to_thread(
                self.store.revoke_consent, consent_id, revocation.SerializeToString(deterministic=True), body.revoked_at_ms
            )
            consent = await asyncio.to_thread(self.store.get_consent, consent_id)
        except Refusal as r:
            await self._audit(caller, consent, r, trace_id, "revoke")
            raise
        original = envelope_pb2.SignedEnvelope.FromString(consent.envelope)
        delivered, pending = await self._deliver(consent, original, revocation)
        await self._audit(caller, consent, None, trace_id, "revoke", delivered, pending)
        return to_record(consent, self.clock(), delivered_to=delivered, pending=pending)

    async def status(self, caller: Principal, consent_id: str) -> consent_pb2.ConsentRecord:
        """The enterprise that gave a consent, and the institution it names, may see its status."""
        check_consent_id(consent_id)
        consent = await asyncio.to_thread(self.store.get_consent, consent_id)
        visible = consent is not None and (
            (caller.role is Role.ENTERPRISE and caller.id == consent.uscc)
            or (caller.role in QUERYING_ROLES and caller.id == consent.grantee)
        )
        if not visible:
            # The same answer for unknown and not-yours, so ids cannot be probed.
            raise Refusal(Kind.NOT_FOUND, "CONSENT_NOT_FOUND", f"consent_id: no consent {consent_id} is visible to {caller}")
        return to_record(consent, self.clock())

    async def list_own(self, caller: Principal) -> list[consent_pb2.ConsentRecord]:
        decision = self.authorizer.decide(caller, Action.MANAGE_CONSENT, Resource.enterprise(caller.id))
        if not decision.allowed:
            raise Refusal.denied("POLICY_DENIED", decision.reason, policy_ids=decision.policy_ids)
        consents = await asyncio.to_thread(self.store.consents_for, [caller.id])
        now = self.clock()
        return [to_record(c, now) for c in consents]

    async def consents_for_node(self, node_id: str) -> list[consent_pb2.ConsentRecord]:
        """Every consent a node routes for, for a node catching up after being offline."""
        consents = await asyncio.to_thread(self.store.consents_for)
        now = self.clock()
        return [to_record(c, now) for c in consents if node_id in self.directory.route(c.uscc)]

    # -- helpers -----------------------------------------------------------------------------
    def _authorize(self, caller: Principal, uscc: str) -> None:
        decision = self.authorizer.decide(caller, Action.MANAGE_CONSENT, Resource.enterprise(uscc))
        if not decision.allowed:
            raise Refusal.denied(
                "CONSENT_OF_ANOTHER_ENTERPRISE" if caller.role is Role.ENTERPRISE else "POLICY_DENIED",
                f"{caller} may not manage consents of {uscc}: {decision.reason}",
                field_name="consent.uscc",
                policy_ids=decision.policy_ids,
            )

    def _peek(self, envelope, body_cls, field):
        """The signed body, verified: who may manage what is decided on verified bytes only."""
        return verify(envelope, body_cls, self.directory.trust, roles={Role.ENTERPRISE}, field=field).message

    def _peek_uscc(self, envelope, body_cls, field) -> str:
        return self._peek(envelope, body_cls, field).uscc

    async def _deliver(self, consent: StoredConsent, envelope, revocation) -> tuple[list[str], list[str]]:
        node_ids = self.directory.route(consent.uscc)
        nodes = self.directory.current.nodes
        oks = await asyncio.gather(
            *(self.deliver(nodes[n], envelope, revocation, self.delivery_timeout_s) for n in node_ids)
        )
        delivered = [n for n, ok in zip(node_ids, oks) if ok]
        pending = [n for n, ok in zip(node_ids, oks) if not ok]
        return delivered, pending

    async def _audit(self, caller, consent, refusal, trace_id, verb, delivered=(), pending=()) -> None:
        detail = "" if refusal else f"delivered to {','.join(delivered) or 'none'}" + (
            f"; pending {','.join(pending)}" if pending else "")
        entry = AuditEntry.of(self.clock(), caller, f"{verb}_consent", refusal, allowed=verb, consent=consent,
                              trace_id=trace_id, detail=detail)
        await self.audit_log.append(entry)
