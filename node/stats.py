"""How a node answers a statistics query: a visible sequence of named steps.

    authenticate -> check replay -> authorize -> charge the budget -> tabulate -> add noise
    and suppress -> audit

The query is a government department's signed StatsQueryBody, sent by the department itself or
relayed by the registry. The department's privacy budget at this node (per calendar year,
policies/statistics.toml) is checked and charged in one transaction before anything is
computed; a query past the budget is refused and charges nothing. Every decision, allowed or
refused, is written to the node's audit log (with the epsilon) before the answer leaves.
This module imports no gRPC (see xinyi/compute/stats.py for the statistics themselves).
"""

from __future__ import annotations

import asyncio
import itertools
import json
from dataclasses import dataclass, field
from typing import Iterator

from sqlalchemy import BigInteger, Column, Double, Integer, String, Table, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from node.store import NodeStore, Record
from xinyi.audit.entry import AuditEntry
from xinyi.audit.log import AuditLog
from xinyi.clock import Clock, now_ms
from xinyi.compute import stats
from xinyi.crypto.identity import Principal
from xinyi.crypto.pki import TrustAnchor
from xinyi.errors import Kind, Refusal, Violation
from xinyi.policy import Action, Authorizer, Resource
from xinyi.query import refuse_replay
from xinyi.relay import relayed_by
from xinyi.v1 import envelope_pb2, stats_pb2

TABLE = "privacy_budget"


class PrivacyBudgets:
    """Each requester's privacy budget spent at this node, per calendar year: the table
    privacy_budget(requester, year, spent), on the node store's database."""

    def __init__(self, store: NodeStore) -> None:
        self.store = store
        existing = store.metadata.tables.get(TABLE)
        self.table: Table = existing if existing is not None else Table(
            TABLE,
            store.metadata,
            Column("requester", String(128), primary_key=True),  # "government/<USCC>", from the certificate
            Column("year", Integer, primary_key=True),
            Column("spent", Double, nullable=False),
            Column("updated_at_ms", BigInteger, nullable=False),
        )

    def charge(self, requester: str, year: int, epsilon: float, total: float, at_ms: int) -> tuple[bool, float]:
        """Add `epsilon` to the requester's spending for `year` unless that would pass `total`.

        Returns (charged, spent afterwards). One transaction; the check is part of the UPDATE's
        WHERE, so concurrent queries cannot both take the last of a budget (on PostgreSQL the
        row lock re-checks it; SQLite serializes writers).
        """
        t = self.table
        insert = pg_insert if self.store.engine.dialect.name == "postgresql" else sqlite_insert
        mine = (t.c.requester == requester, t.c.year == year)
        with self.store.engine.begin() as conn:
            conn.execute(insert(t).values(requester=requester, year=year, spent=0.0, updated_at_ms=at_ms)
                         .on_conflict_do_nothing(index_elements=["requester", "year"]))
            charged = conn.execute(
                update(t).where(*mine, t.c.spent + epsilon <= total + stats.BUDGET_TOLERANCE)
                .values(spent=t.c.spent + epsilon, updated_at_ms=at_ms)
            ).rowcount == 1
            spent = conn.execute(select(t.c.spent).where(*mine)).scalar_one()
        return charged, float(spent)

    def spent(self, requester: str, year: int) -> float:
        t = self.table
        with self.store.engine.connect() as conn:
            value = conn.execute(select(t.c.spent).where(t.c.requester == requester, t.c.year == year)).scalar()
        return float(value or 0.0)


def register_tables(store: NodeStore) -> PrivacyBudgets:
    """Add the privacy_budget table to the store's schema. Call before store.create_schema()."""
    return PrivacyBudgets(store)


@dataclass
class _Trail:
    """What the audit record will say, filled in as the steps learn it."""

    caller: Principal
    trace_id: str
    relayed_by: str = ""
    request_hash: str = ""
    categories: tuple[str, ...] = ()
    policy_ids: tuple[str, ...] = ()
    detail: list[str] = field(default_factory=list)


@dataclass
class StatisticsDesk:
    node_id: str
    store: NodeStore
    budgets: PrivacyBudgets
    authorizer: Authorizer
    audit_log: AuditLog
    config: stats.StatsConfig
    clock: Clock = now_ms

    def __post_init__(self) -> None:
        self.trust: TrustAnchor = self.audit_log.identity.trust()

    async def compute(self, caller: Principal, envelope: envelope_pb2.SignedEnvelope, trace_id: str) -> stats_pb2.ComputeStatisticsResponse:
        trail = _Trail(caller=caller, trace_id=trace_id)
        config = self.config  # one configuration for the whole query, even across a reload
        try:
            query = self.authenticate(envelope, trail, config)
            await refuse_replay(self.store, query.verified, self.clock())
            self.authorize(query, trail)
            remaining, year = await self.charge(query, trail, config)
            table = await asyncio.to_thread(self.tabulate, query, config)
            released = stats.release(table, metric=query.metric, epsilon=query.epsilon, config=config)
        except Refusal as refusal:
            await self.audit(trail, refusal)
            raise
        trail.detail.append(f"cells={len(released.cells)} suppressed={released.suppressed}")
        await self.audit(trail, None)
        return stats_pb2.ComputeStatisticsResponse(
            node_id=self.node_id,
            cells=[stats_pb2.NodeCell(group=c.group, value=c.value, noise_scale=c.noise_scale, suppressed=c.suppressed)
                   for c in released.cells],
            epsilon_charged=query.epsilon,
            budget_remaining=remaining,
        )

    # -- the steps ---------------------------------------------------------------------------
    def authenticate(self, envelope: envelope_pb2.SignedEnvelope, trail: _Trail, config: stats.StatsConfig) -> stats.StatsQuery:
        """The department's signature, checked here whoever relayed the query; the fields valid."""
        trail.detail = [_describe_unverified(envelope)]
        query = stats.check_stats_query(envelope, self.trust, self.clock(), config)
        trail.request_hash = query.body_hash.hex()
        trail.detail = [query.describe()]
        trail.categories = stats.population(query.metric, query.group_by)
        trail.relayed_by = relayed_by(self.authorizer, trail.caller, query.signer, "query")
        trail.caller = query.signer  # from here on, the asker is the signer
        return query

    def authorize(self, query: stats.StatsQuery, trail: _Trail) -> None:
        decision = self.authorizer.decide(query.signer, Action.QUERY_STATISTICS, Resource.network())
        trail.policy_ids = decision.policy_ids
        if not decision.allowed:
            raise Refusal.denied("POLICY_DENIED", f"{query.signer} may not ask for statistics: {decision.reason}",
                                 policy_ids=decision.policy_ids)

    async def charge(self, query: stats.StatsQuery, trail: _Trail, config: stats.StatsConfig) -> tuple[float, int]:
        """Check and charge the signer's budget for this year, in one transaction."""
        now = self.clock()
        year = stats.budget_year(now)
        requester = str(query.signer)
        charged, spent = await asyncio.to_thread(self.budgets.charge, requester, year, query.epsilon,
                                                 config.total_epsilon, now)
        remaining = max(config.total_epsilon - spent, 0.0)
        if not charged:
            description = (f"asks for epsilon {query.epsilon:g}, but only {remaining:g} of {requester}'s "
                           f"{config.total_epsilon:g} for {year} is left at node {self.node_id}")
            raise Refusal(Kind.PRECONDITION, "PRIVACY_BUDGET_EXHAUSTED", f"query.epsilon: {description}",
                          (Violation("query.epsilon", description),),
                          metadata={"budget_remaining": repr(remaining), "year": str(year)})
        trail.detail.append(f"charged={query.epsilon:g} remaining={remaining:g} year={year}")
        return remaining, year

    def tabulate(self, query: stats.StatsQuery, config: stats.StatsConfig) -> stats.Table:
        """The true cells, from this node's own current records only (runs in a thread)."""
        categories = stats.population(query.metric, query.group_by)
        return stats.tabulate(self._facts(categories), metric=query.metric, group_by=query.group_by,
                              node_id=self.node_id, config=config)

    def _facts(self, categories: tuple[str, ...]) -> Iterator[stats.Facts]:
        """One Facts per enterprise with current records in `categories`, streamed by USCC."""
        r = self.store.records.c
        q = (select(r.uscc, r.category, r.as_of, r.record_key, r.fields_json)
             .where(r.superseded_by.is_(None), r.category.in_(list(categories)))
             .order_by(r.uscc))
        with self.store.engine.connect() as conn:
            rows = conn.execution_options(stream_results=True, yield_per=5000).execute(q)
            for uscc, group in itertools.groupby(rows, key=lambda row: row.uscc):
                records = [Record(uscc, row.category, row.as_of, "", json.loads(row.fields_json), stored_key=row.record_key)
                           for row in group]
                yield stats.facts_of(uscc, records)

    async def audit(self, trail: _Trail, refusal: Refusal | None) -> None:
        await self.audit_log.append(AuditEntry.of(
            self.clock(), trail.caller, str(Action.QUERY_STATISTICS), refusal, allowed="answered",
            policy_ids=trail.policy_ids, relayed_by=trail.relayed_by, categories=trail.categories,
            request_hash=trail.request_hash, trace_id=trail.trace_id, detail=" ".join(d for d in trail.detail if d),
        ))


def _describe_unverified(envelope: envelope_pb2.SignedEnvelope) -> str:
    """What the query asks, for the audit record of a query refused before it verified."""
    body = stats_pb2.StatsQueryBody()
    try:
        body.ParseFromString(envelope.body)
    except Exception:  # noqa: BLE001 - malformed bytes from the network
        return ""
    metric = stats.METRIC_NAMES.get(body.metric, str(body.metric))
    group_by = stats.GROUPING_NAMES.get(body.group_by, str(body.group_by))
    return f"unverified: metric={metric} group_by={group_by} epsilon={body.epsilon!r}"
