"""The registry relays an enterprise's signed dispute to the node that holds the record; the
node verifies the signature itself and answers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Awaitable, Callable

from registry.directory import NetworkDirectory
from xinyi.audit.entry import AuditEntry
from xinyi.audit.log import AuditLog
from xinyi.clock import Clock
from xinyi.crypto.identity import Principal
from xinyi.errors import Kind, Refusal
from xinyi.privacy.disputes import check_dispute
from xinyi.relay import require_signer
from xinyi.v1 import directory_pb2, dispute_pb2, envelope_pb2

FileAtNode = Callable[[directory_pb2.NodeEntry, envelope_pb2.SignedEnvelope], Awaitable[dispute_pb2.Dispute]]


@dataclass
class DisputeRelay:
    directory: NetworkDirectory
    file_at_node: FileAtNode
    audit_log: AuditLog
    clock: Clock

    async def file(self, caller: Principal, envelope: envelope_pb2.SignedEnvelope, trace_id: str) -> dispute_pb2.Dispute:
        uscc = ""
        try:
            dispute = check_dispute(envelope, self.directory.trust, self.clock())
            uscc = dispute.message.uscc
            require_signer(caller, dispute.signer, "dispute")
            node = self.directory.current.nodes.get(dispute.message.node_id)
            if node is None:
                raise Refusal(Kind.NOT_FOUND, "NODE_NOT_FOUND", f"dispute.node_id: no node {dispute.message.node_id} in the directory")
            result = await self.file_at_node(node, envelope)
        except Refusal as r:
            await self.audit_log.append(AuditEntry.of(self.clock(), caller, "file_dispute", r, allowed="", uscc=uscc,
                                                      trace_id=trace_id))
            raise
        await self.audit_log.append(AuditEntry.of(self.clock(), caller, "file_dispute", None,
                                                  allowed=f"relayed to {node.node_id}: dispute {result.dispute_id}",
                                                  uscc=uscc, trace_id=trace_id))
        return result
