"""Consents arriving at a node: pushed by the registry, each signature verified here."""

from __future__ import annotations

import asyncio

from xinyi.auditlog import AuditLog
from xinyi.clock import Clock
from xinyi.consent import Status, status_of, verify_consent, verify_revocation
from xinyi.errors import Refusal
from xinyi.identity import Principal
from xinyi.pki import TrustAnchor
from xinyi.policy import Action, Authorizer, Resource
from xinyi.store import AuditEntry, StoredConsent
from xinyi.v1 import envelope_pb2

from node.store import NodeStore


class ConsentInbox:
    def __init__(self, store: NodeStore, authorizer: Authorizer, trust: TrustAnchor, audit_log: AuditLog, clock: Clock) -> None:
        self.store = store
        self.audit_log = audit_log
        self.authorizer = authorizer
        self.trust = trust
        self.clock = clock

    async def deliver(
        self,
        caller: Principal,
        consent_env: envelope_pb2.SignedEnvelope,
        revocation_env: envelope_pb2.SignedEnvelope | None,
        *,
        trace_id: str = "",
    ) -> tuple[str, Status]:
        decision = self.authorizer.decide(caller, Action.DELIVER_CONSENT, Resource.network())
        consent: StoredConsent | None = None
        try:
            if not decision.allowed:
                raise Refusal.denied("POLICY_DENIED", decision.reason, policy_ids=decision.policy_ids)
            consent = await self.accept(consent_env, revocation_env)
            status = status_of(await asyncio.to_thread(self.store.get_consent, consent.consent_id), self.clock())
        except Refusal as r:
            await self._audit(caller, consent, r, "", decision.policy_ids, trace_id)
            raise
        await self._audit(caller, consent, None, f"consent {status}", decision.policy_ids, trace_id)
        return consent.consent_id, status

    async def accept(
        self, consent_env: envelope_pb2.SignedEnvelope, revocation_env: envelope_pb2.SignedEnvelope | None
    ) -> StoredConsent:
        """Verify and store a consent (and its revocation). Idempotent."""
        now = self.clock()
        consent = verify_consent(consent_env, self.trust, now)
        await asyncio.to_thread(self.store.put_consent, consent)
        if revocation_env is not None:
            body = verify_revocation(revocation_env, consent, self.trust)
            await asyncio.to_thread(
                self.store.revoke_consent, consent.consent_id, revocation_env.SerializeToString(deterministic=True), body.revoked_at_ms
            )
        return consent

    async def _audit(self, caller, consent, refusal, allowed, policy_ids, trace_id) -> None:
        entry = AuditEntry.of(self.clock(), caller, str(Action.DELIVER_CONSENT), refusal, allowed=allowed,
                              consent=consent, policy_ids=policy_ids, trace_id=trace_id)
        await self.audit_log.append(entry)
