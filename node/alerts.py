"""Early-warning alerts at the node: subscriptions, detection at ingest, delivery by polling.

Two tables beside the records, registered on the NodeStore's metadata by `register_tables`
(the server calls it right after creating its NodeStore, so `create_schema` makes them):

    alert_subscriptions(bank, uscc, consent_id, since_ms)
        a bank watching an enterprise under a consent; alerts detected since since_ms reach it
    alerts(seq, uscc, kind, summary, record_key, detected_at_ms)
        what ingestion found; seq increases for ever (never reused, also after pruning), and
        is the cursor a bank polls after

Detection (`IngestWatch`, called by node.ingest for each batch, before the batch is stored):
one query finds which enterprises of the batch anyone subscribed to; for those only, their
records are read and compared with the batch (xinyi.compute.alerts.detect). Alerts are written before
the records, and (record_key, kind) is unique: a load that dies half-way and is run again
raises the same alerts again, as no-ops. An alert is never lost, and never doubled.

Delivery (`AlertDesk.poll`): each poll re-checks the consent, so a revoked, paused or expired
consent stops the alerts at once; then the alerts after the bank's cursor for this node, of the
kinds the consent covers, detected since the subscription, are signed one by one with the
node's key, batched and sealed to the poll's one-time key. See xinyi/compute/alerts.py for why polling.

This module imports no gRPC.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Iterable, Sequence

from sqlalchemy import (
    BigInteger,
    Column,
    Index,
    String,
    Table,
    UniqueConstraint,
    delete,
    func,
    inspect,
    or_,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from node.consents import ConsentFreshness
from node.store import NodeStore, Record
from xinyi import db
from xinyi.audit.entry import AuditEntry
from xinyi.audit.log import AuditLog
from xinyi.clock import Clock, now_ms
from xinyi.compute.alerts import (
    ALERT_CATEGORIES,
    MAX_ALERTS_PER_POLL,
    PURPOSE,
    AlertRules,
    StoredAlert,
    alert_categories,
    check_monitoring_consent,
    check_poll,
    check_subscribe,
    detect,
    kinds_covered,
    refuse_replay,
    sign_alerts,
)
from xinyi.crypto.envelope import Verified
from xinyi.crypto.identity import Principal, Role
from xinyi.crypto.pki import Identity, licence_of
from xinyi.crypto.sealing import seal_to
from xinyi.errors import Kind, Refusal
from xinyi.policy import Action, Authorizer, Resource
from xinyi.relay import relayed_by
from xinyi.v1 import alerts_pb2, envelope_pb2

SUBSCRIPTIONS = "alert_subscriptions"
ALERTS = "alerts"
_CHUNK = 5000  # enterprises per IN (...) list: far below SQLite's and PostgreSQL's parameter limits


def register_tables(store: NodeStore) -> "AlertStore":
    """Add the alert tables to the store's metadata (idempotent); call before create_schema."""
    md = store.metadata
    if SUBSCRIPTIONS not in md.tables:
        Table(
            SUBSCRIPTIONS,
            md,
            Column("bank", String(18), primary_key=True),
            Column("uscc", String(18), primary_key=True),
            Column("consent_id", String(32), primary_key=True),
            Column("since_ms", BigInteger, nullable=False),
            # Ingestion asks, per batch, which of its enterprises anyone watches.
            Index("ix_alert_subscriptions_uscc", "uscc"),
        )
    if ALERTS not in md.tables:
        Table(
            ALERTS,
            md,
            Column("seq", db.Seq, primary_key=True, autoincrement=True),
            Column("uscc", String(18), nullable=False),
            Column("kind", String(32), nullable=False),
            Column("summary", String(200), nullable=False),
            Column("record_key", String(64), nullable=False),
            Column("detected_at_ms", BigInteger, nullable=False),
            # One alert per record and kind: re-running a load raises nothing twice.
            UniqueConstraint("record_key", "kind", name="uq_alerts_record_kind"),
            # A poll reads one enterprise's alerts after a cursor.
            Index("ix_alerts_uscc_seq", "uscc", "seq"),
            Index("ix_alerts_detected_at_ms", "detected_at_ms"),
            # SQLite: AUTOINCREMENT, so a seq is never reused after old alerts are pruned (a
            # reused seq at or below a bank's cursor would never be delivered). PostgreSQL's
            # BIGSERIAL never reuses one.
            sqlite_autoincrement=True,
        )
    return AlertStore(store)


def alert_store_of(store: NodeStore) -> "AlertStore | None":
    """The alert tables of this store: registered, or found in its database (the ingest command
    opens a NodeStore of its own); None when the node has never had them."""
    if ALERTS in store.metadata.tables and SUBSCRIPTIONS in store.metadata.tables:
        return AlertStore(store)
    found = inspect(store.engine)
    if found.has_table(SUBSCRIPTIONS) and found.has_table(ALERTS):
        return register_tables(store)
    return None


class AlertStore:
    """Storage operations on the alert tables (synchronous, like NodeStore's)."""

    def __init__(self, store: NodeStore) -> None:
        self.store = store
        self.engine = store.engine
        self.subscriptions: Table = store.metadata.tables[SUBSCRIPTIONS]
        self.alerts: Table = store.metadata.tables[ALERTS]

    def _insert(self, table: Table):
        return (pg_insert if self.engine.dialect.name == "postgresql" else sqlite_insert)(table)

    # --- subscriptions ---------------------------------------------------------------------
    def subscribe(self, bank: str, uscc: str, consent_id: str, at_ms: int) -> int:
        """Record a subscription; return since when it holds (the first subscription's time)."""
        s = self.subscriptions.c
        with self.engine.begin() as conn:
            conn.execute(self._insert(self.subscriptions)
                         .values(bank=bank, uscc=uscc, consent_id=consent_id, since_ms=at_ms)
                         .on_conflict_do_nothing(index_elements=["bank", "uscc", "consent_id"]))
            return conn.execute(select(s.since_ms).where(s.bank == bank, s.uscc == uscc, s.consent_id == consent_id)
                                ).scalar_one()

    def subscription(self, bank: str, uscc: str, consent_id: str) -> int | None:
        """since_ms of the subscription, or None when there is none."""
        s = self.subscriptions.c
        with self.engine.connect() as conn:
            return conn.execute(select(s.since_ms).where(s.bank == bank, s.uscc == uscc, s.consent_id == consent_id)
                                ).scalar_one_or_none()

    def subscribed(self, usccs: Iterable[str]) -> set[str]:
        """Which of these enterprises anyone is subscribed to: one query (per 5000)."""
        wanted = sorted(set(usccs))
        out: set[str] = set()
        s = self.subscriptions.c
        with self.engine.connect() as conn:
            for i in range(0, len(wanted), _CHUNK):
                out.update(conn.execute(select(s.uscc).distinct().where(s.uscc.in_(wanted[i:i + _CHUNK]))).scalars())
        return out

    # --- detection -------------------------------------------------------------------------
    def records_of(self, usccs: Iterable[str]) -> tuple[list[Record], set[str]]:
        """These enterprises' current records in the categories alerts are about, and the keys
        of every such record ever stored (current or superseded by a correction)."""
        wanted = sorted(set(usccs))
        r = self.store.records.c
        current: list[Record] = []
        keys: set[str] = set()
        with self.engine.connect() as conn:
            for i in range(0, len(wanted), _CHUNK):
                q = (select(r.uscc, r.category, r.as_of, r.source, r.fields_json, r.record_key, r.superseded_by)
                     .where(r.uscc.in_(wanted[i:i + _CHUNK]), r.category.in_(ALERT_CATEGORIES)).order_by(r.id))
                for row in conn.execute(q):
                    keys.add(row.record_key)
                    if row.superseded_by is None:
                        current.append(Record(row.uscc, row.category, row.as_of, row.source, json.loads(row.fields_json),
                                              stored_key=row.record_key))
        return current, keys

    def add_alerts(self, alerts: Sequence[dict]) -> int:
        """Insert alerts (uscc, kind, summary, record_key, detected_at_ms); return how many were new.

        Seqs become visible in the order they are handed out: on PostgreSQL the writers of
        alerts take turns (a table lock that readers do not wait for), so no poll can see seq
        11 committed while seq 10 is still to come and move its cursor past 10 for good.
        SQLite has one writer at a time anyway.
        """
        if not alerts:
            return 0
        stmt = (self._insert(self.alerts).on_conflict_do_nothing(index_elements=["record_key", "kind"])
                .returning(self.alerts.c.seq))
        with self.engine.begin() as conn:
            if self.engine.dialect.name == "postgresql":
                conn.execute(text(f"LOCK TABLE {ALERTS} IN SHARE ROW EXCLUSIVE MODE"))
            return len(conn.execute(stmt, list(alerts)).all())

    # --- delivery --------------------------------------------------------------------------
    def alerts_after(self, uscc: str, after_seq: int, kinds: Sequence[str], since_ms: int,
                     limit: int = MAX_ALERTS_PER_POLL) -> list[StoredAlert]:
        a = self.alerts.c
        q = (select(a.seq, a.uscc, a.kind, a.summary, a.record_key, a.detected_at_ms)
             .where(a.uscc == uscc, a.seq > after_seq, a.kind.in_(list(kinds)), a.detected_at_ms >= since_ms)
             .order_by(a.seq).limit(limit))
        with self.engine.connect() as conn:
            return [StoredAlert(row.seq, row.uscc, row.kind, row.summary, row.record_key, row.detected_at_ms)
                    for row in conn.execute(q)]

    def prune(self, now: int, retention_ms: int) -> tuple[int, int]:
        """Delete alerts past retention, and subscriptions whose consent was revoked or has
        expired (nothing more will be delivered under them). Returns (alerts, subscriptions)."""
        c = self.store.consents.c
        ended = select(c.consent_id).where(or_(c.state == "revoked", c.valid_until_ms <= now))
        with self.engine.begin() as conn:
            alerts = conn.execute(delete(self.alerts).where(self.alerts.c.detected_at_ms < now - retention_ms)).rowcount
            subs = conn.execute(delete(self.subscriptions).where(self.subscriptions.c.consent_id.in_(ended))).rowcount
        return alerts or 0, subs or 0

    def count_alerts(self, uscc: str | None = None) -> int:
        q = select(func.count()).select_from(self.alerts)
        if uscc:
            q = q.where(self.alerts.c.uscc == uscc)
        with self.engine.connect() as conn:
            return conn.execute(q).scalar_one()


# --- detection at ingest ------------------------------------------------------------------------
class IngestWatch:
    """What node.ingest runs for each batch, before storing it, and once at the end."""

    def __init__(self, alerts: AlertStore, rules: AlertRules, clock: Clock = now_ms) -> None:
        self.alerts = alerts
        self.rules = rules
        self.clock = clock

    def check(self, batch: Sequence[Record]) -> int:
        """Detect and store the alerts this batch raises; return how many are new.

        Enterprises nobody subscribed to cost one query per batch, together.
        """
        if not batch or not self.rules.kinds:
            return 0
        watched = self.alerts.subscribed(r.uscc for r in batch if r.category in ALERT_CATEGORIES)
        if not watched:
            return 0
        relevant = [r for r in batch if r.uscc in watched and r.category in ALERT_CATEGORIES]
        current, known = self.alerts.records_of({r.uscc for r in relevant})
        new = [r for r in relevant if r.key not in known]
        found = detect(current, new, self.rules)
        at = self.clock()
        return self.alerts.add_alerts([
            {"uscc": d.record.uscc, "kind": d.kind, "summary": d.summary[:200], "record_key": d.record.key,
             "detected_at_ms": at}
            for d in found
        ])

    def finish(self) -> None:
        """After a load: drop alerts past retention and subscriptions that ended."""
        self.alerts.prune(self.clock(), self.rules.retention_ms)


def ingest_watch(store: NodeStore, rules: AlertRules | None = None, clock: Clock = now_ms) -> IngestWatch | None:
    """The watch for a load into `store`, or None when the node has no alert tables."""
    alerts = alert_store_of(store)
    if alerts is None:
        return None
    return IngestWatch(alerts, rules if rules is not None else AlertRules.from_dir(), clock)


# --- subscribing and polling --------------------------------------------------------------------
@dataclass
class _Trail:
    caller: Principal
    trace_id: str
    relayed_by: str = ""
    uscc: str = ""
    consent_id: str = ""
    request_hash: str = ""
    policy_ids: tuple[str, ...] = ()


class AlertDesk:
    """A node's side of alerts: `subscribe` and `poll`, each audited, allowed or refused."""

    def __init__(
        self,
        identity: Identity,
        store: NodeStore,
        authorizer: Authorizer,
        audit_log: AuditLog,
        rules: AlertRules | None = None,
        *,
        clock: Clock = now_ms,
        freshness: ConsentFreshness | None = None,
    ) -> None:
        if identity.principal.role is not Role.NODE:
            raise ValueError(f"alerts are signed with a node identity, not {identity.principal}")
        self.identity = identity
        self.node_id = identity.principal.id
        self.store = store
        self.alerts = register_tables(store)
        self.authorizer = authorizer
        self.audit_log = audit_log
        self.rules = rules if rules is not None else AlertRules.from_dir()
        self.trust = identity.trust()
        self.clock = clock
        self.freshness = freshness  # None: a node with no registry has no one to confirm consents

    async def subscribe(self, caller: Principal, envelope: envelope_pb2.SignedEnvelope,
                        trace_id: str = "") -> alerts_pb2.AlertSubscription:
        trail = _Trail(caller, trace_id)
        consent = None
        try:
            statement = check_subscribe(envelope, self.trust, self.clock())
            self._describe(trail, statement, "subscribe")
            await refuse_replay(self.store, statement, "subscribe", self.clock())
            consent = await self._consent(statement)
            self._authorize(statement, consent, trail)
            since = await asyncio.to_thread(self.alerts.subscribe, statement.signer.id, consent.uscc,
                                            consent.consent_id, self.clock())
        except Refusal as r:
            await self._audit(trail, "subscribe_alerts", r, consent=consent)
            raise
        await self._audit(trail, "subscribe_alerts", None, consent=consent,
                          allowed=f"subscribed to {', '.join(kinds_covered(consent))} alerts since {since}")
        return alerts_pb2.AlertSubscription(node_id=self.node_id, subscribed=True, since_ms=since)

    async def poll(self, caller: Principal, envelope: envelope_pb2.SignedEnvelope, trace_id: str = "") -> alerts_pb2.NodeAlerts:
        trail = _Trail(caller, trace_id)
        consent = None
        try:
            statement = check_poll(envelope, self.trust, self.clock())
            self._describe(trail, statement, "poll")
            await refuse_replay(self.store, statement, "poll", self.clock())
            consent = await self._consent(statement)  # every poll: a revoked consent stops alerts at once
            self._authorize(statement, consent, trail)
            since = await asyncio.to_thread(self.alerts.subscription, statement.signer.id, consent.uscc,
                                            consent.consent_id)
            if since is None:
                raise Refusal(Kind.PRECONDITION, "NOT_SUBSCRIBED",
                              f"poll.consent_id: {statement.signer} has not subscribed to alerts about this enterprise "
                              f"under consent {consent.consent_id} at node {self.node_id}; subscribe first")
            cursor = statement.message.cursors.get(self.node_id, 0)
            now = self.clock()
            rows = await asyncio.to_thread(self.alerts.alerts_after, consent.uscc, cursor, kinds_covered(consent),
                                           max(since, now - self.rules.retention_ms), MAX_ALERTS_PER_POLL)
            batch = sign_alerts(self.identity, rows)
            sealed = seal_to(statement.message.answer_key, batch.SerializeToString(deterministic=True))
        except Refusal as r:
            await self._audit(trail, "poll_alerts", r, consent=consent)
            raise
        next_cursor = rows[-1].seq if rows else cursor
        await self._audit(trail, "poll_alerts", None, consent=consent,
                          allowed=f"{len(rows)} alerts after seq {cursor}", detail=f"next cursor {next_cursor}")
        return alerts_pb2.NodeAlerts(node_id=self.node_id, sealed_alerts=sealed, next_cursor=next_cursor,
                                     more=len(rows) >= MAX_ALERTS_PER_POLL)

    # -- the steps ---------------------------------------------------------------------------
    def _describe(self, trail: _Trail, statement: Verified, field: str) -> None:
        trail.uscc, trail.consent_id = statement.message.uscc, statement.message.consent_id
        trail.request_hash = statement.body_hash.hex()
        trail.relayed_by = relayed_by(self.authorizer, trail.caller, statement.signer, field)
        trail.caller = statement.signer  # from here on, the asker is the signer

    async def _consent(self, statement: Verified):
        now = self.clock()
        if self.freshness is not None:
            await self.freshness.require(now, "delivers no alerts")
        body = statement.message
        stored = await asyncio.to_thread(self.store.get_consent, body.consent_id)
        return check_monitoring_consent(stored, body.consent_id, statement.signer, body.uscc, now)

    def _authorize(self, statement: Verified, consent, trail: _Trail) -> None:
        """Alerts are a loan_monitoring read of the enterprise: the query policy decides."""
        decision = self.authorizer.decide(
            statement.signer, Action.QUERY, Resource.enterprise(consent.uscc),
            {"purpose": PURPOSE, "categories": set(alert_categories(consent))},
            licence=licence_of(statement.signer_cert_der),
        )
        trail.policy_ids = decision.policy_ids
        if not decision.allowed:
            raise Refusal.denied("POLICY_DENIED", f"alerts: {decision.reason}", policy_ids=decision.policy_ids)

    async def _audit(self, trail: _Trail, action: str, refusal: Refusal | None, *, consent=None, allowed: str = "",
                     detail: str = "") -> None:
        fields = {} if consent is not None else {"uscc": trail.uscc, "consent_id": trail.consent_id}
        await self.audit_log.append(AuditEntry.of(
            self.clock(), trail.caller, action, refusal, allowed=allowed, consent=consent, policy_ids=trail.policy_ids,
            relayed_by=trail.relayed_by, request_hash=trail.request_hash, trace_id=trail.trace_id, detail=detail,
            **fields,
        ))
