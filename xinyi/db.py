"""Database plumbing shared by the node's and the registry's stores.

One URL picks the back end: a SQLite file by default (`sqlite:///node.db`), PostgreSQL with
`postgresql+psycopg://user@host/db`. Both go through SQLAlchemy Core, so every statement is
the same on both.

A PostgreSQL primary with standbys is named by all its servers, libpq tries them in turn and
`target_session_attrs=read-write` takes only the primary (so a promoted standby, after a
failover):

    postgresql+psycopg://xinyi@/registry?host=db1:5432,db2:5432&target_session_attrs=read-write

(`host=db1:5432&host=db2:5432`, and libpq's own `host=db1,db2&port=5432,5432`, say the same; so
do libpq's URI with the servers in its authority, `postgresql://xinyi@db1:5432,db2:5432/registry`,
and its keyword/value string, `host=db1,db2 port=5432,5432 dbname=registry user=xinyi`, which
normalize_url turns into this form.)
"""

from __future__ import annotations

import re
from pathlib import Path

from sqlalchemy import (
    BigInteger,
    Column,
    Engine,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    text,
    event,
)
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

# Integer primary keys autoincrement on both SQLite (INTEGER PRIMARY KEY) and PostgreSQL (BIGSERIAL).
Seq = BigInteger().with_variant(Integer(), "sqlite")


class StoreError(Exception):
    """The store could not be opened or used; the message says what to do."""


def shown_url(url: URL) -> str:
    """A database URL fit for a message or a log: its password hidden, wherever it was given
    (user:password@host, or libpq's ?password=)."""
    if "password" in url.query:
        url = url.update_query_dict({"password": "***"})
    return url.render_as_string(hide_password=True)


# libpq's keyword/value connection string ("host=db1,db2 port=5432,5432 dbname=registry ..."):
# it starts with one of these keywords.
_CONNINFO = re.compile(r"^\s*(?:host|hostaddr|port|dbname|user|password|passfile|service|sslmode|"
                       r"target_session_attrs|connect_timeout|application_name|options)\s*=")
_URI = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?P<authority>[^/?#]*)(?P<rest>.*)$", re.S)


def _without_password(text: str) -> str:
    """A --db that could not be parsed, fit for a message: user:PASSWORD@ and password=... hidden."""
    text = re.sub(r"(://[^/?#@:]*:)[^/?#@]*@", r"\1***@", text)
    return re.sub(r"(password\s*=\s*)(?:'[^']*'|[^\s&]+)", r"\1***", text)


def _usage(url: str) -> str:
    url = _without_password(url)
    return (f"--db {url!r} is not a database URL; use sqlite:///FILE or postgresql+psycopg://USER@HOST/DB "
            "(several servers: ?host=A:PORT,B:PORT&target_session_attrs=read-write)")


def _from_conninfo(conninfo: str) -> str:
    """libpq's keyword/value string as the URL this module takes (PostgreSQL through psycopg)."""
    from psycopg import Error as PsycopgError
    from psycopg.conninfo import conninfo_to_dict

    try:
        params = {k: str(v) for k, v in conninfo_to_dict(conninfo).items()}
    except PsycopgError as e:
        raise StoreError(f"--db {_without_password(conninfo)!r} is not a libpq connection string: {str(e).splitlines()[0]}") from None
    user, password, database = params.pop("user", None), params.pop("password", None), params.pop("dbname", None)
    return URL.create("postgresql+psycopg", username=user, password=password, database=database,
                      query=params).render_as_string(hide_password=False)


def _hosts_from_authority(url: str) -> str:
    """libpq's URI with several servers in its authority (postgresql://u@a:5432,b:5432/db) as
    SQLAlchemy takes it: one `host` query parameter per server (it would read "5432,b:5432" as
    a port)."""
    m = _URI.match(url)
    if m is None:
        return url
    userinfo, _, hosts = m.group("authority").rpartition("@")
    if "," not in hosts:
        return url
    servers = [h.strip() for h in hosts.split(",")]
    if not all(re.fullmatch(r"[^\s:,]+(?::\d{1,5})?", h) for h in servers):
        raise StoreError(_usage(url))
    path, _, query = m.group("rest").partition("?")
    hosts_query = "&".join(f"host={h}" for h in servers)
    return f"{m.group('scheme')}://{userinfo + '@' if userinfo else ''}{path or '/'}?{hosts_query}" + \
        (f"&{query}" if query else "")


def normalize_url(url: str) -> str:
    """Accept a plain file path as shorthand for a SQLite file, and libpq's own ways of naming
    PostgreSQL servers (a keyword/value string, several servers in a URI's authority)."""
    if "://" not in url:
        if _CONNINFO.match(url):
            return _from_conninfo(url)
        return f"sqlite:///{Path(url).expanduser()}"
    return _hosts_from_authority(url)


# Seconds libpq waits for each server of a URL to answer before it tries the next (unless the
# URL says otherwise): a primary that vanished without a word does not hold a query for minutes.
PG_CONNECT_TIMEOUT_S = 5


def _hosts_one_by_one(url: URL) -> URL:
    """`host=a:5432,b:5433` as SQLAlchemy reads it: one `host` per server (it would otherwise
    take the whole list for one host name)."""
    hosts = url.query.get("host")
    if isinstance(hosts, str) and "," in hosts and ":" in hosts:
        return url.update_query_dict({"host": [h.strip() for h in hosts.split(",") if h.strip()]})
    return url


def open_engine(url: str) -> Engine:
    url = normalize_url(url)
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):  # ValueError: a port that is not a number
        raise StoreError(_usage(url)) from None
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
        # pool_pre_ping: a connection to a primary that went away is found dead when taken from
        # the pool and replaced by a new one (libpq then tries every server of the URL); one that
        # dies in use makes SQLAlchemy drop the whole pool (a disconnect error invalidates it).
        connect_args = {} if "connect_timeout" in parsed.query else {"connect_timeout": PG_CONNECT_TIMEOUT_S}
        return create_engine(_hosts_one_by_one(parsed), pool_size=10, max_overflow=10, pool_pre_ping=True,
                             connect_args=connect_args)
    raise StoreError(f"--db {url!r}: only sqlite and postgresql are supported")


# The audit log's search columns and their sizes (PostgreSQL enforces them; SQLite does not).
AUDIT_COLUMN_CHARS = {"caller_id": 64, "action": 32, "uscc": 18, "decision": 8, "request_hash": 64}


def audit_table(metadata: MetaData) -> Table:
    """The append-only audit log: one row per decision, allowed or denied.

    `leaf_input` is the entry itself (a serialized AuditRecord): the exact bytes that are
    Merkle-hashed and served. The other columns repeat some of its fields for searching.
    An enterprise's entries are read a page at a time in index order, so (uscc, idx) is one
    index: a page is a range scan, however many entries the enterprise has.
    """
    return Table(
        "audit_log",
        metadata,
        Column("idx", BigInteger, primary_key=True, autoincrement=False),
        Column("leaf_input", LargeBinary, nullable=False),
        Column("leaf_hash", LargeBinary(32), nullable=False, index=True),
        Column("at_ms", BigInteger, nullable=False),
        Column("caller_id", String(AUDIT_COLUMN_CHARS["caller_id"]), nullable=False),
        Column("action", String(AUDIT_COLUMN_CHARS["action"]), nullable=False),
        Column("uscc", String(AUDIT_COLUMN_CHARS["uscc"]), nullable=False, default=""),
        Column("decision", String(AUDIT_COLUMN_CHARS["decision"]), nullable=False),
        Column("request_hash", String(AUDIT_COLUMN_CHARS["request_hash"]), nullable=False, default="", index=True),
        Index("ix_audit_log_uscc_idx", "uscc", "idx"),
    )


def checkpoints_table(metadata: MetaData) -> Table:
    """Signed checkpoints of the audit log (C2SP signed notes), with the witness's cosignature."""
    return Table(
        "audit_checkpoints",
        metadata,
        Column("size", BigInteger, primary_key=True, autoincrement=False),
        Column("root", LargeBinary(32), nullable=False),
        Column("note", Text, nullable=False),
        Column("at_ms", BigInteger, nullable=False),
    )


def consents_table(metadata: MetaData) -> Table:
    """Consents as signed, with the state their latest signed change gives them."""
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
        Column("detail_level", String(8), nullable=False),
        Column("history_months", Integer, nullable=False),
        Column("fetch_type", String(8), nullable=False),
        Column("max_fetches", Integer, nullable=False),
        Column("fetch_period", String(8), nullable=False),
        Column("signed_by", String(96), nullable=False),
        Column("co_grantee", String(18), nullable=False, default=""),
        Column("delegation", LargeBinary, nullable=True),
        Column("state", String(8), nullable=False),
        Column("state_at_ms", BigInteger, nullable=False),
        Column("received_at_ms", BigInteger, nullable=False),
    )


def consent_changes_table(metadata: MetaData) -> Table:
    """Every signed pause, resume and revoke, kept as signed."""
    return Table(
        "consent_changes",
        metadata,
        Column("consent_id", String(64), primary_key=True),
        Column("at_ms", BigInteger, primary_key=True, autoincrement=False),
        Column("envelope", LargeBinary, nullable=False),
    )


def consent_uses_table(metadata: MetaData) -> Table:
    """Each query answered under a consent, once per request: what fetch limits count."""
    return Table(
        "consent_uses",
        metadata,
        Column("consent_id", String(64), primary_key=True),
        Column("request_hash", String(64), primary_key=True),
        Column("asker", String(64), nullable=False, default=""),  # each institution of a joint consent counts alone
        Column("at_ms", BigInteger, nullable=False),
    )


def consent_use_holds_table(metadata: MetaData) -> Table:
    """Consent uses reserved by a request in progress, when several processes share the store
    (xinyi.query.SharedUseLedger): they count against the limit until the answer's audit commit
    turns them into consent_uses, or they are given back, or they expire (a process that died)."""
    return Table(
        "consent_use_holds",
        metadata,
        Column("consent_id", String(64), primary_key=True),
        Column("request_hash", String(64), primary_key=True),
        Column("asker", String(64), nullable=False, default=""),
        Column("at_ms", BigInteger, nullable=False),
        Column("expires_at_ms", BigInteger, nullable=False),
    )


def nonces_table(metadata: MetaData) -> Table:
    """Nonces seen from each signer, kept for the replay window, so a replay is refused even after a restart."""
    return Table(
        "seen_nonces",
        metadata,
        Column("signer", String(64), primary_key=True),
        Column("nonce", LargeBinary(32), primary_key=True),
        Column("expires_at_ms", BigInteger, nullable=False, index=True),
        # The query that took the nonce (when known), so that the same query sent again is told
        # it was received, not taken for a replay, whichever process it reaches.
        Column("request_hash", String(64), nullable=False, server_default=text("''")),
    )
