"""A node's answer to an enterprise asking who accessed its data: the audit entries about it,
each with an inclusion proof against the node's signed checkpoint."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from xinyi.audit.entry import AuditEntry
from xinyi.audit.log import AuditLog
from xinyi.clock import Clock
from xinyi.crypto.identity import Principal
from xinyi.errors import Refusal
from xinyi.policy import Action, Authorizer, Resource
from xinyi.privacy.access import check_access_request
from xinyi.relay import relayed_by
from xinyi.v1 import access_pb2, envelope_pb2

MAX_ENTRIES = 10_000


@dataclass
class AccessDesk:
    node_id: str
    audit_log: AuditLog
    authorizer: Authorizer
    clock: Clock

    async def accesses(self, caller: Principal, envelope: envelope_pb2.SignedEnvelope, trace_id: str) -> access_pb2.NodeAccesses:
        trust = self.audit_log.identity.trust()
        uscc = ""
        try:
            request = check_access_request(envelope, trust, self.clock())
            uscc = request.message.uscc
            relay = relayed_by(self.authorizer, caller, request.signer, "request")
            decision = self.authorizer.decide(request.signer, Action.READ_ACCESSES, Resource.enterprise(uscc))
            if not decision.allowed:
                raise Refusal.denied("POLICY_DENIED", decision.reason, policy_ids=decision.policy_ids)
        except Refusal as r:
            await self.audit_log.append(AuditEntry.of(self.clock(), caller, str(Action.READ_ACCESSES), r, allowed="",
                                                      uscc=uscc, trace_id=trace_id))
            raise
        latest, _ = await self.audit_log.checkpoints()
        size = latest.checkpoint.size
        rows = [e for e in await asyncio.to_thread(self.audit_log.store.find_audit, uscc=uscc, limit=MAX_ENTRIES)
                if e.index < size]
        paths = await self.audit_log.inclusion_proofs([e.index for e in rows], size)
        entries = [access_pb2.ProvenEntry(index=e.index, leaf_input=e.leaf_input, audit_path=path)
                   for e, path in zip(rows, paths)]
        await self.audit_log.append(AuditEntry.of(self.clock(), request.signer, str(Action.READ_ACCESSES), None,
                                                  allowed=f"{len(entries)} entries", relayed_by=relay,
                                                  uscc=uscc, trace_id=trace_id))
        return access_pb2.NodeAccesses(node_id=self.node_id, checkpoint=latest.note, entries=entries)
