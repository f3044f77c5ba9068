"""A node's data quality, as its operator sees it: what the node holds per category and source
and how fresh it is, the last loads and the lines they rejected, the share of enterprises each
category covers, the disputes waiting for a reply, whether the node is registered and its
consents confirmed, and the queries it answered and refused per day.

node.quality computes it from the node's store (`xinyi node quality`, the GetNodeReport RPC);
xinyi.client.OperatorClient.report returns it. Plain data: no gRPC, no storage here.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass
from typing import Any

from xinyi.records.categories import EXPECTED_REFRESH, Refresh

# When a category has no entry (never: every category has one), a year.
DEFAULT_REFRESH = Refresh("event-driven", 365)
# Offline (read from the store, the node not asked): registered if it last did within this.
REGISTERED_WITHIN_MS = 5 * 60_000


@dataclass(frozen=True)
class CategoryQuality:
    """One category: how much the node holds, for how many enterprises, and how fresh."""

    category: str
    records: int  # current records (not superseded by a dispute's correction)
    enterprises: int  # enterprises with at least one current record in the category
    share: float  # enterprises / DataQuality.enterprises, 0.0 to 1.0 (0.0 when the node knows none)
    latest_as_of: str  # YYYY-MM-DD, the newest as_of of any source; "" when none held
    cadence: str  # the expected refresh: monthly, quarterly, yearly, event-driven
    stale_after_days: int
    stale: bool  # latest_as_of is more than stale_after_days before DataQuality.today
    stale_sources: int  # sources of this category whose own newest as_of is stale


@dataclass(frozen=True)
class SourceFreshness:
    """One supplying department's records of one category."""

    category: str
    source: str
    records: int
    latest_as_of: str  # YYYY-MM-DD
    age_days: int  # days from latest_as_of to DataQuality.today
    stale: bool  # age_days > the category's stale_after_days


@dataclass(frozen=True)
class IngestReject:
    """A line a load refused. The reason leaves out the values the line held ('…')."""

    line_no: int
    field: str  # the offending field, or "line" (not JSON, wrong number of cells, ...)
    reason: str


@dataclass(frozen=True)
class IngestLoad:
    """One `xinyi node ingest` of a file."""

    load_id: int
    file_name: str
    category: str  # --category, "" for JSON Lines naming it per line
    started_at_ms: int
    finished_at_ms: int
    lines_read: int
    accepted: int  # inserted + duplicates
    inserted: int
    duplicates: int  # valid lines the node already held
    rejected: int  # all bad lines, however many
    failure: str  # why the whole file was refused (nothing loaded), or ""
    rejects_kept: int  # bad lines whose number and reason the node kept (the first 1000)
    rejects: tuple[IngestReject, ...] = ()  # the first of them, in line order


@dataclass(frozen=True)
class QueuedDispute:
    """An open dispute: the node's operator owes the enterprise a written reply by due_ms."""

    dispute_id: str
    uscc: str
    record_id: str
    category: str  # of the disputed record; "" if it is no longer stored
    reason: str  # the enterprise's objection (first 200 characters)
    filed_at_ms: int
    due_ms: int  # filed + 20 days (Credit Reporting Regulation Art. 25)
    overdue: bool
    days_left: int  # whole days until due_ms; negative when overdue


@dataclass(frozen=True)
class DisputeQueue:
    open: int
    overdue: int
    disputes: tuple[QueuedDispute, ...] = ()  # overdue first, then by due date; at most 200


@dataclass(frozen=True)
class SyncState:
    """Registration with the registry and the consent sync. `live` when the running node
    answered (GetNodeReport); otherwise what the node last wrote to its store."""

    live: bool
    registry_configured: bool  # live only: the node was started with --registry
    registered: bool
    registered_at_ms: int  # the last successful registration, 0 never
    refused_reason: str  # live only: why the registry will never accept this node, or ""
    consent_sync_position: int  # the registry's consent-change number read up to
    consents_confirmed_at_ms: int  # when a sync last reached the registry's head, 0 never
    consent_sync_lag_ms: int  # generated_at_ms - consents_confirmed_at_ms; -1 never confirmed
    consents_fresh: bool  # lag within consent_freshness_ms: queries under consents are answered
    consent_freshness_ms: int
    directory_version: int  # live only: the signed directory the node holds, 0 none


@dataclass(frozen=True)
class QueriesOnDay:
    day: str  # YYYY-MM-DD, Beijing calendar
    answered: int  # audit decision allow
    refused: int  # audit decision deny (a query ended by a fault or a cancelled call is one too; its reason says which)


@dataclass(frozen=True)
class DataQuality:
    node_id: str  # "" when read from a store alone (the CLI)
    generated_at_ms: int
    today: str  # YYYY-MM-DD, the Beijing calendar day staleness is judged on
    enterprises: int  # enterprises with at least one current record
    records: int  # current records
    categories: tuple[CategoryQuality, ...]
    sources: tuple[SourceFreshness, ...]  # by category, then source
    loads: tuple[IngestLoad, ...]  # newest first
    disputes: DisputeQueue
    sync: SyncState
    queries: tuple[QueriesOnDay, ...]  # oldest day first, one per day, days without queries as 0

    @property
    def stale(self) -> list[SourceFreshness]:
        return [s for s in self.sources if s.stale]

    def to_json(self) -> dict[str, Any]:
        """Plain JSON values (lists, not tuples), the same names as the dataclasses."""
        return dataclasses.asdict(self, dict_factory=lambda pairs: {k: _listed(v) for k, v in pairs})

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> "DataQuality":
        return _build(cls, obj)


def _listed(value):
    return [_listed(v) for v in value] if isinstance(value, tuple) else value


def _build(cls, obj: dict[str, Any]):
    """A dataclass from to_json's dict, nested dataclasses and tuples of them included."""
    kinds = {"categories": CategoryQuality, "sources": SourceFreshness, "loads": IngestLoad, "rejects": IngestReject,
             "disputes": QueuedDispute, "queries": QueriesOnDay}
    values = {}
    for f in dataclasses.fields(cls):
        value = obj[f.name]
        if f.name == "disputes" and cls is DataQuality:
            value = _build(DisputeQueue, value)
        elif f.name == "sync":
            value = _build(SyncState, value)
        elif isinstance(value, list):
            value = tuple(_build(kinds[f.name], v) for v in value)
        values[f.name] = value
    return cls(**values)


# --- the judgements, kept apart from the store so that they read plainly ------------------------

def refresh_of(category: str) -> Refresh:
    return EXPECTED_REFRESH.get(category, DEFAULT_REFRESH)


def age_days(as_of: str, today: dt.date) -> int:
    return (today - dt.date.fromisoformat(as_of)).days


def is_stale(category: str, as_of: str, today: dt.date) -> bool:
    return bool(as_of) and age_days(as_of, today) > refresh_of(category).stale_after_days


def share(part: int, whole: int) -> float:
    return part / whole if whole else 0.0


__all__ = [
    "CategoryQuality", "DataQuality", "DisputeQueue", "IngestLoad", "IngestReject", "QueriesOnDay", "QueuedDispute",
    "SourceFreshness", "SyncState", "age_days", "is_stale", "refresh_of", "share",
]
