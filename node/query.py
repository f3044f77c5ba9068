"""How a node answers a query: a visible sequence of named steps.

    authenticate -> check replay -> authorize -> check consent -> fetch -> minimize
    -> sign and seal -> audit

Each step either passes or raises a Refusal. Whatever happens, the decision is written to the
node's audit log before anything leaves the node. This module imports no gRPC.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from xinyi.auditlog import AuditLog
from xinyi.clock import Clock, now_ms
from xinyi.consent import ConsentAsk, check_covers
from xinyi.envelope import Verified, sign
from xinyi.errors import Refusal
from xinyi.identity import Principal, Role
from xinyi.pki import Identity, TrustAnchor
from xinyi.policy import Action, Authorizer, Resource
from xinyi.query import check_query, refuse_replay
from xinyi.sealing import seal_to
from xinyi.store import AuditEntry
from xinyi.v1 import envelope_pb2, query_pb2, records_pb2

from node.store import NodeStore, Record


@dataclass
class _Trail:
    """What the audit record will say, filled in as the steps learn it."""

    caller: Principal
    trace_id: str
    relayed_by: str = ""
    uscc: str = ""
    categories: tuple[str, ...] = ()
    purpose: str = ""
    consent_id: str = ""
    request_hash: str = ""
    policy_ids: tuple[str, ...] = ()
    detail: str = ""


@dataclass(frozen=True)
class NodeAnswer:
    outcome: int  # query_pb2.NodeOutcome
    sealed: bytes


class QueryHandler:
    def __init__(
        self,
        identity: Identity,
        store: NodeStore,
        authorizer: Authorizer,
        audit_log: AuditLog,
        *,
        clock: Clock = now_ms,
    ) -> None:
        if identity.principal.role is not Role.NODE:
            raise ValueError(f"a node must run with a node identity, not {identity.principal}")
        self.identity = identity
        self.node_id = identity.principal.id
        self.store = store
        self.authorizer = authorizer
        self.audit_log = audit_log
        self.trust: TrustAnchor = identity.trust()
        self.clock = clock

    async def answer(self, envelope: envelope_pb2.SignedEnvelope, *, caller: Principal, trace_id: str) -> NodeAnswer:
        trail = _Trail(caller=caller, trace_id=trace_id)
        try:
            query = self.authenticate(envelope, trail)
            await self.check_replay(query)
            self.authorize(query, trail)
            await self.check_consent(query)
            records = await self.fetch(query.message)
            records = self.minimize(records, query.message)
            answer = self.sign_and_seal(query, records)
        except Refusal as refusal:
            await self.audit(trail, refusal=refusal)
            raise
        trail.detail = f"{len(records)} records"
        await self.audit(trail)
        return answer

    # -- the steps ---------------------------------------------------------------------------
    def authenticate(self, envelope: envelope_pb2.SignedEnvelope, trail: _Trail) -> Verified[query_pb2.QueryBody]:
        """The asker's signature and certificate, checked here whoever relayed the query."""
        query = check_query(envelope, self.trust, self.clock())
        q = query.message
        trail.uscc, trail.categories, trail.purpose = q.uscc, tuple(q.categories), q.purpose
        trail.consent_id, trail.request_hash = q.consent_id, query.body_hash.hex()
        if trail.caller != query.signer:
            # Only the registry may hand over a query someone else signed.
            decision = self.authorizer.decide(trail.caller, Action.RELAY_QUERY, Resource.network())
            if not decision.allowed:
                trail.policy_ids = decision.policy_ids
                raise Refusal.unauthenticated(
                    "query.signer_cert",
                    f"query was signed by {query.signer} but sent by {trail.caller}; only the registry relays queries",
                    "RELAY_NOT_ALLOWED",
                )
            trail.relayed_by = trail.caller.id
        trail.caller = query.signer  # from here on, the asker is the signer
        return query

    async def check_replay(self, query: Verified[query_pb2.QueryBody]) -> None:
        await refuse_replay(self.store, query, self.clock())

    def authorize(self, query: Verified[query_pb2.QueryBody], trail: _Trail) -> None:
        q = query.message
        decision = self.authorizer.decide(
            query.signer,
            Action.QUERY,
            Resource.enterprise(q.uscc),
            {"purpose": q.purpose, "categories": set(q.categories)},
        )
        trail.policy_ids = decision.policy_ids
        if not decision.allowed:
            raise Refusal.denied("POLICY_DENIED", f"query.purpose: {decision.reason}", field_name="query.purpose", policy_ids=decision.policy_ids)

    async def check_consent(self, query: Verified[query_pb2.QueryBody]) -> None:
        """An active consent must name the signer, the enterprise, the purpose, every category."""
        q = query.message
        consent = await asyncio.to_thread(self.store.get_consent, q.consent_id)
        ask = ConsentAsk(q.consent_id, query.signer, q.uscc, q.purpose, tuple(q.categories))
        check_covers(consent, ask, self.clock())

    async def fetch(self, q: query_pb2.QueryBody) -> list[Record]:
        """Only this node's own store is read."""
        return await asyncio.to_thread(self.store.fetch_records, q.uscc, list(q.categories))

    def minimize(self, records: list[Record], q: query_pb2.QueryBody) -> list[Record]:
        """Only the enterprise and categories asked and consented to leave the node."""
        asked = set(q.categories)
        return [r for r in records if r.uscc == q.uscc and r.category in asked]

    def sign_and_seal(self, query: Verified[query_pb2.QueryBody], records: list[Record]) -> NodeAnswer:
        q = query.message
        body = query_pb2.AnswerBody(
            request_hash=query.body_hash,
            node_id=self.node_id,
            uscc=q.uscc,
            consent_id=q.consent_id,
            records=[
                records_pb2.CreditRecord(category=r.category, as_of=r.as_of, source=r.source, fields_json=r.fields_json)
                for r in records
            ],
            answered_at_ms=self.clock(),
        )
        signed = sign(self.identity, body).SerializeToString(deterministic=True)
        outcome = query_pb2.NODE_OUTCOME_OK if records else query_pb2.NODE_OUTCOME_NO_DATA
        return NodeAnswer(outcome, seal_to(q.answer_key, signed))

    async def audit(self, trail: _Trail, refusal: Refusal | None = None) -> None:
        entry = AuditEntry(
            at_ms=self.clock(),
            caller_role=str(trail.caller.role),
            caller_id=trail.caller.id,
            relayed_by=trail.relayed_by,
            action=str(Action.QUERY),
            decision="deny" if refusal else "allow",
            uscc=trail.uscc,
            categories=trail.categories,
            purpose=trail.purpose,
            consent_id=trail.consent_id,
            policy_ids=(refusal.policy_ids if refusal and refusal.policy_ids else trail.policy_ids),
            reason=f"{refusal.reason}: {refusal.message}" if refusal else "answered",
            request_hash=trail.request_hash,
            trace_id=trail.trace_id,
            detail=trail.detail,
        )
        await self.audit_log.append(entry)
