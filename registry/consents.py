"""Consents at the registry: enterprises (or their representatives) grant them, enterprises
pause, resume and revoke them, and name representatives. The registry checks fair use, keeps
every signed statement, pushes each consent with its changes to every node that routes for the
enterprise at once, and lets nodes pull what they missed. Nodes verify every signature themselves.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Awaitable, Callable

from registry.directory import NetworkDirectory
from registry.routing import ANSWERED
from registry.store import NodeAnswers, RegistryStore
from xinyi.audit.entry import AuditEntry
from xinyi.audit.log import AuditLog
from xinyi.clock import Clock
from xinyi.crypto.envelope import verify
from xinyi.crypto.identity import QUERYING_ROLES, Principal, Role
from xinyi.errors import Kind, Refusal, Violation
from xinyi.policy import Action, Authorizer, Resource
from xinyi.privacy.consent import (
    STATUS_TO_PROTO,
    StoredConsent,
    apply_change,
    check_consent_id,
    check_grantable,
    status_of,
    to_record,
    verify_change,
    verify_consent,
    verify_delegation,
    why_unchanged,
)
from xinyi.privacy.fairuse import FairUse
from xinyi.relay import require_signer
from xinyi.v1 import consent_pb2, directory_pb2, envelope_pb2

# A page of SyncConsents: at most this many consents read, and about this many bytes sent
# (well under the 4 MiB message limit whatever the consents hold).
SYNC_PAGE_CONSENTS = 2000
SYNC_PAGE_BYTES = 1 << 20

# deliver(node, consent record, timeout s) -> True when the node accepted it.
Deliver = Callable[[directory_pb2.NodeEntry, consent_pb2.ConsentRecord, float], Awaitable[bool]]


@dataclass
class ConsentDesk:
    directory: NetworkDirectory
    store: RegistryStore
    authorizer: Authorizer
    deliver: Deliver
    audit_log: AuditLog
    fair_use: FairUse
    clock: Clock
    delivery_timeout_s: float = 3.0

    # -- the enterprise's (or representative's) actions ------------------------------------------
    async def grant(self, caller: Principal, envelope: envelope_pb2.SignedEnvelope, trace_id: str) -> consent_pb2.ConsentRecord:
        consent = None
        try:
            body = self._verified(envelope, consent_pb2.ConsentBody, "consent", roles={Role.ENTERPRISE, Role.REPRESENTATIVE})
            await self._authorize(caller, body.uscc)
            delegation = await self._delegation_for(caller, body.uscc)
            consent = verify_consent(envelope, self.directory.trust, self.clock(), delegation)
            require_signer(caller, Principal.parse(consent.signed_by), "consent")
            self._require_institution(consent.grantee, "consent.grantee")
            if consent.co_grantee:
                self._require_institution(consent.co_grantee, "consent.co_grantee")
            check_grantable(consent, self.clock(), self.fair_use)
            await asyncio.to_thread(self.store.put_consent, consent)
        except Refusal as r:
            await self._audit(caller, consent, r, trace_id, "grant")
            raise
        return await self._publish(caller, consent, trace_id, "grant")

    async def change(self, caller: Principal, envelope: envelope_pb2.SignedEnvelope, trace_id: str) -> consent_pb2.ConsentRecord:
        """Pause, resume or revoke, signed by the enterprise."""
        consent = None
        verb = "change"
        try:
            body = self._verified(envelope, consent_pb2.ConsentChangeBody, "change", roles={Role.ENTERPRISE})
            verb = {1: "pause", 2: "resume", 3: "revoke"}.get(body.action, "change")
            await self._authorize(caller, body.uscc)
            check_consent_id(body.consent_id, "change.consent_id")
            consent = await asyncio.to_thread(self.store.get_consent, body.consent_id)
            verify_change(envelope, consent, self.directory.trust)
            changed = apply_change(consent, body)
            if changed is not None and not await asyncio.to_thread(
                    self.store.put_change, changed, body.at_ms, envelope.SerializeToString(deterministic=True)):
                # Another replica applied a later change (or a revocation) meanwhile: decide on that.
                consent = await asyncio.to_thread(self.store.get_consent, body.consent_id)
                changed = apply_change(consent, body)
            if changed is None:
                raise Refusal(Kind.PRECONDITION, "CONSENT_NOT_CHANGED", f"change.action: {why_unchanged(consent, body, verb)}")
            consent = changed
        except Refusal as r:
            await self._audit(caller, consent, r, trace_id, verb)
            raise
        return await self._publish(caller, consent, trace_id, verb)

    async def delegate(self, caller: Principal, envelope: envelope_pb2.SignedEnvelope, trace_id: str) -> consent_pb2.DelegateResponse:
        body = None
        try:
            body = verify_delegation(envelope, self.directory.trust)
            await self._authorize(caller, body.uscc)
            if caller.role is not Role.ENTERPRISE:
                raise Refusal.denied("POLICY_DENIED", "only the enterprise itself names its representatives")
            if not body.revoked and body.valid_until_ms <= self.clock():
                raise Refusal.invalid("delegation.valid_until_ms", "is already in the past")
            await asyncio.to_thread(self.store.put_delegation, body.uscc, body.representative, body.valid_until_ms,
                                    body.revoked, body.issued_at_ms, envelope.SerializeToString(deterministic=True))
        except Refusal as r:
            await self.audit_log.append(AuditEntry.of(self.clock(), caller, "delegate", r, allowed="",
                                                      uscc=body.uscc if body else "", trace_id=trace_id))
            raise
        what = f"{'ended' if body.revoked else 'named'} representative {body.representative}"
        await self.audit_log.append(AuditEntry.of(self.clock(), caller, "delegate", None, allowed=what, uscc=body.uscc,
                                                  trace_id=trace_id))
        return consent_pb2.DelegateResponse(uscc=body.uscc, representative=body.representative, active=not body.revoked)

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
        return await self._view(consent)

    async def list_own(self, caller: Principal) -> list[consent_pb2.ConsentRecord]:
        decision = self.authorizer.decide(caller, Action.MANAGE_CONSENT, Resource.enterprise(caller.id))
        if not decision.allowed:
            raise Refusal.denied("POLICY_DENIED", decision.reason, policy_ids=decision.policy_ids)
        consents = await asyncio.to_thread(self.store.consents_for, [caller.id])
        return [await self._view(c) for c in consents]

    # -- nodes ----------------------------------------------------------------------------------
    async def changes_since(self, node_id: str, after: int) -> tuple[list[consent_pb2.ConsentRecord], int, int]:
        """The present state of each consent changed after event `after` and routed to this
        node, once each; the event to ask after next; the registry's newest event (the node
        has caught up when the first reaches the second). A page is bounded by consents read
        and by bytes, so a node catching up on a long history takes few, quick round trips."""
        await asyncio.to_thread(self.store.note_applied, node_id, after)  # what it pulled before is delivered
        head, rows = await asyncio.to_thread(self.store.consents_changed_after, after, SYNC_PAGE_CONSENTS)
        routed = [(seq, consent) for seq, _, consent in rows
                  if consent is not None and node_id in self.directory.route(consent.uscc)]
        details = await asyncio.to_thread(self.store.consent_details, [c.consent_id for _, c in routed])
        records, size, cut = [], 0, None
        now = self.clock()
        for seq, consent in routed:
            changes, uses, last_used = details[consent.consent_id]
            record = to_record(consent, now, changes=changes, uses=uses, last_used_ms=last_used)
            size += record.ByteSize()
            if records and size > SYNC_PAGE_BYTES:
                cut = seq  # this one and what follows go on the next page
                break
            records.append(record)
        if cut is not None:
            last = max((s for s, _, _ in rows if s < cut), default=after)
        elif len(rows) == SYNC_PAGE_CONSENTS:
            last = rows[-1][0]
        else:  # every consent changed after `after` is on this page, each in its present state
            last = max(head, rows[-1][0] if rows else after, after)
        await self._note_pulled(node_id, records, last)
        return records, last, head

    async def announce_route(self, node_id: str, uscc: str) -> None:
        """A node joined an enterprise's route (an approved holding): it gets the enterprise's
        consents now, and they are changes again for its next pull in case the push fails."""
        node = self.directory.current.nodes.get(node_id)
        for consent in await asyncio.to_thread(self.store.consents_for, [uscc]):
            await asyncio.to_thread(self.store.add_consent_event, consent.consent_id)
            if node is not None:
                await self.deliver(node, await self._record(consent), self.delivery_timeout_s)

    async def _note_pulled(self, node_id: str, records: list[consent_pb2.ConsentRecord], last: int) -> None:
        """The node has these once it asks for changes after `last` (the next pull says so)."""
        await asyncio.to_thread(self.store.note_deliveries,
                                [(r.consent_id, node_id, len(r.changes), last, False) for r in records])

    # -- helpers ----------------------------------------------------------------------------------
    def _verified(self, envelope, body_cls, field, roles):
        """The signed body, verified: who may do what is decided on verified bytes only."""
        return verify(envelope, body_cls, self.directory.trust, roles=roles, field=field).message

    def _require_institution(self, uscc: str, field: str) -> None:
        """Consents name only institutions that registered with the network (the signed directory
        lists them): never an enterprise, nor a code no institution holds."""
        if not self.directory.current.is_institution(uscc):
            why = ("is not a licensed institution known to the network; a bank, guarantor or government "
                   "department becomes known when it first connects to the registry")
            raise Refusal(Kind.PRECONDITION, "GRANTEE_NOT_AN_INSTITUTION", f"{field}: {why}", (Violation(field, why),))

    async def _authorize(self, caller: Principal, uscc: str) -> None:
        represents = (await asyncio.to_thread(self.store.represented_by, caller.id, self.clock())
                      if caller.role is Role.REPRESENTATIVE else frozenset())
        decision = self.authorizer.decide(caller, Action.MANAGE_CONSENT, Resource.enterprise(uscc), represents=represents)
        if not decision.allowed:
            raise Refusal.denied(
                "CONSENT_OF_ANOTHER_ENTERPRISE" if caller.role in (Role.ENTERPRISE, Role.REPRESENTATIVE) else "POLICY_DENIED",
                f"{caller} may manage only its own consents, or those of an enterprise it represents: {decision.reason}",
                field_name="consent.uscc",
                policy_ids=decision.policy_ids,
            )

    async def _delegation_for(self, caller: Principal, uscc: str) -> envelope_pb2.SignedEnvelope | None:
        if caller.role is not Role.REPRESENTATIVE:
            return None
        found = await asyncio.to_thread(self.store.delegation, uscc, caller.id)
        if found is None or found[1] or found[2] <= self.clock():
            raise Refusal.denied("NOT_DELEGATED", f"consent.signer_cert: {caller} holds no delegation in force from the "
                                 "enterprise the consent names", field_name="consent.signer_cert")
        return envelope_pb2.SignedEnvelope.FromString(found[0])

    async def _record(self, consent: StoredConsent) -> consent_pb2.ConsentRecord:
        """The consent as nodes receive it: the signed statements and the registry's count."""
        changes = await asyncio.to_thread(self.store.changes_of, consent.consent_id)
        uses, last = await asyncio.to_thread(self.store.use_stats, consent.consent_id)
        return to_record(consent, self.clock(), changes=changes, uses=uses, last_used_ms=last)

    async def _view(self, consent: StoredConsent) -> consent_pb2.ConsentRecord:
        """The consent as the enterprise and the grantee see it: with each node on its route,
        whether the node has it in its present state, and what the node answered under it."""
        changes = await asyncio.to_thread(self.store.changes_of, consent.consent_id)
        uses, last = await asyncio.to_thread(self.store.use_stats, consent.consent_id)
        deliveries = await asyncio.to_thread(self.store.deliveries_of, consent.consent_id)
        answers = await asyncio.to_thread(self.store.node_answers, consent.consent_id, ANSWERED)
        now, route = self.clock(), self.directory.route(consent.uscc)
        has_it = {n for n, (version, delivered) in deliveries.items() if delivered and version >= len(changes)}
        nodes = []
        for node_id in [*route, *sorted(set(answers) - set(route))]:
            a = answers.get(node_id, NodeAnswers())
            nodes.append(consent_pb2.ConsentNodeStatus(
                node_id=node_id, delivered=node_id in has_it, answers=a.answers, last_answered_ms=a.last_answered_ms,
                last_outcome=a.last_outcome, last_asked_ms=a.last_asked_ms,
                status=STATUS_TO_PROTO[status_of(consent, now, a.answers)]))
        # A once consent is spent when every node it reaches has answered under it, not when
        # one did and another was unreachable. (Uses routed before nodes' answers were kept
        # count as before.)
        spent = all(answers.get(n, NodeAnswers()).answers for n in route or answers) if answers else uses >= 1
        return to_record(consent, now, changes=changes, uses=uses, last_used_ms=last, spent=spent,
                         delivered_to=[n for n in route if n in has_it], pending=[n for n in route if n not in has_it],
                         nodes=nodes)

    async def _publish(self, caller, consent: StoredConsent, trace_id: str, verb: str) -> consent_pb2.ConsentRecord:
        """Record the event for pulling nodes, push to every routed node now, audit, answer."""
        seq = await asyncio.to_thread(self.store.add_consent_event, consent.consent_id)
        record = await self._record(consent)
        node_ids = self.directory.route(consent.uscc)
        nodes = self.directory.current.nodes
        oks = await asyncio.gather(*(self.deliver(nodes[n], record, self.delivery_timeout_s) for n in node_ids))
        # A node that did not acknowledge the push has it once it pulled past this event.
        await asyncio.to_thread(self.store.note_deliveries,
                                [(consent.consent_id, n, len(record.changes), seq, ok) for n, ok in zip(node_ids, oks)])
        delivered = [n for n, ok in zip(node_ids, oks) if ok]
        pending = [n for n, ok in zip(node_ids, oks) if not ok]
        await self._audit(caller, consent, None, trace_id, verb, delivered, pending)
        return await self._view(consent)

    async def _audit(self, caller, consent, refusal, trace_id, verb, delivered=(), pending=()) -> None:
        detail = "" if refusal else f"delivered to {','.join(delivered) or 'none'}" + (
            f"; pending {','.join(pending)}" if pending else "")
        entry = AuditEntry.of(self.clock(), caller, f"{verb}_consent", refusal, allowed=verb, consent=consent,
                              trace_id=trace_id, detail=detail)
        await self.audit_log.append(entry)
