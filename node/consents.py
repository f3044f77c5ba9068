"""Consents arriving at a node: pushed by the registry, each signature verified here."""

from __future__ import annotations

import asyncio

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
    def __init__(self, store: NodeStore, authorizer: Authorizer, trust: TrustAnchor, clock: Clock) -> None:
        self.store = store
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
        except Refusal as r:
            await self._audit(caller, consent, "deny", f"{r.reason}: {r.message}", decision.policy_ids, trace_id)
            raise
        status = status_of(await asyncio.to_thread(self.store.get_consent, consent.consent_id), self.clock())
        await self._audit(caller, consent, "allow", f"consent {status}", decision.policy_ids, trace_id)
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

    async def _audit(self, caller, consent, decision, reason, policy_ids, trace_id) -> None:
        await asyncio.to_thread(
            self.store.append_audit,
            AuditEntry(
                at_ms=self.clock(),
                caller_role=str(caller.role),
                caller_id=caller.id,
                action=str(Action.DELIVER_CONSENT),
                decision=decision,
                uscc=consent.uscc if consent else "",
                categories=consent.categories if consent else (),
                purpose=consent.purpose if consent else "",
                consent_id=consent.consent_id if consent else "",
                policy_ids=policy_ids,
                reason=reason,
                trace_id=trace_id,
            ),
        )
