"""The registry relays an enterprise's signed dispute to the node that holds the record; the
node verifies the signature itself and answers. An enterprise's signed request for its own
disputes goes to every node that routes for it, concurrently; each node's signed answer is
passed back unchanged, and a node that fails is reported beside the others."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Awaitable, Callable

from registry.directory import NetworkDirectory
from xinyi.audit.entry import AuditEntry
from xinyi.audit.log import AuditLog
from xinyi.clock import Clock
from xinyi.crypto.identity import Principal
from xinyi.errors import Kind, Refusal
from xinyi.policy import Action, Authorizer, Resource
from xinyi.privacy.disputes import check_dispute, check_my_disputes_request
from xinyi.relay import require_signer
from xinyi.v1 import directory_pb2, dispute_pb2, envelope_pb2

FileAtNode = Callable[[directory_pb2.NodeEntry, envelope_pb2.SignedEnvelope], Awaitable[dispute_pb2.Dispute]]
AskDisputes = Callable[[directory_pb2.NodeEntry, dispute_pb2.NodeListMyDisputesRequest],
                       Awaitable[dispute_pb2.NodeDisputes]]

RESPONSE_BUDGET = 3 * 1024 * 1024  # every node's answer together, under gRPC's 4 MiB
ANSWER_SLACK = 16 * 1024           # a node's certificates, signature and framing beyond its signed body


@dataclass
class DisputeRelay:
    directory: NetworkDirectory
    file_at_node: FileAtNode
    audit_log: AuditLog
    clock: Clock
    authorizer: Authorizer | None = None
    ask_disputes: AskDisputes | None = None

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

    async def of_enterprise(self, caller: Principal, request: dispute_pb2.ListMyDisputesRequest,
                            trace_id: str) -> list[dispute_pb2.NodeDisputes]:
        """The calling enterprise's disputes, one signed answer per node on its route."""
        uscc = ""
        try:
            # Who asks is the TLS caller: a bank is refused before its statement is even read.
            decision = self.authorizer.decide(caller, Action.READ_DISPUTES, Resource.enterprise(caller.id))
            if not decision.allowed:
                raise Refusal.denied("POLICY_DENIED", f"only an enterprise lists disputes, its own ({decision.reason})",
                                     policy_ids=decision.policy_ids)
            checked = check_my_disputes_request(request.request, self.directory.trust, self.clock())
            require_signer(caller, checked.signer, "request")
            uscc = checked.signer.id
            route = self.directory.route(uscc)
        except Refusal as r:
            await self.audit_log.append(AuditEntry.of(self.clock(), caller, str(Action.READ_DISPUTES), r, allowed="",
                                                      uscc=uscc, trace_id=trace_id))
            raise
        nodes = self.directory.current.nodes
        share = RESPONSE_BUDGET // max(len(route), 1)
        answers = list(await asyncio.gather(*(
            self._ask_one(nodes[n], dispute_pb2.NodeListMyDisputesRequest(request=request.request,
                                                                          max_bytes=share - ANSWER_SLACK), share)
            for n in route)))
        failed = [a.node_id for a in answers if a.error]
        await self.audit_log.append(AuditEntry.of(
            self.clock(), caller, str(Action.READ_DISPUTES), None, uscc=uscc, trace_id=trace_id,
            allowed=f"asked {','.join(route) or 'no node'}" + (f"; no answer from {','.join(failed)}" if failed else "")))
        return answers

    async def _ask_one(self, node: directory_pb2.NodeEntry, request: dispute_pb2.NodeListMyDisputesRequest,
                       share: int) -> dispute_pb2.NodeDisputes:
        answer = await self.ask_disputes(node, request)
        answer.node_id = node.node_id  # the answer's signature is checked by the enterprise against this node
        if answer.ByteSize() > share:
            return dispute_pb2.NodeDisputes(node_id=node.node_id, error_code="RESOURCE_EXHAUSTED",
                                            error=f"RESOURCE_EXHAUSTED: the node's answer of {answer.ByteSize()} bytes "
                                                  f"is larger than the {share} asked")
        return answer
