"""The node operator's data-quality report (xinyi.quality.DataQuality), computed from the node's
store: `xinyi node quality --db URL` reads it with the node stopped or running; the running node
serves it, with its live registration and consent-sync state, as NodeService.GetNodeReport to
its own identity only (node.report). No gRPC here.

Every figure is computed by the database (GROUP BY), so the report costs a few queries however
many records or audit entries the node holds; the per-day query counts read only the audit
entries of the window, found by their index.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import case, func, select

from node.store import NodeStore
from xinyi.clock import DAY_MS
from xinyi.privacy.consent import CHINA
from xinyi.quality import (
    REGISTERED_WITHIN_MS,
    CategoryQuality,
    DataQuality,
    DisputeQueue,
    IngestLoad,
    IngestReject,
    QueriesOnDay,
    QueuedDispute,
    SourceFreshness,
    SyncState,
    age_days,
    is_stale,
    refresh_of,
    share,
)
from xinyi.records.categories import INGESTIBLE_CATEGORIES

# What the node writes to node_state for this report (node.server), beside "consent_sync".
REGISTERED_AT = "registered_at_ms"
CONSENTS_CONFIRMED_AT = "consents_confirmed_at_ms"
CONSENT_SYNC = "consent_sync"

DEFAULT_DAYS, MAX_DAYS = 30, 366
DEFAULT_LOADS = 10  # the store keeps NodeStore.KEEP_LOADS
DEFAULT_REJECTS_PER_LOAD, MAX_REJECTS_PER_LOAD = 100, 1000
# Rejected lines in one report, over all its loads: with reasons of up to 500 characters the
# report stays far below a client's 4 MiB message limit.
MAX_REPORT_REJECTS = 2000
MAX_QUEUED_DISPUTES = 200
DISPUTE_REASON_CHARS = 200
CONSENT_FRESHNESS_MS = 30_000  # node.server.NodeConfig.consent_freshness_seconds' default
_BEIJING_OFFSET_MS = 8 * 3_600_000  # China Standard Time has no daylight saving
# Audit entries are appended in time order, give or take the clocks of a node's processes.
_CLOCK_SLACK_MS = 3_600_000


@dataclass(frozen=True)
class LiveState:
    """What only the running node knows (node.server.NodeServer), for SyncState."""

    registry_configured: bool
    registered: bool
    refused_reason: str
    consents_confirmed_at_ms: int
    consent_freshness_ms: int
    directory_version: int


def node_quality(store: NodeStore, now_ms: int, *, node_id: str = "", live: LiveState | None = None,
                 days: int = DEFAULT_DAYS, loads: int = DEFAULT_LOADS,
                 rejects_per_load: int = DEFAULT_REJECTS_PER_LOAD) -> DataQuality:
    """The report as of `now_ms`: `days` days of queries (today included), the newest `loads`
    loads with up to `rejects_per_load` rejected lines each. Raises ValueError naming a bound
    out of range."""
    for name, value, low, high in (("days", days, 1, MAX_DAYS), ("loads", loads, 0, NodeStore.KEEP_LOADS),
                                   ("rejects_per_load", rejects_per_load, 0, MAX_REJECTS_PER_LOAD)):
        if not low <= value <= high:
            raise ValueError(f"{name}: must be from {low} to {high}, got {value}")
    today = dt.datetime.fromtimestamp(now_ms / 1000, CHINA).date()
    categories, sources, enterprises, records = _holdings(store, today)
    return DataQuality(
        node_id=node_id,
        generated_at_ms=now_ms,
        today=today.isoformat(),
        enterprises=enterprises,
        records=records,
        categories=categories,
        sources=sources,
        loads=tuple(_load(row) for row in store.recent_loads(loads, rejects_per_load, MAX_REPORT_REJECTS)) if loads else (),
        disputes=_disputes(store, now_ms),
        sync=_sync(store, now_ms, live),
        queries=_queries(store, now_ms, today, days),
    )


def _holdings(store: NodeStore, today: dt.date):
    r = store.records.c
    current = r.superseded_by.is_(None)
    with store.engine.connect() as conn:
        by_source = conn.execute(
            select(r.category, r.source, func.count(), func.max(r.as_of)).where(current)
            .group_by(r.category, r.source).order_by(r.category, r.source)).all()
        firms = dict(conn.execute(select(r.category, func.count(r.uscc.distinct())).where(current)
                                  .group_by(r.category)).all())
        enterprises = conn.execute(select(func.count(r.uscc.distinct())).where(current)).scalar_one()
    sources = tuple(SourceFreshness(category, source, count, as_of, age_days(as_of, today),
                                    is_stale(category, as_of, today))
                    for category, source, count, as_of in by_source)
    names = [*INGESTIBLE_CATEGORIES, *sorted({s.category for s in sources} - set(INGESTIBLE_CATEGORIES))]
    categories = []
    for name in names:
        mine = [s for s in sources if s.category == name]
        latest = max((s.latest_as_of for s in mine), default="")
        refresh = refresh_of(name)
        categories.append(CategoryQuality(
            category=name, records=sum(s.records for s in mine), enterprises=firms.get(name, 0),
            share=share(firms.get(name, 0), enterprises), latest_as_of=latest, cadence=refresh.cadence,
            stale_after_days=refresh.stale_after_days, stale=is_stale(name, latest, today),
            stale_sources=sum(s.stale for s in mine)))
    return tuple(categories), sources, enterprises, sum(s.records for s in sources)


def _load(row: dict) -> IngestLoad:
    return IngestLoad(
        load_id=row["load_id"], file_name=row["file_name"], category=row["category"],
        started_at_ms=row["started_at_ms"], finished_at_ms=row["finished_at_ms"], lines_read=row["lines_read"],
        accepted=row["inserted"] + row["duplicates"], inserted=row["inserted"], duplicates=row["duplicates"],
        rejected=row["rejected"], failure=row["failure"], rejects_kept=row["rejects_kept"],
        rejects=tuple(IngestReject(x["line_no"], x["field"], x["reason"]) for x in row["rejects"]))


def _disputes(store: NodeStore, now_ms: int) -> DisputeQueue:
    d, r = store.disputes.c, store.records.c
    is_open = d.status == "open"
    with store.engine.connect() as conn:
        open_count, overdue = conn.execute(
            select(func.count(), func.coalesce(func.sum(case((d.due_ms < now_ms, 1), else_=0)), 0)).where(is_open)).one()
        rows = conn.execute(
            select(d.dispute_id, d.uscc, d.record_key, d.reason, d.filed_at_ms, d.due_ms, r.category)
            .select_from(store.disputes.outerjoin(store.records, r.record_key == d.record_key))
            .where(is_open).order_by(d.due_ms, d.dispute_id).limit(MAX_QUEUED_DISPUTES)).all()
    queued = tuple(QueuedDispute(
        dispute_id=row.dispute_id, uscc=row.uscc, record_id=row.record_key, category=row.category or "",
        reason=row.reason[:DISPUTE_REASON_CHARS], filed_at_ms=row.filed_at_ms, due_ms=row.due_ms,
        overdue=now_ms > row.due_ms, days_left=(row.due_ms - now_ms) // DAY_MS) for row in rows)
    return DisputeQueue(open=open_count, overdue=int(overdue), disputes=queued)


def _sync(store: NodeStore, now_ms: int, live: LiveState | None) -> SyncState:
    stored = store.state_values(REGISTERED_AT, CONSENTS_CONFIRMED_AT, CONSENT_SYNC)
    registered_at = stored.get(REGISTERED_AT, 0)
    confirmed = live.consents_confirmed_at_ms if live else stored.get(CONSENTS_CONFIRMED_AT, 0)
    freshness = live.consent_freshness_ms if live else CONSENT_FRESHNESS_MS
    lag = now_ms - confirmed if confirmed else -1
    return SyncState(
        live=live is not None,
        registry_configured=live.registry_configured if live else False,
        registered=live.registered if live else bool(registered_at) and now_ms - registered_at <= REGISTERED_WITHIN_MS,
        registered_at_ms=registered_at,
        refused_reason=live.refused_reason if live else "",
        consent_sync_position=stored.get(CONSENT_SYNC, 0),
        consents_confirmed_at_ms=confirmed,
        consent_sync_lag_ms=lag,
        consents_fresh=0 <= lag <= freshness,
        consent_freshness_ms=freshness,
        directory_version=live.directory_version if live else 0,
    )


def _queries(store: NodeStore, now_ms: int, today: dt.date, days: int) -> tuple[QueriesOnDay, ...]:
    first_day = today - dt.timedelta(days=days - 1)
    start_ms = int(dt.datetime.combine(first_day, dt.time(), CHINA).timestamp() * 1000)
    a = store.audit.c
    day_number = (a.at_ms + _BEIJING_OFFSET_MS) // DAY_MS  # days since 1970-01-01, Beijing
    with store.engine.connect() as conn:
        first_index = _first_index_at(conn, store, start_ms - _CLOCK_SLACK_MS)
        rows = conn.execute(
            select(day_number.label("day"), func.sum(case((a.decision == "allow", 1), else_=0)),
                   func.sum(case((a.decision == "allow", 0), else_=1)))
            .where(a.idx >= first_index, a.at_ms >= start_ms, a.at_ms <= now_ms, a.action == "query")
            .group_by(day_number)).all()
    counts = {int(day): (int(allowed), int(denied)) for day, allowed, denied in rows}
    epoch = dt.date(1970, 1, 1)
    out = []
    for i in range(days):
        day = first_day + dt.timedelta(days=i)
        answered, refused = counts.get((day - epoch).days, (0, 0))
        out.append(QueriesOnDay(day.isoformat(), answered, refused))
    return tuple(out)


def _first_index_at(conn, store: NodeStore, at_ms: int) -> int:
    """The index of the first audit entry at or after `at_ms` (a binary search on the primary
    key: the log is in time order), or one past the last entry."""
    a = store.audit.c
    low, high = conn.execute(select(func.coalesce(func.min(a.idx), 0), func.coalesce(func.max(a.idx), -1))).one()
    end = high + 1
    high = end
    while low < high:
        mid = (low + high) // 2
        at = conn.execute(select(a.at_ms).where(a.idx >= mid).order_by(a.idx).limit(1)).scalar()
        if at is None or at >= at_ms:
            high = mid
        else:
            low = mid + 1
    return low
