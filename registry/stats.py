"""The registry's part in differentially private statistics: check the department's signed
query, relay it unchanged to every node in the directory, concurrently, and add the nodes'
noisy cells up, each with its 95% error bound.

    authenticate -> check replay -> authorize -> fan out -> merge -> audit

Each node checks the signature, the policy and its own privacy-budget ledger itself; the
registry holds no budget. One node's refusal or absence is reported as that node's outcome,
never as the query's. This module imports no gRPC: `compute_at` is given.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from typing import Awaitable, Callable

from registry.directory import NetworkDirectory
from xinyi.audit.entry import AuditEntry
from xinyi.audit.log import AuditLog
from xinyi.clock import Clock
from xinyi.compute import stats
from xinyi.crypto.identity import Principal
from xinyi.errors import Kind, Refusal
from xinyi.policy import Action, Authorizer, Resource
from xinyi.query import refuse_replay
from xinyi.relay import require_signer
from xinyi.store import BaseStore
from xinyi.v1 import directory_pb2, envelope_pb2, stats_pb2

# compute_at(node entry, signed query) -> the node's answer; raises Refusal when the node
# refuses (its kind, reason and metadata) or cannot be reached (Kind.UNAVAILABLE).
ComputeAt = Callable[[directory_pb2.NodeEntry, envelope_pb2.SignedEnvelope], Awaitable[stats_pb2.ComputeStatisticsResponse]]

STATUS_NAMES = {
    stats_pb2.NODE_STATS_STATUS_OK: "ok",
    stats_pb2.NODE_STATS_STATUS_REFUSED: "refused",
    stats_pb2.NODE_STATS_STATUS_UNAVAILABLE: "unavailable",
}


@dataclass
class StatisticsRelay:
    directory: NetworkDirectory
    store: BaseStore  # the registry's store: its nonces
    authorizer: Authorizer
    compute_at: ComputeAt
    audit_log: AuditLog
    config: stats.StatsConfig
    clock: Clock

    async def ask(self, caller: Principal, envelope: envelope_pb2.SignedEnvelope, trace_id: str) -> stats_pb2.AskStatisticsResponse:
        request_hash, detail, policy_ids = "", "", ()
        try:
            query = stats.check_stats_query(envelope, self.directory.trust, self.clock(), self.config)
            request_hash, detail = query.body_hash.hex(), query.describe()
            require_signer(caller, query.signer, "query")
            await refuse_replay(self.store, query.verified, self.clock())
            decision = self.authorizer.decide(caller, Action.QUERY_STATISTICS, Resource.network())
            policy_ids = decision.policy_ids
            if not decision.allowed:
                raise Refusal.denied("POLICY_DENIED", f"{caller} may not ask for statistics: {decision.reason}",
                                     policy_ids=decision.policy_ids)
            nodes = [self.directory.current.nodes[n] for n in sorted(self.directory.current.nodes)]
            if not nodes:
                raise Refusal(Kind.UNAVAILABLE, "NO_NODES", "no node is registered with the registry; nothing to ask")
        except Refusal as r:
            await self._audit(caller, r, policy_ids, request_hash, trace_id, detail)
            raise
        answers = await asyncio.gather(*(self._one(node, envelope) for node in nodes))
        outcomes = [outcome for outcome, _ in answers]
        cells = stats.merge([c for _, c in answers if c is not None], metric=query.metric, group_by=query.group_by)
        summary = " ".join(f"{o.node_id}={STATUS_NAMES.get(o.status, '?')}" + (f"({o.reason})" if o.reason else "")
                           for o in outcomes)
        await self._audit(caller, None, policy_ids, request_hash, trace_id,
                          f"{detail} nodes: {summary} cells={sum(not c.suppressed for c in cells)}")
        return stats_pb2.AskStatisticsResponse(
            request_hash=query.body_hash,
            cells=[stats_pb2.StatsCell(group=c.group, value=c.value, error_95=c.error_95, suppressed=c.suppressed,
                                       nodes=c.nodes) for c in cells],
            nodes=outcomes,
        )

    async def _one(self, node: directory_pb2.NodeEntry, envelope: envelope_pb2.SignedEnvelope
                   ) -> tuple[stats_pb2.NodeStatsOutcome, stats.NodeCells | None]:
        """Ask one node; its refusal or absence becomes its outcome."""
        try:
            answer = await self.compute_at(node, envelope)
        except Refusal as r:
            status = (stats_pb2.NODE_STATS_STATUS_UNAVAILABLE if r.kind is Kind.UNAVAILABLE
                      else stats_pb2.NODE_STATS_STATUS_REFUSED)
            outcome = stats_pb2.NodeStatsOutcome(node_id=node.node_id, status=status, code=r.kind.value,
                                                 reason=r.reason, message=r.message)
            remaining = _number(r.metadata.get("budget_remaining"))
            if remaining is not None:
                outcome.budget_remaining = remaining
            return outcome, None
        problem = _answer_problem(answer)
        if problem:
            return stats_pb2.NodeStatsOutcome(node_id=node.node_id, status=stats_pb2.NODE_STATS_STATUS_REFUSED,
                                              code="INTERNAL", reason="INVALID_ANSWER", message=problem,
                                              epsilon_charged=answer.epsilon_charged,
                                              budget_remaining=answer.budget_remaining), None
        cells = [stats.Cell(c.group, c.value, c.noise_scale, c.suppressed) for c in answer.cells]
        return (stats_pb2.NodeStatsOutcome(node_id=node.node_id, status=stats_pb2.NODE_STATS_STATUS_OK,
                                           epsilon_charged=answer.epsilon_charged,
                                           budget_remaining=answer.budget_remaining),
                stats.NodeCells(node.node_id, cells))

    async def _audit(self, caller: Principal, refusal: Refusal | None, policy_ids: tuple[str, ...], request_hash: str,
                     trace_id: str, detail: str) -> None:
        await self.audit_log.append(AuditEntry.of(self.clock(), caller, str(Action.QUERY_STATISTICS), refusal,
                                                  allowed="relayed", policy_ids=policy_ids, request_hash=request_hash,
                                                  trace_id=trace_id, detail=detail))


def _answer_problem(answer: stats_pb2.ComputeStatisticsResponse) -> str:
    """Why a node's answer cannot be merged ("" when it can)."""
    seen: set[str] = set()
    for cell in answer.cells:
        if cell.group in seen:
            return f"cell {cell.group!r} appears twice"
        seen.add(cell.group)
        if not cell.suppressed and not (math.isfinite(cell.value) and math.isfinite(cell.noise_scale)
                                        and cell.noise_scale > 0):
            return f"cell {cell.group!r} has no usable value or noise scale"
    return ""


def _number(text: str | None) -> float | None:
    try:
        value = float(text) if text is not None else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None
