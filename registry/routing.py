"""How the registry routes a bank's query: a visible sequence of named steps.

    authenticate -> check replay -> authorize -> choose nodes -> record the forwarding
        -> fan out -> record the outcome

The registry reads the query's routing fields (it must, to route) but relays the signed bytes
unchanged, and sees only sealed answers: it can neither read nor forge nor alter them. The
fan-out is concurrent, each node under its own deadline, and one node's failure is reported as
that node's outcome, never as the query's. This module imports no gRPC: `ask_node` is given.

Two entries in the registry's log for each query it forwards: `forward_query`, committed before
any node sees the query (so an answer a node gives is in the registry's log even if the
registry dies mid-flight, and a query the registry cannot record is not forwarded), and
`route_query` with each node's outcome once they are back. A refused query has one entry,
`route_query` denied.

An enterprise's self_access query (its own records, no consent) takes the same steps: it is
authorized when the signing certificate names the enterprise asked about, and counted against
the self-access cap (fair_use.toml [self_access]) before the fan-out, so that a query over the
cap reaches no node; the nodes count it too. It is routed to every node the directory routes
the enterprise to, and needs no registered institution.

A query received a second time - the same signer, nonce and request hash: a client that failed
over to another replica after the first try's answer was lost with its connection - is refused
as QUERY_ALREADY_RECEIVED, saying when it arrived (`already_received`), never answered twice
and never called a replay of someone else's.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from dataclasses import dataclass, field, replace
from typing import Awaitable, Callable

from registry.directory import NetworkDirectory
from registry.store import RegistryStore
from xinyi.audit.entry import AuditEntry
from xinyi.audit.log import RETRACT, AuditLog
from xinyi.clock import Clock
from xinyi.crypto.envelope import Verified
from xinyi.crypto.identity import Principal
from xinyi.crypto.pki import licence_of
from xinyi.errors import Kind, Refusal
from xinyi.policy import Action, Authorizer, Resource
from xinyi.privacy.consent import is_joint_for
from xinyi.privacy.fairuse import SelfAccessRule
from xinyi.query import (
    ReplayGuard,
    Use,
    check_query,
    check_self_access,
    is_self_access,
    replay_guard_for,
    self_access_key,
    use_ledger_for,
)
from xinyi.relay import require_signer
from xinyi.cache import LRU
from xinyi.v1 import audit_pb2, directory_pb2, envelope_pb2, query_pb2

# The steps of Router.route, by method name, in order: timed by `make profile` and by
# --metrics-listen (xinyi.metrics), which wrap these methods.
STEPS = ("authenticate", "check_replay", "authorize", "choose_nodes", "record_forwarding", "fan_out", "_audit")

# ask_node(entry, signed query, timeout seconds) -> that node's result, never raising.
AskNode = Callable[[directory_pb2.NodeEntry, envelope_pb2.SignedEnvelope, float], Awaitable[query_pb2.NodeResult]]

# The action of the entry that records a routing before the fan-out; the outcome's is route_query.
FORWARD_QUERY = "forward_query"

# Queries whose record failed, remembered for their retry (the oldest go first).
UNRECORDED_LIMIT = 100_000

DEFAULT_PER_NODE_TIMEOUT_MS = 3000
MAX_PER_NODE_TIMEOUT_MS = 30000

# A node that answered: its sealed, signed answer was audited there (and a use counted).
ANSWERED = (query_pb2.NODE_OUTCOME_OK, query_pb2.NODE_OUTCOME_NO_DATA)

OUTCOME_NAMES = {
    query_pb2.NODE_OUTCOME_OK: "ok",
    query_pb2.NODE_OUTCOME_NO_DATA: "no_data",
    query_pb2.NODE_OUTCOME_DENIED: "denied",
    query_pb2.NODE_OUTCOME_UNAVAILABLE: "unavailable",
    query_pb2.NODE_OUTCOME_TIMEOUT: "timeout",
}


def failed_outcome(code: str, refused: bool) -> int:
    """How a node's failed call counts for the bank. `denied` only when the node itself refused
    (its status carries its reason); a deadline is `timeout`; anything else is the node's fault
    or the network's (its store down, an internal error, no connection): `unavailable`, never
    `denied`."""
    if refused:
        return query_pb2.NODE_OUTCOME_DENIED
    if code == "DEADLINE_EXCEEDED":
        return query_pb2.NODE_OUTCOME_TIMEOUT
    return query_pb2.NODE_OUTCOME_UNAVAILABLE


def failure_message(outcome: int, message: str, from_node: bool) -> str:
    """What the bank reads for a failed node: the node's own (bounded, generic for a fault) text
    when it answered with a status of its own, else a plain sentence, not the transport's."""
    if from_node:
        return message
    if outcome == query_pb2.NODE_OUTCOME_TIMEOUT:
        return "the node did not answer within the deadline"
    return "the node could not be reached; try again later"


@dataclass
class Router:
    directory: NetworkDirectory
    store: RegistryStore
    authorizer: Authorizer
    ask_node: AskNode
    audit_log: AuditLog
    clock: Clock
    replay: ReplayGuard | None = None  # loaded from the store at start
    self_access: SelfAccessRule = field(default_factory=SelfAccessRule)  # fair_use.toml [self_access]

    def __post_init__(self) -> None:
        # Replicas sharing a PostgreSQL store: the database decides nonces and consent uses.
        self.replay = self.replay or replay_guard_for(self.store)
        self.uses = use_ledger_for(self.store)
        # (signer, nonce) -> request hash, between the nonce's claim and the commit of its record.
        self._receiving: dict[tuple[str, bytes], bytes] = {}
        # Nonces whose record failed (released for the query's next try, which reads the log
        # first: a commit reported as failed may still have been made).
        self._unrecorded: LRU[tuple[str, bytes], bool] = LRU(UNRECORDED_LIMIT)

    async def route(
        self, envelope: envelope_pb2.SignedEnvelope, *, caller: Principal, trace_id: str, per_node_timeout_ms: int = 0
    ) -> query_pb2.QueryResponse:
        audit = AuditEntry(at_ms=0, caller_role=str(caller.role), caller_id=caller.id, action=str(Action.ROUTE_QUERY),
                           decision="deny", trace_id=trace_id)
        extras: list = []
        query, claimed, use = None, False, None
        try:
            query = self.authenticate(envelope, caller)
            audit = _describe(audit, query)
            extras.append(await self.check_replay(query))
            claimed = True
            audit = replace(audit, policy_ids=await self.authorize(query))
            node_ids = self.choose_nodes(query.message.uscc)
            timeout_ms = self._timeout(per_node_timeout_ms)
            use = await self.reserve_self_access(query)
        except Refusal as r:
            await self._received(query if claimed else None,
                                 self._audit(audit, extras, decision="deny", reason=r.logged,
                                             policy_ids=r.policy_ids or audit.policy_ids))
            raise
        except Exception:
            if claimed:  # the store failed before the record (a consent that could not be read)
                self._unrecorded_try(query)
            raise
        try:
            await self._received(query, self.record_forwarding(audit, extras, node_ids))
            extras = []  # the nonce went with the forwarding record: taken once
            results = await self.fan_out(node_ids, envelope, timeout_ms / 1000)
        except BaseException:
            await self.uses.release(use)  # no node answered under it
            raise
        detail = " ".join(f"{r.node_id}={OUTCOME_NAMES.get(r.outcome, '?')}" for r in results)
        uses = []
        if use is not None:  # a self-access counts when a node answered it, as the nodes count it
            if any(r.outcome in ANSWERED for r in results):
                uses.append(use)
            else:
                await self.uses.release(use)
        elif any(r.outcome in ANSWERED for r in results):
            # Counted for the enterprise's consent view; each node enforces the fetch limits itself.
            _, _, use = await self.uses.reserve(query.message.consent_id, query.body_hash.hex(), str(query.signer),
                                                self.clock(), window_start_ms=0, limit=1 << 62)
            uses += [use] if use else []
        extras += await self._node_results(query, results)
        # The use, and what each node did, count only if this entry commits.
        await self.uses.audited(uses, self._audit(audit, extras + uses, decision="allow", reason="routed", detail=detail))
        return query_pb2.QueryResponse(request_hash=query.body_hash, results=results)

    # -- the steps ---------------------------------------------------------------------------
    def authenticate(self, envelope: envelope_pb2.SignedEnvelope, caller: Principal) -> Verified[query_pb2.QueryBody]:
        query = check_query(envelope, self.directory.trust, self.clock())
        require_signer(caller, query.signer, "query")
        return query

    async def check_replay(self, query: Verified[query_pb2.QueryBody]) -> tuple[str, dict]:
        """A nonce seen before is refused; a new one is written with this routing's audit entry.
        This very query again is refused as QUERY_ALREADY_RECEIVED (already_received)."""
        key = (str(query.signer), query.message.nonce)
        if key in self._unrecorded:  # its first try's record failed: taken as new unless it was made after all
            await self._refuse_if_received(query)
            self._unrecorded.pop(key)
        try:
            row = await self.replay.claim(*key, self.clock(), query.message.issued_at_ms,
                                          request_hash=query.body_hash.hex())
        except Refusal:
            if self._receiving.get(key) == query.body_hash:
                raise already_received(query, None) from None
            await self._refuse_if_received(query)
            # Not in the log: taken by this very query at another replica that is still routing
            # it, or that stopped before recording it. Either way it is not routed twice.
            if await asyncio.to_thread(self.store.nonce_taken_by, *key) == query.body_hash.hex():
                raise already_received(query, None) from None
            raise
        self._receiving[key] = query.body_hash
        return row

    async def _refuse_if_received(self, query: Verified[query_pb2.QueryBody]) -> None:
        """Raise QUERY_ALREADY_RECEIVED when the log holds this signer's query with this request hash."""
        found = await asyncio.to_thread(self.store.find_audit, request_hash=query.body_hash.hex(), limit=10)
        mine = [(entry.index, record) for entry in found
                if (record := audit_pb2.AuditRecord.FromString(entry.leaf_input)).caller_id == query.signer.id
                and record.caller_role == str(query.signer.role)]
        if mine:  # its outcome when one is on record, else its forwarding (the replica stopped mid-flight)
            outcome = [m for m in mine if m[1].action not in (FORWARD_QUERY, RETRACT)]
            raise already_received(query, (outcome or mine)[0], answered=bool(outcome))

    async def _received(self, query: Verified[query_pb2.QueryBody] | None, record: Awaitable[None]) -> None:
        """Await the record that takes the query's nonce (`query`: None when it took none). A
        record that fails releases the nonce: the client's retry of this query is not a replay."""
        if query is None:
            await record
            return
        try:
            await record
        except BaseException:
            self._unrecorded_try(query)
            raise
        self._receiving.pop((str(query.signer), query.message.nonce), None)

    def _unrecorded_try(self, query: Verified[query_pb2.QueryBody]) -> None:
        key = (str(query.signer), query.message.nonce)
        self._receiving.pop(key, None)
        self.replay.forget(*key)
        self._unrecorded.put(key, True)

    async def authorize(self, query: Verified[query_pb2.QueryBody]) -> tuple[str, ...]:
        q = query.message
        check_self_access(query)  # an enterprise asks about itself or not at all, whatever policy says
        consent = None if is_self_access(query) else await self.store.consent(q.consent_id)
        decision = self.authorizer.decide(
            query.signer, Action.ROUTE_QUERY, Resource.enterprise(q.uscc),
            {"purpose": q.purpose, "categories": set(q.categories), "joint": is_joint_for(consent, query.signer)},
            licence=licence_of(query.signer_cert_der),
        )
        if not decision.allowed:
            raise Refusal.denied("POLICY_DENIED", f"query.purpose: {decision.reason}", field_name="query.purpose",
                                 policy_ids=decision.policy_ids)
        return decision.policy_ids

    async def reserve_self_access(self, query: Verified[query_pb2.QueryBody]) -> Use | None:
        """A self_access query takes one of the enterprise's self-accesses of the period (kept
        only if a node answers it), or is refused here, forwarded to no node. None for any other."""
        if not is_self_access(query):
            return None
        now, rule = self.clock(), self.self_access
        allowed, used, use = await self.uses.reserve(
            self_access_key(query.message.uscc), query.body_hash.hex(), str(query.signer), now,
            window_start_ms=rule.window_start(now), limit=rule.max_queries)
        if not allowed:
            raise rule.refusal(used, now)
        return use

    def choose_nodes(self, uscc: str) -> list[str]:
        node_ids = self.directory.route(uscc)
        if not node_ids:
            area = uscc[2:8]
            raise Refusal(
                Kind.PRECONDITION, "NO_NODE_FOR_AREA",
                f"query.uscc: area code {area} is served by no node in the directory, and no node holds approved records "
                "for this enterprise",
                (),
            )
        return node_ids

    async def record_forwarding(self, audit: AuditEntry, extras: list, node_ids: list[str]) -> None:
        """Make the routing durable before any node sees the query: who asks, under which
        consent, which request, which nodes, with the nonce in the same commit. A registry that
        dies while the nodes answer leaves this record; a store that cannot take it (down, disk
        full) stops the query here, forwarded to no node, and the bank hears UNAVAILABLE."""
        await self._audit(replace(audit, action=FORWARD_QUERY), extras, decision="allow",
                          reason=f"forwarding to {', '.join(node_ids)}", detail=" ".join(node_ids))

    async def fan_out(self, node_ids: list[str], envelope: envelope_pb2.SignedEnvelope, timeout_s: float) -> list[query_pb2.NodeResult]:
        nodes = self.directory.current.nodes
        return list(await asyncio.gather(*(self.ask_node(nodes[n], envelope, timeout_s) for n in node_ids)))

    async def _node_results(self, query: Verified[query_pb2.QueryBody], results: list[query_pb2.NodeResult]) -> list:
        """Each node's outcome, kept for the enterprise's view of its consent (which nodes
        answered, which were unreachable): only for a query by an institution the consent names,
        so that no one else's calls show up in it."""
        q = query.message
        if is_self_access(query):
            return []
        consent = await self.store.consent(q.consent_id)
        if consent is None or consent.uscc != q.uscc or query.signer.id not in (consent.grantee, consent.co_grantee):
            return []
        now = self.clock()
        return [("consent_node_results", {"consent_id": q.consent_id, "request_hash": query.body_hash.hex(),
                                          "node_id": r.node_id, "outcome": r.outcome, "at_ms": now}) for r in results]

    def _timeout(self, requested_ms: int) -> int:
        if requested_ms < 0 or requested_ms > MAX_PER_NODE_TIMEOUT_MS:
            raise Refusal.invalid("per_node_timeout_ms", f"must be between 0 and {MAX_PER_NODE_TIMEOUT_MS}")
        return requested_ms or DEFAULT_PER_NODE_TIMEOUT_MS

    async def _audit(self, entry: AuditEntry, extras: list, **changes) -> None:
        final = replace(entry, at_ms=self.clock(), **changes)
        await self.audit_log.append(final, extras=extras)


def already_received(query: Verified[query_pb2.QueryBody], first: tuple[int, audit_pb2.AuditRecord] | None, *,
                     answered: bool = False) -> Refusal:
    """The refusal of a query received before (`first`: its log entry, None while the first try
    is still being recorded; `answered`: that entry is its outcome, not only its forwarding),
    saying when and what to do."""
    request_hash = query.body_hash.hex()
    metadata = {"request_hash": request_hash}
    no_outcome = ("has no outcome on record yet (it is still being handled, or the registry process that "
                  "received it stopped before it had one)")
    became = "Its outcome, if it gets one, will be"
    if first is None:
        when = f"before and {no_outcome}"
    else:
        index, record = first
        at = dt.datetime.fromtimestamp(record.at_ms / 1000, dt.timezone.utc)
        when = f"at {at:%Y-%m-%d %H:%M:%S} UTC (registry log entry {index})"
        metadata.update(received_at_ms=str(record.at_ms), audit_index=str(index))
        if answered:
            became = "Its answer went back on the connection that sent it first; what became of it is"
        else:
            when += f" and forwarded to the nodes, and {no_outcome}"
    return Refusal(Kind.ALREADY_RECEIVED, "QUERY_ALREADY_RECEIVED",
                   f"query {request_hash[:16]}… was already received {when}; it is not handled twice (a once-consent "
                   f"is used once). {became} in the registry's audit log and the enterprise's access view (by this "
                   "request hash); to ask again, sign a new query", metadata=metadata)


def _describe(entry: AuditEntry, query: Verified[query_pb2.QueryBody]) -> AuditEntry:
    q = query.message
    return replace(entry, uscc=q.uscc, categories=tuple(q.categories), purpose=q.purpose,
                   consent_id=q.consent_id, request_hash=query.body_hash.hex())
