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

from sqlalchemy import BigInteger, Column, Index, String, Table, Text, func, select
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from xinyi import db
from xinyi.store import BaseStore


@dataclass(frozen=True)
class Record:
    """One validated credit record about one enterprise."""

    uscc: str
    category: str
    as_of: str  # YYYY-MM-DD
    source: str  # supplying department
    fields: dict  # the category's fields, validated (xinyi.categories)

    @cached_property
    def fields_json(self) -> str:
        return json.dumps(self.fields, sort_keys=True, ensure_ascii=False, separators=(",", ":"))

    @cached_property
    def key(self) -> str:
        """Content hash: the same record loaded twice has the same key."""
        text = "\x1f".join((self.uscc, self.category, self.as_of, self.source, self.fields_json))
        return hashlib.sha256(text.encode()).hexdigest()


class NodeStore(BaseStore):
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
            # Every query reads one enterprise's records in a few categories.
            Index("ix_records_uscc_category", "uscc", "category"),
        )

    _LOAD_COLUMNS = ("record_key", "uscc", "category", "as_of", "source", "fields_json", "ingested_at_ms")

    def add_records(self, records: Sequence[Record], ingested_at_ms: int) -> int:
        """Insert records not already present; return how many were new. One transaction."""
        if not records:
            return 0
        rows = [(r.key, r.uscc, r.category, r.as_of, r.source, r.fields_json, ingested_at_ms) for r in records]
        if self.engine.dialect.name == "postgresql":
            return self._copy_records(rows)
        # RETURNING counts what was really inserted (rowcount is unreliable for executemany).
        stmt = (
            sqlite_insert(self.records)
            .on_conflict_do_nothing(index_elements=["record_key"])
            .returning(self.records.c.id)
        )
        with self.engine.begin() as conn:
            return len(conn.execute(stmt, [dict(zip(self._LOAD_COLUMNS, row)) for row in rows]).all())

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

    def fetch_records(self, uscc: str, categories: Iterable[str]) -> list[Record]:
        r = self.records.c
        q = (
            select(r.uscc, r.category, r.as_of, r.source, r.fields_json)
            .where(r.uscc == uscc, r.category.in_(list(categories)))
            .order_by(r.category, r.as_of.desc(), r.id)
        )
        with self.engine.connect() as conn:
            return [
                Record(row.uscc, row.category, row.as_of, row.source, json.loads(row.fields_json))
                for row in conn.execute(q)
            ]

    def count_records(self) -> int:
        with self.engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(self.records)).scalar_one()

    def held_usccs(self) -> list[str]:
        """Every enterprise this node holds records for."""
        with self.engine.connect() as conn:
            return list(conn.execute(select(self.records.c.uscc).distinct().order_by(self.records.c.uscc)).scalars())
