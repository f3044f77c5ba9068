"""The registry's part in access transparency: check the enterprise's signed request, ask every
node that routes for it, concurrently, and pass the proven answers back unchanged."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Awaitable, Callable

from registry.directory import NetworkDirectory
from xinyi.audit.entry import AuditEntry
from xinyi.audit.log import AuditLog
from xinyi.clock import Clock
from xinyi.crypto.identity import Principal
from xinyi.errors import Refusal
from xinyi.policy import Action, Authorizer, Resource
from xinyi.privacy.access import check_access_request
from xinyi.relay import require_signer
from xinyi.v1 import access_pb2, directory_pb2, envelope_pb2

AskAccesses = Callable[[directory_pb2.NodeEntry, envelope_pb2.SignedEnvelope], Awaitable[access_pb2.NodeAccesses]]


@dataclass
class AccessRelay:
    directory: NetworkDirectory
    authorizer: Authorizer
    ask: AskAccesses
    audit_log: AuditLog
    clock: Clock

    async def list(self, caller: Principal, envelope: envelope_pb2.SignedEnvelope, trace_id: str) -> list[access_pb2.NodeAccesses]:
        uscc = ""
        try:
            request = check_access_request(envelope, self.directory.trust, self.clock())
            uscc = request.message.uscc
            require_signer(caller, request.signer, "request")
            decision = self.authorizer.decide(caller, Action.READ_ACCESSES, Resource.enterprise(uscc))
            if not decision.allowed:
                raise Refusal.denied("POLICY_DENIED", decision.reason, policy_ids=decision.policy_ids)
        except Refusal as r:
            await self.audit_log.append(AuditEntry.of(self.clock(), caller, str(Action.READ_ACCESSES), r, allowed="",
                                                      uscc=uscc, trace_id=trace_id))
            raise
        node_ids = self.directory.route(uscc)
        nodes = self.directory.current.nodes
        answers = list(await asyncio.gather(*(self.ask(nodes[n], envelope) for n in node_ids)))
        await self.audit_log.append(AuditEntry.of(self.clock(), caller, str(Action.READ_ACCESSES), None,
                                                  allowed=f"asked {','.join(node_ids) or 'no node'}", uscc=uscc,
                                                  trace_id=trace_id))
        return answers
