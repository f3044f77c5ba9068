"""The registry's part in early-warning alerts: check the bank's signed subscription or poll,
relay it unchanged to every node that routes for the enterprise, concurrently, and hand back
each node's outcome. The registry sees only sealed batches: it can withhold one (the bank's
cursor then stays where it was, and the next poll asks again) but neither read, forge nor
thin one out.

Every poll re-checks the consent here as well as at each node, so a revoked, paused or expired
consent stops alerts at once even at a node the revocation has not reached yet. Polls are not
fetches and do not count against the consent's ceiling. This module imports no gRPC: the
`nodes` link is given (registry/alerts_service.py).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Protocol

from registry.directory import NetworkDirectory
from xinyi.audit.entry import AuditEntry
from xinyi.audit.log import AuditLog
from xinyi.clock import Clock
from xinyi.compute.alerts import PURPOSE, alert_categories, check_monitoring_consent, check_poll, check_subscribe, refuse_replay
from xinyi.crypto.envelope import Verified
from xinyi.crypto.identity import Principal
from xinyi.crypto.pki import licence_of
from xinyi.errors import Kind, Refusal
from xinyi.policy import Action, Authorizer, Resource
from xinyi.relay import require_signer
from xinyi.store import BaseStore
from xinyi.v1 import alerts_pb2, directory_pb2, envelope_pb2


class NodeAlertLink(Protocol):
    """Asks one node; never raises: a node's refusal or absence is that node's outcome."""

    async def subscribe(self, node: directory_pb2.NodeEntry,
                        envelope: envelope_pb2.SignedEnvelope) -> alerts_pb2.AlertSubscription: ...

    async def poll(self, node: directory_pb2.NodeEntry, envelope: envelope_pb2.SignedEnvelope) -> alerts_pb2.NodeAlerts: ...


@dataclass
class AlertRelay:
    directory: NetworkDirectory
    store: BaseStore  # the registry's store: its nonces and its copy of every consent
    authorizer: Authorizer
    nodes: NodeAlertLink
    audit_log: AuditLog
    clock: Clock

    async def subscribe(self, caller: Principal, envelope: envelope_pb2.SignedEnvelope,
                        trace_id: str = "") -> list[alerts_pb2.AlertSubscription]:
        audit = _Audit(caller, trace_id)
        try:
            statement = check_subscribe(envelope, self.directory.trust, self.clock())
            consent = await self._admit(statement, "subscribe", audit)
            entries = self._route(consent.uscc)
            outcomes = list(await asyncio.gather(*(self.nodes.subscribe(e, envelope) for e in entries)))
        except Refusal as r:
            await self._audit(audit, "subscribe_alerts", r)
            raise
        for outcome, entry in zip(outcomes, entries):
            outcome.node_id = entry.node_id  # keeps the outcome list honest; nodes sign nothing here
        detail = " ".join(f"{o.node_id}={'subscribed' if o.subscribed else (o.error_reason or o.error_code or 'failed')}"
                          for o in outcomes)
        await self._audit(audit, "subscribe_alerts", None, allowed="relayed", detail=detail)
        return outcomes

    async def poll(self, caller: Principal, envelope: envelope_pb2.SignedEnvelope,
                   trace_id: str = "") -> list[alerts_pb2.NodeAlerts]:
        audit = _Audit(caller, trace_id)
        try:
            statement = check_poll(envelope, self.directory.trust, self.clock())
            consent = await self._admit(statement, "poll", audit)
            entries = self._route(consent.uscc)
            outcomes = list(await asyncio.gather(*(self.nodes.poll(e, envelope) for e in entries)))
        except Refusal as r:
            await self._audit(audit, "poll_alerts", r)
            raise
        for outcome, entry in zip(outcomes, entries):
            outcome.node_id = entry.node_id  # the bank checks each alert's signature against this node
        detail = " ".join(f"{o.node_id}={'ok' if o.sealed_alerts else (o.error_reason or o.error_code or 'failed')}"
                          for o in outcomes)
        await self._audit(audit, "poll_alerts", None, allowed="relayed", detail=detail)
        return outcomes

    # -- the steps ---------------------------------------------------------------------------
    async def _admit(self, statement: Verified, field: str, audit: "_Audit"):
        """Sender = signer, fresh nonce, an active monitoring consent, and the query policy."""
        body = statement.message
        audit.describe(statement)
        require_signer(audit.caller, statement.signer, field)
        now = self.clock()
        await refuse_replay(self.store, statement, field, now)
        stored = await asyncio.to_thread(self.store.get_consent, body.consent_id)
        consent = check_monitoring_consent(stored, body.consent_id, statement.signer, body.uscc, now)
        audit.consent = consent
        decision = self.authorizer.decide(
            statement.signer, Action.ROUTE_QUERY, Resource.enterprise(body.uscc),
            {"purpose": PURPOSE, "categories": set(alert_categories(consent))},
            licence=licence_of(statement.signer_cert_der),
        )
        audit.policy_ids = decision.policy_ids
        if not decision.allowed:
            raise Refusal.denied("POLICY_DENIED", f"alerts: {decision.reason}", policy_ids=decision.policy_ids)
        return consent

    def _route(self, uscc: str) -> list[directory_pb2.NodeEntry]:
        node_ids = self.directory.route(uscc)
        if not node_ids:
            raise Refusal(Kind.PRECONDITION, "NO_NODE_FOR_AREA",
                          f"uscc: area code {uscc[2:8]} is served by no node in the directory, and no node holds "
                          "approved records for this enterprise")
        nodes = self.directory.current.nodes
        return [nodes[n] for n in node_ids]

    async def _audit(self, audit: "_Audit", action: str, refusal: Refusal | None, *, allowed: str = "",
                     detail: str = "") -> None:
        fields = {} if audit.consent is not None else {"uscc": audit.uscc, "consent_id": audit.consent_id}
        await self.audit_log.append(AuditEntry.of(
            self.clock(), audit.caller, action, refusal, allowed=allowed, consent=audit.consent,
            policy_ids=audit.policy_ids, request_hash=audit.request_hash, trace_id=audit.trace_id, detail=detail,
            **fields,
        ))


class _Audit:
    """What the registry's audit record will say, filled in as the steps learn it."""

    def __init__(self, caller: Principal, trace_id: str) -> None:
        self.caller = caller
        self.trace_id = trace_id
        self.uscc = ""
        self.consent_id = ""
        self.request_hash = ""
        self.consent = None
        self.policy_ids: tuple[str, ...] = ()

    def describe(self, statement: Verified) -> None:
        self.uscc, self.consent_id = statement.message.uscc, statement.message.consent_id
        self.request_hash = statement.body_hash.hex()
