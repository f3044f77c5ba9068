"""The node's local store: credit records, plus the consents, audit log and nonces it shares
with the registry's store (xinyi.store.BaseStore).

Records are keyed by a hash of their content, so loading the same file twice changes nothing.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Iterable, Sequence

from sqlalchemy import BigInteger, Column, Index, String, Table, Text, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
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

    @property
    def fields_json(self) -> str:
        return json.dumps(self.fields, sort_keys=True, ensure_ascii=False, separators=(",", ":"))

    @property
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

    def add_records(self, records: Sequence[Record], ingested_at_ms: int) -> int:
        """Insert records not already present; return how many were new. One transaction."""
        if not records:
            return 0
        rows = [
            {
                "record_key": r.key,
                "uscc": r.uscc,
                "category": r.category,
                "as_of": r.as_of,
                "source": r.source,
                "fields_json": r.fields_json,
                "ingested_at_ms": ingested_at_ms,
            }
            for r in records
        ]
        dialect = self.engine.dialect.name
        stmt = (pg_insert if dialect == "postgresql" else sqlite_insert)(self.records)
        # RETURNING counts what was really inserted (rowcount is unreliable for executemany).
        stmt = stmt.on_conflict_do_nothing(index_elements=["record_key"]).returning(self.records.c.id)
        with self.engine.begin() as conn:
            return len(conn.execute(stmt, rows).all())

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
