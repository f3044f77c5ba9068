"""Database plumbing shared by the node's and the registry's stores.

One URL picks the back end: a SQLite file by default (`sqlite:///node.db`), PostgreSQL with
`postgresql+psycopg://user@host/db`. Both go through SQLAlchemy Core, so every statement is
the same on both.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import (
    BigInteger,
    Column,
    Engine,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

# Integer primary keys autoincrement on both SQLite (INTEGER PRIMARY KEY) and PostgreSQL (BIGSERIAL).
Seq = BigInteger().with_variant(Integer(), "sqlite")


class StoreError(Exception):
    """The store could not be opened or used; the message says what to do."""


def normalize_url(url: str) -> str:
    """Accept a plain file path as shorthand for a SQLite file."""
    if "://" not in url:
        return f"sqlite:///{Path(url).expanduser()}"
    return url


def open_engine(url: str) -> Engine:
    url = normalize_url(url)
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise StoreError(f"--db {url!r} is not a database URL; use sqlite:///FILE or postgresql+psycopg://USER@HOST/DB") from None
    if parsed.get_backend_name() == "sqlite":
        # A single process owns a node's SQLite file; threads share it through the pool.
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record) -> None:  # pragma: no branch - runs per connection
            cur = dbapi_conn.cursor()
            # WAL lets readers run beside the writer; FULL makes every commit durable (audit).
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    if parsed.get_backend_name() == "postgresql":
        return create_engine(url, pool_size=10, max_overflow=10, pool_pre_ping=True)
    raise StoreError(f"--db {url!r}: only sqlite and postgresql are supported")


def audit_table(metadata: MetaData) -> Table:
    """The append-only audit log: one row per decision, allowed or denied."""
    return Table(
        "audit_log",
        metadata,
        Column("seq", Seq, primary_key=True, autoincrement=True),
        Column("at_ms", BigInteger, nullable=False),
        Column("caller_role", String(16), nullable=False),
        Column("caller_id", String(64), nullable=False),
        Column("relayed_by", String(64), nullable=False, default=""),
        Column("action", String(32), nullable=False),
        Column("uscc", String(18), nullable=False, default="", index=True),
        Column("categories", Text, nullable=False, default=""),
        Column("purpose", String(64), nullable=False, default=""),
        Column("consent_id", String(64), nullable=False, default=""),
        Column("decision", String(8), nullable=False),
        Column("policy_ids", Text, nullable=False, default=""),
        Column("reason", Text, nullable=False, default=""),
        Column("request_hash", String(64), nullable=False, default="", index=True),
        Column("trace_id", String(32), nullable=False, default=""),
        Column("detail", Text, nullable=False, default=""),
    )


def consents_table(metadata: MetaData) -> Table:
    """Consents as signed by enterprises, with their revocations. The signed bytes are kept."""
    return Table(
        "consents",
        metadata,
        Column("consent_id", String(64), primary_key=True),
        Column("uscc", String(18), nullable=False, index=True),
        Column("grantee", String(18), nullable=False),
        Column("purpose", String(64), nullable=False),
        Column("categories", Text, nullable=False),
        Column("valid_from_ms", BigInteger, nullable=False),
        Column("valid_until_ms", BigInteger, nullable=False),
        Column("envelope", LargeBinary, nullable=False),
        Column("revocation", LargeBinary, nullable=True),
        Column("revoked_at_ms", BigInteger, nullable=True),
        Column("received_at_ms", BigInteger, nullable=False),
    )


def nonces_table(metadata: MetaData) -> Table:
    """Nonces seen from each signer, kept for the replay window, so a replay is refused even after a restart."""
    return Table(
        "seen_nonces",
        metadata,
        Column("signer", String(64), primary_key=True),
        Column("nonce", LargeBinary(32), primary_key=True),
        Column("expires_at_ms", BigInteger, nullable=False, index=True),
    )
