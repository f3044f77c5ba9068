"""What a store needs to outlive its database's failover (issue 13, item 5): several servers in
one URL, errors of a failover read as "unavailable", and an audit commit whose reply was lost.

The failover itself, with a real primary, a promoted standby and a running network, is
tests/adversarial/test_pg_failover.py.
"""

from __future__ import annotations

import asyncio

import pytest
from processes import free_port
from sqlalchemy import text
from sqlalchemy.exc import InternalError, OperationalError
from testdb import pg_base_url, require_pg

from node.store import NodeStore
from xinyi.audit import merkle
from xinyi.audit.entry import AuditEntry
from xinyi.audit.log import RETRACT, AuditLog
from xinyi.clock import now_ms
from xinyi.crypto.identity import Principal, Role
from xinyi.crypto.pki import RootCA
from xinyi.db import open_engine
from xinyi.errors import StoreUnavailable, is_store_unavailable


@pytest.mark.parametrize("hosts", ["host=127.0.0.1:{dead},127.0.0.1:{live}",
                                   "host=127.0.0.1:{dead}&host=127.0.0.1:{live}",
                                   "host=127.0.0.1,127.0.0.1&port={dead},{live}"])
def test_a_multi_host_url_reaches_the_server_that_answers(hosts: str) -> None:
    require_pg()
    base = pg_base_url()  # postgresql+psycopg://USER@HOST:PORT/DB
    live = base.rsplit("@", 1)[1].split("/", 1)[0].rsplit(":", 1)[1]
    user, database = base.split("://", 1)[1].split("@", 1)[0], base.rsplit("/", 1)[1]
    url = (f"postgresql+psycopg://{user}@/{database}?{hosts.format(dead=free_port(), live=live)}"
           "&target_session_attrs=read-write")
    engine = open_engine(url)
    try:
        with engine.connect() as conn:
            assert str(conn.execute(text("SELECT inet_server_port()")).scalar()) == live
    finally:
        engine.dispose()


@pytest.mark.parametrize("form", [
    # libpq's own URI, hosts in the authority (as PostgreSQL's documentation writes it)
    "postgresql+psycopg://{user}@127.0.0.1:{dead},127.0.0.1:{live}/{database}?target_session_attrs=read-write",
    "postgresql://{user}@127.0.0.1:{dead},127.0.0.1:{live}/{database}?target_session_attrs=read-write",
    # libpq's keyword/value connection string
    "host=127.0.0.1,127.0.0.1 port={dead},{live} dbname={database} user={user} target_session_attrs=read-write",
])
def test_libpqs_own_multi_host_forms_reach_the_server_that_answers(form: str) -> None:
    """The forms an operator copies from libpq's documentation name several servers too: each is
    taken as the same URL, not as a SQLite file name nor a port that is not a number."""
    require_pg()
    base = pg_base_url()
    live = base.rsplit("@", 1)[1].split("/", 1)[0].rsplit(":", 1)[1]
    user, database = base.split("://", 1)[1].split("@", 1)[0], base.rsplit("/", 1)[1]
    engine = open_engine(form.format(user=user, database=database, dead=free_port(), live=live))
    try:
        with engine.connect() as conn:
            assert str(conn.execute(text("SELECT inet_server_port()")).scalar()) == live
    finally:
        engine.dispose()


def test_failover_errors_read_as_unavailable() -> None:
    class Orig(Exception):
        def __init__(self, sqlstate: str) -> None:
            self.sqlstate = sqlstate

    read_only = InternalError("INSERT", {}, Orig("25006"))  # a standby, or a primary being demoted
    assert is_store_unavailable(read_only)
    assert is_store_unavailable(InternalError("SELECT", {}, Orig("57P01")))  # the server shutting down
    assert is_store_unavailable(OperationalError("SELECT", {}, Orig("08006")))
    assert not is_store_unavailable(InternalError("SELECT", {}, Orig("42P01")))  # a missing table is a bug


class LostReply:
    """A store whose next audit commit is made, and then reported as failed (the primary took it,
    and its synchronous standby, and died before answering)."""

    def __init__(self, store: NodeStore) -> None:
        self.store = store
        self.lose_next = False

    def __getattr__(self, name: str):
        return getattr(self.store, name)

    def append_audit_batch(self, rows, extras=()) -> list[bytes]:
        others = self.store.append_audit_batch(rows, extras)
        if self.lose_next:
            self.lose_next = False
            raise OperationalError("COMMIT", {}, Exception("server closed the connection unexpectedly"))
        return others


async def test_a_commit_whose_reply_was_lost_stays_in_the_log(db_url: str) -> None:
    identity = RootCA.create().issue(Principal(Role.NODE, "510100"))
    store = NodeStore(db_url)
    store.create_schema()
    flaky = LostReply(store)
    log = AuditLog(flaky, identity, now_ms)
    await log.open()

    def entry(i: int) -> AuditEntry:
        return AuditEntry(at_ms=now_ms(), caller_role="bank", caller_id=f"b{i}", action="query", decision="allow")

    try:
        assert await log.append(entry(0)) == 0
        flaky.lose_next = True
        with pytest.raises(StoreUnavailable):
            await log.append(entry(1))  # made, but its caller was told it failed (and answered nothing)
        assert await log.append(entry(2)) == 2, "the next entry must follow the one the store holds"
        await log.close()  # after the retraction of entry 1, which its commit queued
        rows = await asyncio.to_thread(store.audit_entries, 0, 10)
        tracker = merkle.RootTracker()
        for row in rows:
            assert row.record().prev_root == tracker.root(), f"entry {row.index} is not chained to the log before it"
            tracker.append(merkle.leaf_hash(row.leaf_input))
        assert [r.index for r in rows] == [0, 1, 2, 3] and log.tree.root() == tracker.root()
        retraction = rows[3].record()
        assert (retraction.action, retraction.caller_id, retraction.detail) == (RETRACT, "b1", "retracts entry 1 (query, allow)")
    finally:
        await log.close()
        store.close()


class NonceStoreDown:
    """A shared store whose next nonce write fails as a primary going away does."""

    def __init__(self, store: NodeStore) -> None:
        self.store = store
        self.fail_next = True

    def __getattr__(self, name: str):
        return getattr(self.store, name)

    def remember_nonce(self, *args, **kwargs) -> bool:
        if self.fail_next:
            self.fail_next = False
            raise OperationalError("INSERT", {}, Exception("server closed the connection unexpectedly"))
        return self.store.remember_nonce(*args, **kwargs)


async def test_a_nonce_the_store_could_not_take_is_not_a_replay_when_the_query_comes_again(db_url: str) -> None:
    """The database decides nonces for processes that share it; when it could not be asked (a
    failover), the nonce is not kept in memory either: the same query sent again is taken."""
    from xinyi.query import SharedReplayGuard, replayed_nonce

    store = NodeStore(db_url)
    store.create_schema()
    guard = SharedReplayGuard(NonceStoreDown(store))
    try:
        with pytest.raises(OperationalError):
            await guard.claim("bank/x", b"n" * 16, now_ms(), request_hash="ab" * 32)
        row = await guard.claim("bank/x", b"n" * 16, now_ms(), request_hash="ab" * 32)
        assert row[1]["request_hash"] == "ab" * 32 and store.nonce_taken_by("bank/x", b"n" * 16) == "ab" * 32
        with pytest.raises(type(replayed_nonce())):  # taken now: a third time is a replay
            await guard.claim("bank/x", b"n" * 16, now_ms(), request_hash="ab" * 32)
    finally:
        store.close()
