"""The node's local store: credit records, plus the consents, audit log and nonces it shares
with the registry's store (xinyi.store.BaseStore).

Records are keyed by a hash of their content, so loading the same file twice changes nothing.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cached_property
from typing import Iterable, Sequence

import msgspec

from sqlalchemy import BigInteger, Column, Index, LargeBinary, String, Table, Text, bindparam, delete, func, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError

from xinyi import db
from xinyi.store import BaseStore


_FIELDS_ENCODER = msgspec.json.Encoder(order="sorted")


@dataclass(frozen=True)
class Record:
    """One validated credit record about one enterprise."""

    uscc: str
    category: str
    as_of: str  # YYYY-MM-DD
    source: str  # supplying department
    fields: dict  # the category's fields, validated (xinyi.records.categories)
    disputed: bool = False  # the enterprise has an open objection to it (not part of the content)
    stored_key: str = ""  # the key it is stored under, kept when a copy is masked for an answer

    @property
    def fields_json(self) -> str:
        return json.dumps(self.fields, sort_keys=True, ensure_ascii=False, separators=(",", ":"))

    @property
    def key(self) -> str:
        """Content hash: the same record loaded twice has the same key."""
        return self.content()[0]

    def content(self) -> tuple[str, str]:
        """(key, fields_json), computed together: ingestion needs both for every record.

        msgspec writes the same bytes as fields_json's json.dumps for the text and whole numbers
        validated fields hold (tests/test_ingest.py compares them), at a fraction of the cost."""
        fields_json = _FIELDS_ENCODER.encode(self.fields).decode()
        text = "\x1f".join((self.uscc, self.category, self.as_of, self.source, fields_json))
        return hashlib.sha256(text.encode()).hexdigest(), fields_json

    @property
    def record_id(self) -> str:
        """The id answers give, to dispute the record by: the stored key."""
        return self.stored_key or self.key


class NodeStore(BaseStore):
    SCHEMA = "node"

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.records: Table = Table(
            "records",
            self.metadata,
            Column("id", db.Seq, primary_key=True, autoincrement=True),
            Column("record_key", String(64), nullable=False, unique=True),
            Column("uscc", String(18), nullable=False),
            Column("category", String(32), nullable=False),
            Column("as_of", String(10), nullable=False),
            Column("source", String(128), nullable=False),
            Column("fields_json", Text, nullable=False),
            Column("ingested_at_ms", BigInteger, nullable=False),
            # Set when a dispute found the record wrong: it is no longer served.
            Column("superseded_by", String(64), nullable=True),
            # Every query reads one enterprise's records in a few categories.
            Index("ix_records_uscc_category", "uscc", "category"),
        )
        self.disputes: Table = Table(
            "disputes",
            self.metadata,
            Column("dispute_id", String(32), primary_key=True),
            Column("record_key", String(64), nullable=False, index=True),
            Column("uscc", String(18), nullable=False, index=True),
            Column("reason", Text, nullable=False),
            Column("filed_by", String(96), nullable=False),
            Column("filed_at_ms", BigInteger, nullable=False),
            Column("due_ms", BigInteger, nullable=False),
            Column("envelope", LargeBinary, nullable=False),
            Column("status", String(10), nullable=False),  # open, corrected, confirmed
            Column("resolution", Text, nullable=False, default=""),
            Column("resolved_at_ms", BigInteger, nullable=True),
            Column("corrected_key", String(64), nullable=True),
        )
        # How far the node has read the registry's consent changes (SyncConsents' event
        # number), so that a restarted node resumes there instead of reading the whole history.
        self.node_state: Table = Table(
            "node_state",
            self.metadata,
            Column("key", String(32), primary_key=True),
            Column("value", BigInteger, nullable=False),
        )

        # Each load of a department's file (node.ingest), the newest KEEP_LOADS of them, and
        # where its bad lines are: line number, field, reason with the line's values left out
        # (a line may be about a person: a legal representative, an address).
        self.ingest_loads: Table = Table(
            "ingest_loads",
            self.metadata,
            Column("load_id", db.Seq, primary_key=True, autoincrement=True),
            Column("file_name", String(255), nullable=False),
            Column("category", String(32), nullable=False, default=""),  # --category, or "" (JSON Lines)
            Column("started_at_ms", BigInteger, nullable=False),
            Column("finished_at_ms", BigInteger, nullable=False),
            Column("lines_read", BigInteger, nullable=False),
            Column("inserted", BigInteger, nullable=False),
            Column("duplicates", BigInteger, nullable=False),
            Column("rejected", BigInteger, nullable=False),
            Column("failure", Text, nullable=False, default=""),  # why the whole file was refused, or ""
        )
        self.ingest_rejects: Table = Table(
            "ingest_rejects",
            self.metadata,
            Column("load_id", BigInteger, primary_key=True, autoincrement=False),
            Column("line_no", BigInteger, primary_key=True, autoincrement=False),
            Column("field", String(128), nullable=False),
            Column("reason", Text, nullable=False),
        )

    _LOAD_COLUMNS = ("record_key", "uscc", "category", "as_of", "source", "fields_json", "ingested_at_ms")

    def add_records(self, records: Sequence[Record], ingested_at_ms: int) -> int:
        """Insert records not already present; return how many were new. One transaction."""
        if not records:
            return 0
        rows = [(key, r.uscc, r.category, r.as_of, r.source, fields_json, ingested_at_ms)
                for r in records for key, fields_json in (r.content(),)]
        if self.engine.dialect.name == "postgresql":
            return self._copy_records(rows)
        return self._insert_or_ignore(rows)

    def _insert_or_ignore(self, rows: list[tuple]) -> int:
        """SQLite: one prepared INSERT OR IGNORE run over the batch; the connection's change
        counter says how many rows were new (cheaper than RETURNING a row per record)."""
        columns = ", ".join(self._LOAD_COLUMNS)
        marks = ", ".join("?" * len(self._LOAD_COLUMNS))
        with self.engine.begin() as conn:
            raw = conn.connection.driver_connection
            before = raw.total_changes
            raw.executemany(f"INSERT OR IGNORE INTO records ({columns}) VALUES ({marks})", rows)
            return raw.total_changes - before

    def _copy_records(self, rows: list[tuple]) -> int:
        """PostgreSQL: COPY the batch into a temporary table, then insert what is new.

        About four times faster than a multi-row INSERT for large loads.
        """
        columns = ", ".join(self._LOAD_COLUMNS)
        with self.engine.begin() as conn:
            cursor = conn.connection.driver_connection.cursor()
            cursor.execute(
                "CREATE TEMP TABLE IF NOT EXISTS records_load (record_key text, uscc text, category text, "
                "as_of text, source text, fields_json text, ingested_at_ms bigint) ON COMMIT DELETE ROWS"
            )
            with cursor.copy(f"COPY records_load ({columns}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
            cursor.execute(
                f"INSERT INTO records ({columns}) SELECT DISTINCT ON (record_key) {columns} FROM records_load "
                "ON CONFLICT (record_key) DO NOTHING"
            )
            return cursor.rowcount

    def fetch_records(self, uscc: str, categories: Iterable[str], since: str = "") -> list[Record]:
        """An enterprise's current records in some categories, as of `since` or later, each
        marked when an open dispute is on it."""
        with self.engine.connect() as conn:
            return [
                Record(row.uscc, row.category, row.as_of, row.source, json.loads(row.fields_json), bool(row.disputed),
                       row.record_key)
                for row in conn.execute(self._fetch, {"uscc": uscc, "categories": list(categories), "since": since})
            ]

    @cached_property
    def _fetch(self):
        """fetch_records' statement, built once (it runs for every query)."""
        r, d = self.records.c, self.disputes.c
        open_dispute = select(d.record_key).where(d.record_key == r.record_key, d.status == "open").exists()
        return (
            select(r.uscc, r.category, r.as_of, r.source, r.fields_json, r.record_key, open_dispute.label("disputed"))
            .where(r.uscc == bindparam("uscc"), r.category.in_(bindparam("categories", expanding=True)),
                   r.superseded_by.is_(None), r.as_of >= bindparam("since"))
            .order_by(r.category, r.as_of.desc(), r.id)
        )

    def get_record(self, record_key: str) -> Record | None:
        r = self.records.c
        with self.engine.connect() as conn:
            row = conn.execute(select(r.uscc, r.category, r.as_of, r.source, r.fields_json, r.superseded_by)
                               .where(r.record_key == record_key)).first()
        if row is None or row.superseded_by is not None:
            return None
        return Record(row.uscc, row.category, row.as_of, row.source, json.loads(row.fields_json))

    # --- disputes (Credit Reporting Regulation Art. 25) ------------------------------------
    def put_dispute(self, row: dict) -> bool:
        """File a dispute; False when the same signed objection was filed before."""
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(self.disputes).values(**row))
            return True
        except IntegrityError:
            return False

    def get_dispute(self, dispute_id: str) -> dict | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(self.disputes).where(self.disputes.c.dispute_id == dispute_id)).first()
        return dict(row._mapping) if row else None

    def list_disputes(self, *, uscc: str = "", open_only: bool = False, due_before_ms: int | None = None) -> list[dict]:
        d = self.disputes.c
        q = select(self.disputes).order_by(d.filed_at_ms)
        if uscc:
            q = q.where(d.uscc == uscc)
        if open_only:
            q = q.where(d.status == "open")
        if due_before_ms is not None:
            q = q.where(d.due_ms < due_before_ms)
        with self.engine.connect() as conn:
            return [dict(row._mapping) for row in conn.execute(q)]

    def resolve_dispute(self, dispute_id: str, status: str, resolution: str, at_ms: int,
                        corrected: Record | None = None) -> bool:
        """Close an open dispute; a correction replaces the record with the corrected one."""
        d = self.disputes.c
        with self.engine.begin() as conn:
            row = conn.execute(select(d.record_key, d.status).where(d.dispute_id == dispute_id).with_for_update()).first()
            if row is None or row.status != "open":
                return False
            values = {"status": status, "resolution": resolution, "resolved_at_ms": at_ms}
            if corrected is not None:
                insert_new = (pg_insert if self.engine.dialect.name == "postgresql" else sqlite_insert)(self.records)
                conn.execute(insert_new.values(
                    record_key=corrected.key, uscc=corrected.uscc, category=corrected.category, as_of=corrected.as_of,
                    source=corrected.source, fields_json=corrected.fields_json, ingested_at_ms=at_ms,
                ).on_conflict_do_nothing(index_elements=["record_key"]))
                conn.execute(update(self.records).where(self.records.c.record_key == row.record_key)
                             .values(superseded_by=corrected.key))
                values["corrected_key"] = corrected.key
            conn.execute(update(self.disputes).where(d.dispute_id == dispute_id).values(**values))
            return True

    def count_records(self) -> int:
        with self.engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(self.records)).scalar_one()

    def held_categories(self) -> frozenset[str]:
        """The categories this node holds any record of."""
        with self.engine.connect() as conn:
            return frozenset(conn.execute(select(self.records.c.category).distinct()).scalars())

    def held_usccs(self) -> list[str]:
        """Every enterprise this node holds records for."""
        with self.engine.connect() as conn:
            return list(conn.execute(select(self.records.c.uscc).distinct().order_by(self.records.c.uscc)).scalars())

    # --- loads of departments' files (node.ingest) ------------------------------------------
    KEEP_LOADS = 50  # the newest loads kept, with their rejected lines; older ones are deleted

    def record_load(self, load: dict, rejects: Sequence[dict]) -> int:
        """Keep one load and its rejected lines (at most what the caller passes; node.ingest
        passes the first 1000); forget loads beyond the newest KEEP_LOADS. Returns its load_id."""
        with self.engine.begin() as conn:
            load_id = conn.execute(insert(self.ingest_loads).values(**load)).inserted_primary_key[0]
            if rejects:
                conn.execute(insert(self.ingest_rejects), [dict(r, load_id=load_id) for r in rejects])
            lc = self.ingest_loads.c
            oldest_kept = conn.execute(select(lc.load_id).order_by(lc.load_id.desc())
                                       .offset(self.KEEP_LOADS - 1).limit(1)).scalar()
            if oldest_kept is not None:
                conn.execute(delete(self.ingest_rejects).where(self.ingest_rejects.c.load_id < oldest_kept))
                conn.execute(delete(self.ingest_loads).where(lc.load_id < oldest_kept))
        return load_id

    def recent_loads(self, limit: int, rejects_per_load: int, total_rejects: int | None = None) -> list[dict]:
        """The newest `limit` loads, newest first, each with "rejects": its first
        `rejects_per_load` rejected lines in line order, and no more than `total_rejects` over
        all loads (the newer loads first)."""
        lc, rc = self.ingest_loads.c, self.ingest_rejects.c
        left = rejects_per_load * limit if total_rejects is None else total_rejects
        with self.engine.connect() as conn:
            loads = [dict(row._mapping) for row in
                     conn.execute(select(self.ingest_loads).order_by(lc.load_id.desc()).limit(limit))]
            for load in loads:
                load["rejects"] = [dict(row._mapping) for row in conn.execute(
                    select(rc.line_no, rc.field, rc.reason).where(rc.load_id == load["load_id"])
                    .order_by(rc.line_no).limit(min(rejects_per_load, left)))] if left > 0 else []
                left -= len(load["rejects"])
                load["rejects_kept"] = conn.execute(
                    select(func.count()).select_from(self.ingest_rejects).where(rc.load_id == load["load_id"])).scalar_one()
        return loads

    # --- what the node's background tasks last achieved, for its operator's report -----------
    def state_values(self, *keys: str) -> dict[str, int]:
        n = self.node_state.c
        with self.engine.connect() as conn:
            return {row.key: row.value for row in conn.execute(select(n.key, n.value).where(n.key.in_(keys)))}

    def set_state_value(self, key: str, value: int) -> None:
        n = self.node_state.c
        try:
            with self.engine.begin() as conn:
                if conn.execute(update(self.node_state).where(n.key == key).values(value=value)).rowcount == 0:
                    conn.execute(insert(self.node_state).values(key=key, value=value))
        except IntegrityError:  # another process of this node inserted it first: update it
            with self.engine.begin() as conn:
                conn.execute(update(self.node_state).where(n.key == key).values(value=value))

    # --- where the node is in the registry's consent changes --------------------------------
    def consent_sync_position(self) -> int:
        n = self.node_state.c
        with self.engine.connect() as conn:
            return conn.execute(select(n.value).where(n.key == "consent_sync")).scalar() or 0

    def set_consent_sync_position(self, position: int) -> None:
        n = self.node_state.c
        with self.engine.begin() as conn:
            if conn.execute(update(self.node_state).where(n.key == "consent_sync").values(value=position)).rowcount == 0:
                conn.execute(insert(self.node_state).values(key="consent_sync", value=position))
