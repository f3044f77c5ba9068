"""The node operator's data-quality report over gRPC (NodeService.GetNodeReport): computed by
node.quality from the store, with the running node's registration and consent-sync state, for
the node's own identity only (the rule disputes follow). Refusals are audited; a report read is
not (it reads no enterprise's data beyond counts, and it would flood the log of a page that
refreshes)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Callable

from node.quality import DEFAULT_DAYS, DEFAULT_LOADS, DEFAULT_REJECTS_PER_LOAD, LiveState, node_quality
from node.store import NodeStore
from xinyi.audit.entry import AuditEntry
from xinyi.audit.log import AuditLog
from xinyi.clock import Clock
from xinyi.crypto.identity import Principal
from xinyi.errors import Refusal
from xinyi.policy import Action, Authorizer, Resource
from xinyi.quality import DataQuality


@dataclass
class ReportDesk:
    node: Principal
    store: NodeStore
    authorizer: Authorizer
    audit_log: AuditLog
    clock: Clock
    live: Callable[[], LiveState]

    async def report(self, caller: Principal, *, days: int = 0, loads: int = 0, rejects_per_load: int = 0,
                     trace_id: str = "") -> DataQuality:
        try:
            decision = self.authorizer.decide(caller, Action.READ_NODE_REPORT, Resource.network())
            if not decision.allowed or caller != self.node:
                raise Refusal.denied("NOT_THIS_NODES_OPERATOR", f"{caller} is not the operator of node {self.node.id}; "
                                     "the node's report is read with the node's own identity",
                                     policy_ids=decision.policy_ids)
            try:
                return await asyncio.to_thread(
                    node_quality, self.store, self.clock(), node_id=self.node.id, live=self.live(),
                    days=days or DEFAULT_DAYS, loads=loads or DEFAULT_LOADS,
                    rejects_per_load=rejects_per_load or DEFAULT_REJECTS_PER_LOAD)
            except ValueError as e:  # a bound out of range: node_quality names it
                name, _, why = str(e).partition(": ")
                raise Refusal.invalid(name, why) from None
        except Refusal as r:
            await self.audit_log.append(AuditEntry.of(self.clock(), caller, str(Action.READ_NODE_REPORT), r, allowed="",
                                                      trace_id=trace_id))
            raise
