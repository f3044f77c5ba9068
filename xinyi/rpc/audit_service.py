"""The AuditService servicer; nodes and the registry serve the same one over their own logs."""

from __future__ import annotations

from typing import Callable

from xinyi.audit.desk import AuditDesk
from xinyi.rpc.auth import caller
from xinyi.rpc.status import refusals_as_status
from xinyi.telemetry import current_trace_id
from xinyi.v1 import audit_pb2, audit_pb2_grpc, envelope_pb2


class AuditServicer(audit_pb2_grpc.AuditServiceServicer):
    def __init__(self, desk: AuditDesk, directory: Callable[[], envelope_pb2.SignedEnvelope | None]) -> None:
        self.desk = desk
        self.directory = directory  # the signed directory the log's owner holds, for auditors' checks

    @refusals_as_status
    async def ListAuditRecords(self, request, context):
        entries, following = await self.desk.records(caller(), start=request.start, limit=request.limit,
                                                     uscc=request.uscc, trace_id=current_trace_id())
        return audit_pb2.ListAuditRecordsResponse(records=[e.record() for e in entries], next=following)

    @refusals_as_status
    async def GetCheckpoint(self, request, context):
        latest, cosigned = await self.desk.checkpoint(caller(), current_trace_id())
        response = audit_pb2.GetCheckpointResponse(checkpoint=latest.note, timestamp_ms=latest.at_ms)
        directory = self.directory()
        if directory is not None:
            response.directory.CopyFrom(directory)
        if cosigned is not None:
            response.cosigned_checkpoint = cosigned.note
        return response

    @refusals_as_status
    async def GetEntries(self, request, context):
        entries = await self.desk.entries(caller(), request.start, request.end, current_trace_id())
        return audit_pb2.GetEntriesResponse(
            entries=[audit_pb2.LogEntry(index=e.index, leaf_input=e.leaf_input) for e in entries]
        )

    @refusals_as_status
    async def GetInclusionProof(self, request, context):
        which = request.WhichOneof("leaf")
        index, path = await self.desk.inclusion(
            caller(),
            index=request.index if which == "index" else None,
            leaf_hash=request.leaf_hash if which == "leaf_hash" else None,
            tree_size=request.tree_size,
            trace_id=current_trace_id(),
        )
        return audit_pb2.GetInclusionProofResponse(leaf_index=index, audit_path=path)

    @refusals_as_status
    async def GetConsistencyProof(self, request, context):
        path = await self.desk.consistency(caller(), request.first, request.second, current_trace_id())
        return audit_pb2.GetConsistencyProofResponse(consistency=path)
