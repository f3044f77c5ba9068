"""Disputes at the node that holds the record: filed by the enterprise (through the registry),
listed and resolved by the node's operator, who calls with the node's own identity. Every step
is in the node's audit log."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from node.store import NodeStore, Record
from xinyi.audit.entry import AuditEntry
from xinyi.audit.log import AuditLog
from xinyi.clock import Clock
from xinyi.crypto.envelope import sign
from xinyi.crypto.identity import Principal
from xinyi.errors import Kind, Refusal
from xinyi.policy import Action, Authorizer, Resource
from xinyi.privacy.disputes import (
    REPLY_WITHIN_MS,
    answer_body,
    answer_hash,
    check_dispute,
    check_my_disputes_request,
    dispute_id_for,
    to_proto,
)
from xinyi.records.categories import RecordError, parse_record_json, validate_fields
from xinyi.relay import relayed_by
from xinyi.v1 import dispute_pb2, envelope_pb2


@dataclass
class DisputeDesk:
    node: Principal
    store: NodeStore
    authorizer: Authorizer
    audit_log: AuditLog
    clock: Clock

    async def file(self, caller: Principal, envelope: envelope_pb2.SignedEnvelope, trace_id: str) -> dispute_pb2.Dispute:
        uscc, who, relay = "", caller, ""
        try:
            dispute = check_dispute(envelope, self.audit_log.identity.trust(), self.clock())
            body = dispute.message
            uscc = body.uscc
            relay = relayed_by(self.authorizer, caller, dispute.signer, "dispute")
            who = dispute.signer  # as for queries: the enterprise that signed, the registry only relaying
            if body.node_id != self.node.id:
                raise Refusal.invalid("dispute.node_id", f"names node {body.node_id}; this is node {self.node.id}")
            record = await asyncio.to_thread(self.store.get_record, body.record_id)
            if record is None or record.uscc != body.uscc:
                raise Refusal(Kind.NOT_FOUND, "RECORD_NOT_FOUND",
                              f"dispute.record_id: node {self.node.id} serves no record {body.record_id[:16]}… about {body.uscc}")
            now = self.clock()
            row = {"dispute_id": dispute_id_for(dispute.body), "record_key": body.record_id, "uscc": body.uscc,
                   "reason": body.reason, "filed_by": str(dispute.signer), "filed_at_ms": now,
                   "due_ms": now + REPLY_WITHIN_MS, "envelope": envelope.SerializeToString(deterministic=True),
                   "status": "open", "resolution": ""}
            await asyncio.to_thread(self.store.put_dispute, row)
        except Refusal as r:
            await self._audit(who, "file_dispute", r, "", uscc, trace_id, relay)
            raise
        stored = await asyncio.to_thread(self.store.get_dispute, row["dispute_id"])
        await self._audit(who, "file_dispute", None, f"dispute {row['dispute_id']} on {record.category} "
                          f"record {body.record_id[:16]}…", uscc, trace_id, relay)
        return to_proto(stored, self.node.id, self.clock())

    def _operator(self, caller: Principal, action: Action) -> None:
        """Only this node's operator (holding this node's identity) handles its disputes."""
        decision = self.authorizer.decide(caller, action, Resource.network())
        if not decision.allowed or caller != self.node:
            raise Refusal.denied("NOT_THIS_NODES_OPERATOR", f"{caller} is not the operator of node {self.node.id}; "
                                 "disputes are handled with the node's own identity",
                                 policy_ids=decision.policy_ids)

    async def list(self, caller: Principal, *, open_only: bool, overdue_only: bool, trace_id: str = "") -> list[dispute_pb2.Dispute]:
        try:
            self._operator(caller, Action.HANDLE_DISPUTES)
        except Refusal as r:
            await self._audit(caller, "list_disputes", r, "", "", trace_id)
            raise
        now = self.clock()
        rows = await asyncio.to_thread(self.store.list_disputes, open_only=open_only or overdue_only,
                                       due_before_ms=now if overdue_only else None)
        return [to_proto(r, self.node.id, now) for r in rows]

    async def of_enterprise(self, caller: Principal, request: dispute_pb2.NodeListMyDisputesRequest,
                            trace_id: str = "") -> envelope_pb2.SignedEnvelope:
        """The disputes of the enterprise that signed the request (relayed by the registry, or
        sent by the enterprise itself), in an answer this node signs and binds to the request."""
        uscc, who, relay = "", caller, ""
        try:
            checked = check_my_disputes_request(request.request, self.audit_log.identity.trust(), self.clock())
            relay = relayed_by(self.authorizer, caller, checked.signer, "request")
            who = checked.signer  # the enterprise that signed, the registry only relaying
            decision = self.authorizer.decide(checked.signer, Action.READ_DISPUTES, Resource.enterprise(checked.signer.id))
            if not decision.allowed:
                raise Refusal.denied("POLICY_DENIED", f"only an enterprise lists disputes, its own ({decision.reason})",
                                     policy_ids=decision.policy_ids)
            uscc = checked.signer.id
        except Refusal as r:
            await self._audit(who, str(Action.READ_DISPUTES), r, "", uscc, trace_id, relay)
            raise
        rows = await asyncio.to_thread(self.store.list_disputes, uscc=uscc)
        now = self.clock()
        body = answer_body(self.node.id, uscc, answer_hash(request.request), now,
                           (to_proto(r, self.node.id, now) for r in rows), request.max_bytes)
        answer = sign(self.audit_log.identity, body)
        n = len(body.disputes)
        left_out = f", {body.omitted} older left out" if body.omitted else ""
        await self._audit(who, str(Action.READ_DISPUTES), None, f"{n} dispute{'' if n == 1 else 's'}{left_out}", uscc,
                          trace_id, relay)
        return answer

    async def resolve(self, caller: Principal, request: dispute_pb2.ResolveDisputeRequest, trace_id: str) -> dispute_pb2.Dispute:
        row = None
        try:
            self._operator(caller, Action.HANDLE_DISPUTES)
            row = await asyncio.to_thread(self.store.get_dispute, request.dispute_id)
            if row is None:
                raise Refusal(Kind.NOT_FOUND, "DISPUTE_NOT_FOUND", f"dispute_id: no dispute {request.dispute_id}")
            if row["status"] != "open":
                raise Refusal(Kind.PRECONDITION, "DISPUTE_CLOSED", f"dispute_id: dispute {request.dispute_id} is already {row['status']}")
            if not request.resolution.strip():
                raise Refusal.invalid("resolution", "the written reply to the enterprise is required")
            corrected = None
            if request.outcome == dispute_pb2.DISPUTE_STATUS_CORRECTED:
                corrected = await self._corrected(row, request.corrected_fields_json)
                status = "corrected"
            elif request.outcome == dispute_pb2.DISPUTE_STATUS_CONFIRMED:
                if request.corrected_fields_json:
                    raise Refusal.invalid("corrected_fields_json", "a confirmed record is not changed")
                status = "confirmed"
            else:
                raise Refusal.invalid("outcome", "must be CORRECTED or CONFIRMED")
            if not await asyncio.to_thread(self.store.resolve_dispute, row["dispute_id"], status, request.resolution,
                                           self.clock(), corrected):
                raise Refusal(Kind.PRECONDITION, "DISPUTE_CLOSED", f"dispute_id: dispute {request.dispute_id} was closed meanwhile")
        except Refusal as r:
            await self._audit(caller, "resolve_dispute", r, "", row["uscc"] if row else "", trace_id)
            raise
        await self._audit(caller, "resolve_dispute", None, f"dispute {row['dispute_id']} {status}: {request.resolution}",
                          row["uscc"], trace_id)
        return to_proto(await asyncio.to_thread(self.store.get_dispute, row["dispute_id"]), self.node.id, self.clock())

    async def _corrected(self, row: dict, fields_json: str) -> Record:
        old = await asyncio.to_thread(self.store.get_record, row["record_key"])
        if old is None:
            raise Refusal(Kind.NOT_FOUND, "RECORD_NOT_FOUND", "dispute_id: the disputed record is no longer served")
        try:
            fields = validate_fields(old.category, parse_record_json(fields_json or "null") or {})
        except (ValueError, RecordError) as e:
            raise Refusal.invalid("corrected_fields_json", f"the corrected {old.category} fields are not valid: {e}")
        corrected = Record(old.uscc, old.category, old.as_of, old.source, fields)
        if corrected.key == row["record_key"]:
            raise Refusal.invalid("corrected_fields_json", "changes nothing; if the record is right, resolve as confirmed")
        return corrected

    async def _audit(self, who: Principal, action: str, refusal, allowed: str, uscc: str, trace_id: str,
                     relay: str = "") -> None:
        await self.audit_log.append(AuditEntry.of(self.clock(), who, action, refusal, allowed=allowed, uscc=uscc,
                                                  relayed_by=relay, trace_id=trace_id))
