"""How a node answers a query: a visible sequence of named steps.

    authenticate -> check replay -> authorize -> check consent -> fetch -> minimize
    -> sign and seal -> audit

An enterprise reading its own records (purpose self_access) takes the same path with its own
middle steps: authorize (the signing certificate's USCC is the one asked about, then policy)
-> count against the self-access cap instead of a consent -> fetch every record it has here,
whatever its age -> minimize_own (retention, no masking of its own filings).

Each step either passes or raises a Refusal. Whatever happens, the decision is written to the
node's audit log before anything leaves the node. This module imports no gRPC.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
from dataclasses import dataclass, field

from node.consents import ConsentFreshness
from node.store import NodeStore, Record
from xinyi.audit.entry import AuditEntry
from xinyi.audit.log import AuditLog
from xinyi.clock import Clock, now_ms
from xinyi.crypto.envelope import Verified, sign
from xinyi.crypto.identity import Principal, Role
from xinyi.crypto.pki import Identity, TrustAnchor, licence_of
from xinyi.crypto.sealing import seal_to
from xinyi.errors import Refusal, bounded, is_store_unavailable
from xinyi.policy import Action, Authorizer, Resource
from xinyi.privacy.consent import CHINA, ConsentAsk, StoredConsent, check_covers, is_joint_for, use_refusal
from xinyi.privacy.fairuse import SelfAccessRule
from xinyi.privacy.minimize import MinimizationRules, minimize, months_before
from xinyi.query import (
    check_query,
    check_self_access,
    is_self_access,
    replay_guard_for,
    self_access_key,
    use_ledger_for,
)
from xinyi.records.vocab import SELF_ACCESS
from xinyi.relay import relayed_by
from xinyi.v1 import envelope_pb2, query_pb2, records_pb2

log = logging.getLogger("xinyi.node")

# The steps of QueryHandler.answer, by method name, in order: timed by `make profile` and by
# --metrics-listen (xinyi.metrics), which wrap these methods.
STEPS = ("authenticate", "check_replay", "lookup_consent", "authorize", "check_consent", "fetch", "minimize",
         "sign_and_seal", "audit")


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
    extras: list = field(default_factory=list)  # the nonce, made durable with the audit entry
    use: tuple[str, dict] | None = None  # the consent use reserved; durable only with an answer's audit entry


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
        rules: MinimizationRules,
        *,
        clock: Clock = now_ms,
        freshness: ConsentFreshness | None = None,
        self_access: SelfAccessRule | None = None,
    ) -> None:
        if identity.principal.role is not Role.NODE:
            raise ValueError(f"a node must run with a node identity, not {identity.principal}")
        self.identity = identity
        self.node_id = identity.principal.id
        self.store = store
        self.authorizer = authorizer
        self.audit_log = audit_log
        self.rules = rules
        self.trust: TrustAnchor = identity.trust()
        self.clock = clock
        self.freshness = freshness  # None: a node with no registry has no one to confirm consents
        self.self_access = self_access or SelfAccessRule()  # the cap on enterprises reading their own records
        self._held: tuple[int, frozenset[str]] | None = None  # (when looked, what): None until the first look
        # Loaded from the store at start (NodeServer.start); on a store other processes share
        # (PostgreSQL), the database decides both.
        self.replay = replay_guard_for(store)
        self.uses = use_ledger_for(store)
        self._answering: set[asyncio.Task] = set()  # the calls inside answer(), for drain()

    async def answer(self, envelope: envelope_pb2.SignedEnvelope, *, caller: Principal, trace_id: str) -> NodeAnswer:
        task = asyncio.current_task()
        self._answering.add(task)
        try:
            return await self._answer(envelope, _Trail(caller=caller, trace_id=trace_id))
        finally:
            self._answering.discard(task)

    async def drain(self, timeout: float) -> None:
        """Wait (at most `timeout` seconds) for the queries still inside answer() to finish. A
        server stopping cancels them, and each then writes its audit entry: the audit log must
        stay open until they have."""
        if self._answering:  # (called by NodeServer.stop, never from inside answer())
            await asyncio.wait(set(self._answering), timeout=timeout)

    async def _answer(self, envelope: envelope_pb2.SignedEnvelope, trail: _Trail) -> NodeAnswer:
        try:
            query = self.authenticate(envelope, trail)
            await self.check_replay(query, trail)
            if is_self_access(query):
                self.authorize(query, trail, None)
                await self.check_self_access_cap(query, trail)
                records, indicators = await self.minimize_own(await self.fetch_own(query.message), query.message), []
                level = SELF_ACCESS
            else:
                consent = await self.lookup_consent(query)
                self.authorize(query, trail, consent)
                consent = await self.check_consent(query, consent, trail)
                records = await self.fetch(query.message, consent)
                records, indicators = await self.minimize(records, query.message, consent)
                level = consent.detail_level
            answer = self.sign_and_seal(query, records, indicators)
        except Refusal as refusal:
            await self.uses.release(trail.use)  # nothing was answered: the consent keeps its use
            trail.use = None
            await self.audit(trail, refusal=refusal)
            raise
        except BaseException as fault:  # an unexpected error, or the call was cancelled: nothing was answered either
            await self.uses.release(trail.use)
            trail.use = None
            if isinstance(fault, (Exception, asyncio.CancelledError)):  # not an interpreter exit
                await self.audit_fault(trail, fault)
            raise
        trail.detail = f"{level}: {len(records)} records, {len(indicators)} indicators"
        await self.audit(trail)  # the use counts only if this commits (UseLedger.audited)
        return answer

    # -- the steps ---------------------------------------------------------------------------
    def authenticate(self, envelope: envelope_pb2.SignedEnvelope, trail: _Trail) -> Verified[query_pb2.QueryBody]:
        """The asker's signature and certificate, checked here whoever relayed the query."""
        query = check_query(envelope, self.trust, self.clock())
        q = query.message
        trail.uscc, trail.categories, trail.purpose = q.uscc, tuple(q.categories), q.purpose
        trail.consent_id, trail.request_hash = q.consent_id, query.body_hash.hex()
        trail.relayed_by = relayed_by(self.authorizer, trail.caller, query.signer, "query")
        trail.caller = query.signer  # from here on, the asker is the signer
        return query

    async def check_replay(self, query: Verified[query_pb2.QueryBody], trail: _Trail) -> None:
        """A nonce seen before is refused; a new one is written with this query's audit entry."""
        trail.extras.append(await self.replay.claim(str(query.signer), query.message.nonce, self.clock(),
                                                    query.message.issued_at_ms))

    async def lookup_consent(self, query: Verified[query_pb2.QueryBody]) -> StoredConsent | None:
        """The consent the query names, read once: policy weighs it, then it is checked."""
        return await self.store.consent(query.message.consent_id)

    def authorize(self, query: Verified[query_pb2.QueryBody], trail: _Trail, consent: StoredConsent | None) -> None:
        q = query.message
        check_self_access(query)  # an enterprise asks about itself or not at all, whatever policy says
        # Whether the asker is the second institution of a joint consent is a fact policy weighs.
        decision = self.authorizer.decide(
            query.signer,
            Action.QUERY,
            Resource.enterprise(q.uscc),
            {"purpose": q.purpose, "categories": set(q.categories), "joint": is_joint_for(consent, query.signer)},
            licence=licence_of(query.signer_cert_der),
        )
        trail.policy_ids = decision.policy_ids
        if not decision.allowed:
            raise Refusal.denied("POLICY_DENIED", f"query.purpose: {decision.reason}", field_name="query.purpose", policy_ids=decision.policy_ids)

    async def check_consent(self, query: Verified[query_pb2.QueryBody], consent: StoredConsent | None,
                            trail: _Trail) -> StoredConsent:
        """An active, confirmed consent must name the signer, the enterprise, the purpose and
        every category, and have a fetch left; this query reserves it (spent only with an answer)."""
        q = query.message
        now = self.clock()
        if self.freshness is not None and await self.freshness.require(now, "answers nothing"):
            # It waited for its sequencer, which may have synced a revocation meanwhile: read again.
            now, consent = self.clock(), await self.lookup_consent(query)
        ask = ConsentAsk(q.consent_id, query.signer, q.uscc, q.purpose, tuple(q.categories))
        consent = check_covers(consent, ask, now)
        allowed, used, trail.use = await self.uses.reserve(
            consent.consent_id, query.body_hash.hex(), str(query.signer), now,
            window_start_ms=consent.fetch_window_start(now), limit=consent.fetch_limit,
        )
        if not allowed:
            raise use_refusal(consent, used)
        return consent

    async def check_self_access_cap(self, query: Verified[query_pb2.QueryBody], trail: _Trail) -> None:
        """An enterprise's self_access queries answered here this period stay under the cap
        (fair_use.toml [self_access]); this one is reserved, and counts only with an answer."""
        now = self.clock()
        rule = self.self_access
        allowed, used, trail.use = await self.uses.reserve(
            self_access_key(query.message.uscc), query.body_hash.hex(), str(query.signer), now,
            window_start_ms=rule.window_start(now), limit=rule.max_queries,
        )
        if not allowed:
            raise rule.refusal(used, now)

    async def fetch_own(self, q: query_pb2.QueryBody) -> list[Record]:
        """Everything this node serves about the enterprise in the categories asked: no consent
        bounds the history; retention does, in minimize_own."""
        return await asyncio.to_thread(self.store.fetch_records, q.uscc, list(q.categories))

    async def minimize_own(self, records: list[Record], q: query_pb2.QueryBody) -> list[Record]:
        mine = [r for r in records if r.uscc == q.uscc]
        held = await self._held_categories()
        return self.rules.minimize_own(mine, categories=[c for c in q.categories if c in held], today=self._today())

    async def fetch(self, q: query_pb2.QueryBody, consent: StoredConsent) -> list[Record]:
        """Only this node's own store is read, and only the consented history window."""
        since = months_before(self._today(), consent.history_months)
        return await asyncio.to_thread(self.store.fetch_records, q.uscc, list(q.categories), since=since.isoformat())

    async def minimize(self, records: list[Record], q: query_pb2.QueryBody, consent: StoredConsent):
        """Only the enterprise and categories asked leave the node; negative records past their
        retention never do; summary consents get indicators, detail consents masked records.
        Categories this node does not hold at all are left out: "no open cases" from a node
        that holds no court data would mislead."""
        mine = [r for r in records if r.uscc == q.uscc]
        held = await self._held_categories()
        return minimize(mine, rules=self.rules, categories=[c for c in q.categories if c in held],
                        detail_level=consent.detail_level, today=self._today())

    async def _held_categories(self) -> frozenset[str]:
        now = self.clock()
        if self._held is None or now - self._held[0] > 30_000:  # data is loaded by another process: look again now and then
            self._held = (now, await asyncio.to_thread(self.store.held_categories))
        return self._held[1]

    def _today(self) -> dt.date:
        return dt.datetime.fromtimestamp(self.clock() / 1000, CHINA).date()

    def sign_and_seal(self, query: Verified[query_pb2.QueryBody], records: list[Record], indicators) -> NodeAnswer:
        q = query.message
        body = query_pb2.AnswerBody(
            request_hash=query.body_hash,
            node_id=self.node_id,
            uscc=q.uscc,
            consent_id=q.consent_id,
            records=[
                records_pb2.CreditRecord(category=r.category, as_of=r.as_of, source=r.source, fields_json=r.fields_json,
                                         record_id=r.record_id, disputed=r.disputed)
                for r in records
            ],
            indicators=[
                records_pb2.Indicator(category=i.category, name=i.name, value_json=json.dumps(i.value, ensure_ascii=False),
                                      as_of=i.as_of)
                for i in indicators
            ],
            answered_at_ms=self.clock(),
        )
        signed = sign(self.identity, body).SerializeToString(deterministic=True)
        outcome = query_pb2.NODE_OUTCOME_OK if records or indicators else query_pb2.NODE_OUTCOME_NO_DATA
        return NodeAnswer(outcome, seal_to(q.answer_key, signed))

    async def audit(self, trail: _Trail, refusal: Refusal | None = None, *, fault: str = "") -> None:
        entry = AuditEntry(
            at_ms=self.clock(),
            caller_role=str(trail.caller.role),
            caller_id=trail.caller.id,
            relayed_by=trail.relayed_by,
            action=str(Action.QUERY),
            decision="deny" if refusal or fault else "allow",
            uscc=trail.uscc,
            categories=trail.categories,
            purpose=trail.purpose,
            consent_id=trail.consent_id,
            policy_ids=(refusal.policy_ids if refusal and refusal.policy_ids else trail.policy_ids),
            reason=refusal.logged if refusal else fault or "answered",
            request_hash=trail.request_hash,
            trace_id=trail.trace_id,
            detail=trail.detail,
        )
        uses = [trail.use] if trail.use else []
        await self.uses.audited(uses, self.audit_log.append(entry, extras=trail.extras + uses))

    async def audit_fault(self, trail: _Trail, fault: BaseException) -> None:
        """A query that reached the node and ended in neither an answer nor a refusal (a fault, or the
        caller went away) is still an access attempt: it is logged as denied, naming what stopped it,
        so that every request the registry forwarded has its entry here. Best effort: the fault may
        be the store itself, and then the original error, not this one, is what the caller hears."""
        if isinstance(fault, asyncio.CancelledError):
            reason = "CANCELLED: the call ended before an answer (the caller went away or its deadline passed)"
        elif is_store_unavailable(fault):
            reason = "STORE_UNAVAILABLE: the node's store failed during the query; nothing was answered"
        else:  # the class name only: an exception's text may hold data or secrets
            reason = f"INTERNAL_ERROR: {bounded(type(fault).__name__)} during the query; nothing was answered"
        try:
            await self.audit(trail, fault=reason)
        except Exception:  # noqa: BLE001 - the original fault is what is raised
            log.warning("the audit entry of a failed query (trace %s) could not be written", trail.trace_id, exc_info=True)
