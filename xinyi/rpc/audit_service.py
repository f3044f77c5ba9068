"""The AuditService servicer; nodes and the registry serve the same one over their own logs."""

from __future__ import annotations

import grpc

from xinyi.audit import AuditReader
from xinyi.errors import Refusal
from xinyi.rpc.auth import caller
from xinyi.rpc.status import to_status
from xinyi.store import AuditEntry
from xinyi.telemetry import current_trace_id
from xinyi.v1 import audit_pb2, audit_pb2_grpc


def entry_to_proto(e: AuditEntry) -> audit_pb2.AuditRecord:
    return audit_pb2.AuditRecord(
        seq=e.seq,
        at_ms=e.at_ms,
        caller_role=e.caller_role,
        caller_id=e.caller_id,
        relayed_by=e.relayed_by,
        action=e.action,
        uscc=e.uscc,
        categories=e.categories,
        purpose=e.purpose,
        consent_id=e.consent_id,
        decision=audit_pb2.DECISION_ALLOW if e.decision == "allow" else audit_pb2.DECISION_DENY,
        policy_ids=e.policy_ids,
        reason=e.reason,
        request_hash=e.request_hash,
        trace_id=e.trace_id,
        detail=e.detail,
    )


class AuditServicer(audit_pb2_grpc.AuditServiceServicer):
    def __init__(self, reader: AuditReader) -> None:
        self.reader = reader

    async def ListAuditRecords(self, request, context):
        try:
            entries = await self.reader.read(
                caller(), start_seq=request.start_seq, limit=request.limit, uscc=request.uscc, trace_id=current_trace_id()
            )
        except Refusal as r:
            await context.abort_with_status(to_status(r))
        limit = request.limit or 100
        next_seq = entries[-1].seq + 1 if len(entries) == limit else 0
        return audit_pb2.ListAuditRecordsResponse(records=[entry_to_proto(e) for e in entries], next_seq=next_seq)
