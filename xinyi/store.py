"""What the node's and the registry's stores have in common: consents, the audit log, nonces.

Both stores are SQLAlchemy Core over one engine, so SQLite and PostgreSQL behave alike. Methods
are synchronous; the async servers call them through asyncio.to_thread so that a slow disk
blocks no other request.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import threading
import time
from typing import Iterable, Iterator

from sqlalchemy import Engine, MetaData, bindparam, delete, func, insert, or_, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError, OperationalError

from xinyi import db, migrations
from xinyi.cache import LRU
from xinyi.audit.entry import AuditBatch, Retraction, StoredEntry
from xinyi.privacy.consent import StoredConsent

log = logging.getLogger("xinyi.store")

_CONSENT_FIELDS = tuple(f.name for f in dataclasses.fields(StoredConsent))

# Consents kept in memory per store: enough for the consents in use at once, bounded however
# many distinct consents are asked about over time (a miss reads the store).
CONSENT_CACHE_LIMIT = 4096
_MISSING = object()

class BaseStore:
    """Tables and operations shared by the node and registry stores."""

    SCHEMA = ""  # "node" or "registry": whose line of migrations makes this store's tables

    def __init__(self, url: str, metadata: MetaData | None = None) -> None:
        self.url = db.normalize_url(url)
        self.metadata = metadata or MetaData()
        self.audit = db.audit_table(self.metadata)
        self.checkpoints = db.checkpoints_table(self.metadata)
        self.consents = db.consents_table(self.metadata)
        self.consent_changes = db.consent_changes_table(self.metadata)
        self.consent_uses = db.consent_uses_table(self.metadata)
        self.consent_use_holds = db.consent_use_holds_table(self.metadata)
        self.nonces = db.nonces_table(self.metadata)
        # What a request may take, written with its audit entry (append_audit_batch extras).
        self.audit_extras = {"seen_nonces": self.nonces, "consent_uses": self.consent_uses}
        self.engine: Engine = db.open_engine(self.url)
        # Other processes, on other hosts, may serve the same PostgreSQL store: the database,
        # not this process's memory, then decides a log's order, a nonce and a consent's uses.
        self.shared = self.engine.dialect.name == "postgresql"
        # Consents read per query; every write goes through this object (one process per store),
        # which keeps the cache true. None is cached too: an unknown id until one arrives. At
        # most CONSENT_CACHE_LIMIT of them, the least recently read going first.
        # Worker processes (--workers) share the store, so they turn the cache off: a revocation
        # written by one must stop the others at once.
        self.cache_consents = True
        # Registry replicas sharing the database: a cached consent is used only until this
        # moment (time.monotonic()), which their follower moves on each time it has dropped the
        # consents other replicas changed (registry/server.py). A single process: for ever.
        self.cache_valid_until = math.inf
        self._consents: LRU[str, StoredConsent | None] = LRU(CONSENT_CACHE_LIMIT)
        self._consent_writes = 0  # a read that raced a write is not cached
        self._consent_lock = threading.Lock()  # orders a read's caching against writes' forgetting

    def create_schema(self) -> None:
        """Create an empty database at the newest schema revision; refuse one at another revision
        (the message says to run `xinyi db upgrade`). See xinyi.migrations."""
        try:
            migrations.ensure_current(self.engine, self.SCHEMA)
        except db.StoreError:
            raise
        except Exception as e:  # noqa: BLE001 - turned into an actionable message
            raise db.StoreError(f"cannot open database {migrations.shown(self.engine)}: {e.__class__.__name__}: {str(e).splitlines()[0]}") from None

    def close(self) -> None:
        self.engine.dispose()

    # --- audit log (written only through xinyi.audit.log.AuditLog) ---------------------------
    def append_audit_batch(self, rows: list[dict] | AuditBatch, extras: list[tuple[str, dict]] = ()) -> list[bytes]:
        """Append a batch of entries, and what their requests took (a nonce, a consent use),
        in one durable transaction (group commit).

        An AuditBatch is numbered inside the transaction: on PostgreSQL it first takes the log's
        advisory lock (held until commit, released by the server if this process dies), then
        reads the leaf hashes other writers appended since the batch's known size, which are
        returned; the batch's rows follow them."""
        tables = self.audit_extras
        dialect_insert = pg_insert if self.engine.dialect.name == "postgresql" else sqlite_insert
        retracted: list[Retraction] = []
        if any(type(extra) is Retraction for extra in extras):  # rare: a lost commit reply's retraction
            retracted = [extra for extra in extras if type(extra) is Retraction]
            extras = [extra for extra in extras if type(extra) is not Retraction]
        others: list[bytes] = []
        with self.engine.begin() as conn:
            if isinstance(rows, AuditBatch):
                if self.engine.dialect.name == "postgresql":
                    conn.execute(select(func.pg_advisory_xact_lock(self.advisory_key(rows.origin))))
                others = list(self._leaf_hashes(conn, rows.known_size))
                rows = rows.build(others)
            if rows:
                conn.execute(insert(self.audit), rows)
            for name in tables:
                batch = [row for table, row in extras if table == name]
                if batch:
                    conn.execute(dialect_insert(tables[name]).on_conflict_do_nothing(), batch)
            answered = [row for table, row in extras if table == "consent_uses"]
            if answered and self.shared:  # the uses answered stop being held: one commit does both
                h = self.consent_use_holds.c
                conn.execute(delete(self.consent_use_holds).where(
                    h.consent_id == bindparam("b_consent"), h.request_hash == bindparam("b_request")),
                    [{"b_consent": r["consent_id"], "b_request": r["request_hash"]} for r in answered])
            for table, row in retracted:  # by the table's primary key
                t = tables[table]
                conn.execute(delete(t).where(*(column == row[column.name] for column in t.primary_key.columns)))
        return others

    @staticmethod
    def advisory_key(name: str):
        """A PostgreSQL advisory-lock key for `name` (a log's origin, a consent) in this database
        and this schema: another store on the same server never waits for it."""
        return func.hashtextextended(func.current_database() + "/" + func.current_schema() + "/" + name, 0)

    def uses_of(self, consent_id: str) -> list[tuple[str, str, int]]:
        """A consent's recorded uses: (request hash, asker, at)."""
        u = self.consent_uses.c
        with self.engine.connect() as conn:
            rows = conn.execute(select(u.request_hash, u.asker, u.at_ms).where(u.consent_id == consent_id)).all()
        return [(r.request_hash, r.asker, r.at_ms) for r in rows]

    def live_nonces(self, now_ms: int) -> list[tuple[str, bytes, int]]:
        """Nonces still inside their replay window, for ReplayGuard at start."""
        n = self.nonces.c
        with self.engine.connect() as conn:
            rows = conn.execute(select(n.signer, n.nonce, n.expires_at_ms).where(n.expires_at_ms >= now_ms)).all()
        return [(r.signer, bytes(r.nonce), r.expires_at_ms) for r in rows]

    def audit_leaf_hashes(self, start: int = 0, stop: int | None = None) -> Iterator[bytes]:
        """Every leaf hash from index `start` on (up to `stop`), in index order: for rebuilding
        the Merkle tree at start, catching up with what other writers appended, and the
        finished blocks of the tree that a proof reads back (xinyi.audit.merkle)."""
        with self.engine.connect() as conn:
            yield from self._leaf_hashes(conn, start, stop)

    def audit_index_of(self, leaf_hash: bytes) -> int | None:
        """The first index whose leaf hash is `leaf_hash` (ix_audit_log_leaf_hash), or None."""
        c = self.audit.c
        with self.engine.connect() as conn:
            return conn.execute(select(func.min(c.idx)).where(c.leaf_hash == leaf_hash)).scalar()

    def _leaf_hashes(self, conn, start: int, stop: int | None = None) -> Iterator[bytes]:
        c = self.audit.c
        q = select(c.idx, c.leaf_hash).where(c.idx >= start)
        if stop is not None:
            q = q.where(c.idx < stop)
        result = conn.execute(q.order_by(c.idx).execution_options(stream_results=True, yield_per=10000))
        for expected, (idx, leaf_hash) in enumerate(result, start):
            if idx != expected:
                raise db.StoreError(f"audit log has a gap: index {expected} is missing (found {idx}); the log was altered")
            yield bytes(leaf_hash)

    def audit_entries(self, start: int, end: int) -> list[StoredEntry]:
        """Entries with start <= index < end."""
        q = (select(self.audit.c.idx, self.audit.c.leaf_input)
             .where(self.audit.c.idx >= start, self.audit.c.idx < end).order_by(self.audit.c.idx))
        with self.engine.connect() as conn:
            return [StoredEntry(i, bytes(b)) for i, b in conn.execute(q)]

    def find_audit(self, *, uscc: str = "", request_hash: str = "", start: int = 0, end: int | None = None,
                   limit: int = 1000, newest_first: bool = False) -> list[StoredEntry]:
        """Entries about one enterprise, or for one request, with start <= index < end, in
        index order (or newest first)."""
        c = self.audit.c
        q = self._audit_range(select(c.idx, c.leaf_input), uscc, request_hash, start, end, newest_first).limit(limit)
        with self.engine.connect() as conn:
            return [StoredEntry(i, bytes(b)) for i, b in conn.execute(q)]

    def audit_sizes(self, *, uscc: str = "", start: int = 0, end: int | None = None, limit: int = 1000,
                    newest_first: bool = False) -> list[tuple[int, int]]:
        """(index, size in bytes) of the entries find_audit would return: what a page bounded
        by bytes can take, learnt before any entry is read."""
        c = self.audit.c
        q = self._audit_range(select(c.idx, func.length(c.leaf_input)), uscc, "", start, end, newest_first).limit(limit)
        with self.engine.connect() as conn:
            return [(i, n) for i, n in conn.execute(q)]

    def count_audit(self, *, uscc: str, end: int | None = None) -> int:
        """How many entries are about one enterprise (below index `end`)."""
        q = self._audit_range(select(func.count()).select_from(self.audit), uscc, "", 0, end, False).order_by(None)
        with self.engine.connect() as conn:
            return conn.execute(q).scalar_one()

    def _audit_range(self, q, uscc: str, request_hash: str, start: int, end: int | None, newest_first: bool):
        c = self.audit.c
        q = q.where(c.idx >= start).order_by(c.idx.desc() if newest_first else c.idx)
        if end is not None:
            q = q.where(c.idx < end)
        if uscc:
            q = q.where(c.uscc == uscc)
        if request_hash:
            q = q.where(c.request_hash == request_hash)
        return q

    def audit_log_size(self) -> int:
        with self.engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(self.audit)).scalar_one()

    def put_checkpoint(self, size: int, root: bytes, note: str, at_ms: int, *, cosigned: bool = False) -> None:
        """Keep a signed checkpoint. Several writers of one log sign the same size alike: the
        first one kept stays, except that a cosigned note replaces the plain one. Rows are never
        removed, so the latest (largest) checkpoint never goes back."""
        c = self.checkpoints.c
        dialect_insert = pg_insert if self.engine.dialect.name == "postgresql" else sqlite_insert
        stmt = dialect_insert(self.checkpoints).values(size=size, root=root, note=note, at_ms=at_ms)
        if cosigned:
            stmt = stmt.on_conflict_do_update(index_elements=[c.size], set_={"note": note, "at_ms": at_ms},
                                              where=c.root == root)
        else:
            stmt = stmt.on_conflict_do_nothing()
        with self.engine.begin() as conn:
            conn.execute(stmt)

    def latest_checkpoint(self) -> tuple[int, bytes, str, int] | None:
        c = self.checkpoints.c
        with self.engine.connect() as conn:
            row = conn.execute(select(c.size, c.root, c.note, c.at_ms).order_by(c.size.desc()).limit(1)).first()
        return (row.size, bytes(row.root), row.note, row.at_ms) if row else None

    # --- consents --------------------------------------------------------------------------
    def _consent_row(self, c: StoredConsent) -> dict:
        row = dict(c.__dict__)
        row["categories"] = ",".join(c.categories)
        return row

    @staticmethod
    def _consent(row) -> StoredConsent:
        d = {name: row._mapping[name] for name in _CONSENT_FIELDS}
        d["categories"] = tuple(x for x in d["categories"].split(",") if x)
        d["delegation"] = bytes(d["delegation"]) if d["delegation"] is not None else None
        d["envelope"] = bytes(d["envelope"])
        return StoredConsent(**d)

    def put_consent(self, consent: StoredConsent) -> bool:
        """Store a consent; False when it was already known (consents are immutable)."""
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(self.consents).values(self._consent_row(consent)))
            return True
        except IntegrityError:
            return False
        finally:
            self._forget_consent(consent.consent_id)

    def put_change(self, consent: StoredConsent, at_ms: int, envelope: bytes) -> bool:
        """Keep a signed change and the state it gives the consent (the caller decided it
        applies). False when, meanwhile, another process applied a later change or a revocation
        (xinyi.privacy.consent.apply_change's rule, decided by one UPDATE): nothing is kept."""
        c = self.consents.c
        try:
            with self.engine.begin() as conn:
                applied = conn.execute(update(self.consents).where(
                    c.consent_id == consent.consent_id, c.state != "revoked", c.state_at_ms < consent.state_at_ms)
                    .values(state=consent.state, state_at_ms=consent.state_at_ms)).rowcount > 0
                if applied:  # state_at_ms only grows, so no change of this time was kept before
                    conn.execute(insert(self.consent_changes).values(consent_id=consent.consent_id, at_ms=at_ms,
                                                                     envelope=envelope))
        finally:
            self._forget_consent(consent.consent_id)
        return applied

    def _forget_consent(self, *consent_ids: str) -> None:
        """After a committed write (here or by another process): drop the cached copies; reads
        in flight will not cache theirs."""
        with self._consent_lock:
            self._consent_writes += 1
            for consent_id in consent_ids:
                self._consents.pop(consent_id, None)

    def forget_consents(self, consent_ids: Iterable[str], valid_until: float) -> None:
        """Another process changed these consents: drop them; what stays cached may be used
        until `valid_until` (time.monotonic())."""
        self._forget_consent(*consent_ids)
        self.cache_valid_until = valid_until

    def _cached_consent(self, consent_id: str):
        if time.monotonic() >= self.cache_valid_until:
            return _MISSING
        return self._consents.get(consent_id, _MISSING)

    def changes_of(self, consent_id: str) -> list[bytes]:
        c = self.consent_changes.c
        with self.engine.connect() as conn:
            return [bytes(e) for e in conn.execute(select(c.envelope).where(c.consent_id == consent_id).order_by(c.at_ms)).scalars()]

    def get_consent(self, consent_id: str) -> StoredConsent | None:
        cached = self._cached_consent(consent_id)
        if cached is not _MISSING:
            return cached
        writes = self._consent_writes
        with self.engine.connect() as conn:
            row = conn.execute(select(self.consents).where(self.consents.c.consent_id == consent_id)).first()
        consent = self._consent(row) if row else None
        with self._consent_lock:
            if writes == self._consent_writes and self.cache_consents:
                self._consents.put(consent_id, consent)
        return consent

    async def consent(self, consent_id: str) -> StoredConsent | None:
        """get_consent for async callers: from memory when known, else read in a thread."""
        cached = self._cached_consent(consent_id)
        if cached is not _MISSING:
            return cached
        return await asyncio.to_thread(self.get_consent, consent_id)

    def consents_for(self, usccs: Iterable[str] | None = None) -> list[StoredConsent]:
        q = select(self.consents).order_by(self.consents.c.received_at_ms, self.consents.c.consent_id)
        if usccs is not None:
            q = q.where(self.consents.c.uscc.in_(list(usccs)))
        with self.engine.connect() as conn:
            return [self._consent(r) for r in conn.execute(q)]

    def use_stats(self, consent_id: str) -> tuple[int, int]:
        """How many uses a consent has had, and when the last was (0 when never)."""
        u = self.consent_uses.c
        with self.engine.connect() as conn:
            count, last = conn.execute(select(func.count(), func.max(u.at_ms)).where(u.consent_id == consent_id)).one()
        return count, last or 0

    # --- replay protection -----------------------------------------------------------------
    def remember_nonce(self, signer: str, nonce: bytes, expires_at_ms: int, now_ms: int, *,
                       flushed_by_audit: bool = False, request_hash: str = "") -> bool:
        """Record a signer's nonce; False when it was seen before (a replay). The primary key
        decides, whichever process (on whichever host) asks first.

        `flushed_by_audit`: the caller writes the request's audit entry afterwards, and answers
        only once that committed; on PostgreSQL the nonce's own commit then need not wait for
        the disk (synchronous_commit off): the audit commit's flush, later in the one WAL,
        makes it durable before anything is answered."""
        n = self.nonces.c
        dialect_insert = pg_insert if self.engine.dialect.name == "postgresql" else sqlite_insert
        with self.engine.begin() as conn:
            if flushed_by_audit and self.engine.dialect.name == "postgresql":
                conn.execute(text("SET LOCAL synchronous_commit = off"))
            taken = conn.execute(dialect_insert(self.nonces).values(signer=signer, nonce=nonce, expires_at_ms=expires_at_ms,
                                                                    request_hash=request_hash)
                                 .on_conflict_do_nothing().returning(n.signer)).first() is not None
        if taken and nonce[:1] == b"\x00":  # nonces are random: prune about once in 256 calls
            try:
                with self.engine.begin() as conn:
                    conn.execute(delete(self.nonces).where(n.expires_at_ms < now_ms))
            except OperationalError as e:  # two processes pruning at once; the next prune does it
                log.info("nonce pruning skipped: %s", str(e).splitlines()[0])
        return taken

    def nonce_taken_by(self, signer: str, nonce: bytes) -> str | None:
        """The request hash of the query that took a signer's nonce ("" when not recorded), or
        None when the nonce is not taken."""
        n = self.nonces.c
        with self.engine.connect() as conn:
            return conn.execute(select(n.request_hash).where(n.signer == signer, n.nonce == nonce)).scalar_one_or_none()

    def forget_nonce(self, signer: str, nonce: bytes) -> None:
        """Drop a nonce whose query's audit record failed: that query was not answered."""
        n = self.nonces.c
        with self.engine.begin() as conn:
            conn.execute(delete(self.nonces).where(n.signer == signer, n.nonce == nonce))

    # --- consent uses reserved across processes (xinyi.query.SharedUseLedger) -------------
    def hold_use(self, consent_id: str, request_hash: str, asker: str, now_ms: int, *, window_start_ms: int,
                 limit: int, hold_ms: int) -> tuple[bool, int, bool]:
        """Reserve one use of a consent for a request, atomically across every process on this
        database: (allowed, uses in the window before it, whether this request was already
        counted or held). Uses answered and holds not expired both count. The check and the
        hold are one transaction under the consent's advisory lock, so two processes at the
        same instant cannot both take the last use."""
        u, h = self.consent_uses.c, self.consent_use_holds.c
        with self.engine.begin() as conn:
            if self.engine.dialect.name == "postgresql":
                conn.execute(text("SET LOCAL synchronous_commit = off"))  # durable with the answer's audit commit
                conn.execute(select(func.pg_advisory_xact_lock(self.advisory_key("consent-uses/" + consent_id))))
            # One statement, so one snapshot: an answer's audit commit turns a hold into a use
            # atomically, and two statements could see neither.
            counted = conn.execute(select(
                select(func.count()).where(u.consent_id == consent_id, u.request_hash == request_hash).scalar_subquery(),
                select(func.count()).where(h.consent_id == consent_id, h.request_hash == request_hash,
                                           h.expires_at_ms >= now_ms).scalar_subquery(),
                select(func.count()).where(u.consent_id == consent_id, u.asker == asker,
                                           u.at_ms >= window_start_ms).scalar_subquery(),
                select(func.count()).where(h.consent_id == consent_id, h.asker == asker, h.at_ms >= window_start_ms,
                                           h.expires_at_ms >= now_ms).scalar_subquery(),
            )).one()
            if counted[0] or counted[1]:
                return True, 0, True
            used = counted[2] + counted[3]
            if used >= limit:
                return False, used, False
            conn.execute(delete(self.consent_use_holds).where(
                h.consent_id == consent_id, or_(h.request_hash == request_hash, h.expires_at_ms < now_ms)))
            conn.execute(insert(self.consent_use_holds).values(consent_id=consent_id, request_hash=request_hash,
                                                               asker=asker, at_ms=now_ms,
                                                               expires_at_ms=now_ms + hold_ms))
        return True, used, False

    def drop_use_hold(self, consent_id: str, request_hash: str) -> None:
        """Give a reserved use back: its request answered nothing."""
        h = self.consent_use_holds.c
        with self.engine.begin() as conn:
            conn.execute(delete(self.consent_use_holds).where(h.consent_id == consent_id,
                                                              h.request_hash == request_hash))
