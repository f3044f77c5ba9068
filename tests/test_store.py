"""The stores behind their small interface, on SQLite and PostgreSQL alike."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from harness import BANK, CHENGDU_FIRM, SEED

from node.store import NodeStore
from registry.store import NodeRow, RegistryStore
from xinyi.privacy.consent import StoredConsent


def consent(cid: str = "c" * 32, uscc: str = CHENGDU_FIRM) -> StoredConsent:
    return StoredConsent(cid, uscc, BANK, "credit_assessment", ("registration", "tax"), 1, 2, b"signed-bytes",
                         signed_by=f"enterprise/{uscc}", received_at_ms=5)


def test_records_are_idempotent_indexed_by_enterprise_and_category(db_url: str):
    store = NodeStore(db_url)
    store.create_schema()
    records = SEED["510000"]
    assert store.add_records(records, 1) == len(records)
    assert store.add_records(records, 2) == 0  # the same file twice changes nothing
    assert store.count_records() == len(records)
    tax = store.fetch_records(CHENGDU_FIRM, ["tax"])
    assert [r.fields["period"] for r in tax] == ["2026-05", "2026-04"]
    assert all(r.source == "国家税务总局四川省税务局" for r in tax)  # source and as-of kept
    assert store.fetch_records(CHENGDU_FIRM, ["judicial"]) == []
    assert store.held_usccs() == sorted({r.uscc for r in records})
    store.close()


def test_a_query_reads_records_through_the_enterprise_index_not_a_scan(db_url: str):
    """Query time must not grow with the store: the fetch a query runs is planned on the
    (uscc, category) index by both databases."""
    from sqlalchemy import text

    store = NodeStore(db_url)
    store.create_schema()
    store.add_records(SEED["510000"], 1)
    params = {"uscc": CHENGDU_FIRM, "categories": ["tax", "judicial"], "since": "2020-01-01"}
    sql = str(store._fetch.params(**params).compile(store.engine, compile_kwargs={"literal_binds": True}))
    with store.engine.connect() as conn:
        if store.engine.dialect.name == "sqlite":
            plan = " | ".join(row[-1] for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}"))
            assert "USING INDEX ix_records_uscc_category" in plan, plan
            assert "SCAN records" not in plan, plan
        else:
            conn.execute(text("SET enable_seqscan = off"))  # a tiny table would be scanned anyway
            plan = " | ".join(row[0] for row in conn.exec_driver_sql(f"EXPLAIN {sql}"))
            assert "ix_records_uscc_category" in plan, plan
    assert [r.category for r in store.fetch_records(**params)] == ["tax", "tax"]
    store.close()


def test_audit_rows_are_found_by_enterprise_and_request(db_url: str):
    store = NodeStore(db_url)
    store.create_schema()
    rows = [
        {"idx": i, "leaf_input": bytes([i]), "leaf_hash": bytes([i]) * 32, "at_ms": i, "caller_id": BANK,
         "action": "query", "uscc": CHENGDU_FIRM if i < 3 else "", "decision": "allow", "request_hash": f"h{i % 2}"}
        for i in range(5)
    ]
    store.append_audit_batch(rows)
    assert store.audit_log_size() == 5
    assert [e.index for e in store.audit_entries(1, 3)] == [1, 2]
    assert [e.index for e in store.find_audit(uscc=CHENGDU_FIRM)] == [0, 1, 2]
    assert [e.index for e in store.find_audit(request_hash="h1", start=2)] == [3]
    assert list(store.audit_leaf_hashes()) == [bytes([i]) * 32 for i in range(5)]
    store.close()


def test_consents_are_immutable_and_change_state_with_signed_changes(db_url: str):
    store = NodeStore(db_url)
    store.create_schema()
    assert store.put_consent(consent()) is True
    assert store.put_consent(consent()) is False
    stored = store.get_consent("c" * 32)
    assert stored.categories == ("registration", "tax") and stored.state == "active"
    store.put_change(replace(stored, state="paused", state_at_ms=9), 9, b"pause-envelope")
    store.put_change(replace(stored, state="revoked", state_at_ms=12), 12, b"revoke-envelope")
    assert store.get_consent("c" * 32).state == "revoked"
    assert store.changes_of("c" * 32) == [b"pause-envelope", b"revoke-envelope"]
    assert [c.consent_id for c in store.consents_for([CHENGDU_FIRM])] == ["c" * 32]
    assert store.consents_for(["91310115MA1K3Y9P24"]) == []
    store.close()


async def test_uses_are_counted_once_per_request_and_limited_per_window(db_url: str):
    from xinyi.query import UseLedger

    store = NodeStore(db_url)
    store.create_schema()
    store.put_consent(consent())
    ledger = UseLedger(store)

    async def claim(request: str, at: int, start: int = 0, asker: str = "bank/x"):
        allowed, used, use = await ledger.reserve("c" * 32, request, asker, at, window_start_ms=start, limit=2)
        if use is not None:  # what the answer's audit commit writes
            await ledger.audited([use], asyncio.to_thread(store.append_audit_batch, [], [use]))
        return allowed, used

    assert await claim("r1", 100) == (True, 0)
    assert await claim("r1", 101) == (True, 0)  # the same request counts once
    assert await claim("r2", 102) == (True, 1)
    assert await claim("r3", 103) == (False, 2)
    assert await claim("r3", 200, start=150) == (True, 0)  # a new period
    assert await claim("r4", 201, asker="guarantor/y") == (True, 0)  # each institution counts alone
    assert store.use_stats("c" * 32) == (4, 201)
    # A fresh ledger (a restarted node) reads what was made durable.
    assert await UseLedger(store).reserve("c" * 32, "r5", "bank/x", 300, window_start_ms=0, limit=2) == (False, 3, None)
    store.close()


async def test_a_use_is_given_back_when_its_answer_is_not_audited(db_url: str):
    """Reserved, then released, failed or cancelled before its audit entry committed: the use
    does not count; committed (even after its caller was cancelled): it does."""
    from xinyi.query import UseLedger

    store = NodeStore(db_url)
    store.create_schema()
    ledger = UseLedger(store)

    async def reserve(request: str):
        return await ledger.reserve("c" * 32, request, "bank/x", 100, window_start_ms=0, limit=1)

    allowed, _, use = await reserve("r1")
    assert allowed and (await reserve("r2"))[0] is False  # reserved: counts against the limit at once
    await ledger.release(use)
    allowed, _, use = await reserve("r2")
    assert allowed

    async def failing_commit():
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        await ledger.audited([use], failing_commit())
    allowed, _, use = await reserve("r3")
    assert allowed

    # The caller is cancelled while its commit runs on: settled by the commit's outcome.
    for commit_ok, next_allowed in ((False, True), (True, False)):
        gate = asyncio.Event()

        async def commit(ok=commit_ok, gate=gate):
            await gate.wait()
            if not ok:
                raise OSError(28, "No space left on device")
            await asyncio.to_thread(store.append_audit_batch, [], [use])

        waiting = asyncio.create_task(ledger.audited([use], commit()))
        await asyncio.sleep(0.01)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert (await reserve("probe"))[0] is False  # still held while the commit runs
        gate.set()
        await asyncio.sleep(0.05)
        allowed, _, probe = await reserve(f"after-{commit_ok}")
        assert allowed is next_allowed
        if next_allowed:
            use = probe
    assert store.use_stats("c" * 32)[0] == 1
    store.close()


def test_nonces_are_refused_the_second_time_and_expire(db_url: str):
    store = RegistryStore(db_url)
    store.create_schema()
    nonce = b"\x01" * 16
    assert store.remember_nonce("bank/x", nonce, expires_at_ms=100, now_ms=0) is True
    assert store.remember_nonce("bank/x", nonce, expires_at_ms=100, now_ms=0) is False
    assert store.remember_nonce("bank/y", nonce, expires_at_ms=100, now_ms=0) is True  # per signer
    # A nonce starting with 0x00 prunes expired ones on its way in.
    assert store.remember_nonce("bank/z", b"\x00" * 16, expires_at_ms=500, now_ms=200) is True
    assert store.remember_nonce("bank/x", nonce, expires_at_ms=900, now_ms=200) is True
    store.close()


def test_registry_directory_version_grows_only_on_change(db_url: str):
    firm = "91510700MA62TRE4X6"
    store = RegistryStore(db_url)
    store.create_schema()
    assert store.list_nodes() == (0, [])
    assert store.upsert_node(NodeRow("310000", "127.0.0.1:1", b"cert", 1), [firm]).changed is True
    assert store.upsert_node(NodeRow("310000", "127.0.0.1:1", b"cert", 2), [firm]).changed is False  # heartbeat
    assert store.list_nodes()[0] == 1
    assert store.upsert_node(NodeRow("310000", "127.0.0.1:2", b"cert", 3), [firm]).changed is True  # moved
    version, nodes = store.list_nodes()
    assert version == 2 and nodes[0].endpoint == "127.0.0.1:2"
    # A claim is pending, not published, until the operator decides; approving it changes the directory.
    assert [(c.node_id, c.uscc, c.state) for c in store.claims()] == [("310000", firm, "pending")]
    assert store.approved_holdings() == []
    assert store.decide_claim("310000", firm, "approved", 5).state == "approved"
    assert store.list_nodes()[0] == 3 and [(h.uscc, h.node_id) for h in store.approved_holdings()] == [(firm, "310000")]
    assert store.decide_claim("310000", firm, "approved", 6).decided_at_ms == 5  # already approved: nothing changes
    assert store.list_nodes()[0] == 3
    assert store.decide_claim("510100", firm, "approved", 7) is None  # no such claim
    # A node that no longer claims the firm withdraws it, approved or not: the directory changes.
    withdrawn = store.upsert_node(NodeRow("310000", "127.0.0.1:2", b"cert", 8), [])
    assert withdrawn.changed is True and withdrawn.withdrawn == (firm,)
    assert store.approved_holdings() == [] and store.claims() == [] and store.list_nodes()[0] == 4
    store.close()


def test_an_endpoint_belongs_to_one_node(db_url: str):
    from registry.store import EndpointTaken

    store = RegistryStore(db_url)
    store.create_schema()
    store.upsert_node(NodeRow("510100", "127.0.0.1:1", b"cert", 1))
    with pytest.raises(EndpointTaken):
        store.upsert_node(NodeRow("310000", "127.0.0.1:1", b"c2", 2))
    assert [n.node_id for n in store.list_nodes()[1]] == ["510100"]
    store.upsert_node(NodeRow("510100", "127.0.0.1:9", b"cert", 3))  # moved away: the endpoint is free again
    assert store.upsert_node(NodeRow("310000", "127.0.0.1:1", b"c2", 4)).changed
    store.close()


def test_institutions_change_the_directory_only_when_new_or_relicensed(db_url: str):
    from registry.store import InstitutionRow

    store = RegistryStore(db_url)
    store.create_schema()
    assert store.put_institution(InstitutionRow("bank", "914403001922038216", "B1", 1)) is True
    assert store.put_institution(InstitutionRow("bank", "914403001922038216", "B1", 2)) is False
    assert store.list_nodes()[0] == 1
    assert store.put_institution(InstitutionRow("bank", "914403001922038216", "B2", 3)) is True
    assert store.list_nodes()[0] == 2
    assert [(i.institution_id, i.licence, i.registered_at_ms) for i in store.list_institutions()] == [
        ("914403001922038216", "B2", 3)]
    store.close()


def test_deliveries_noted_at_once_by_a_push_and_a_pull_keep_the_newest(db_url: str):
    """A push's acknowledgement and a node's pull may note the same consent and node in two
    transactions at once; neither fails on the other's row, and the newest version stays."""
    from concurrent.futures import ThreadPoolExecutor

    store = RegistryStore(db_url)
    store.create_schema()
    consent_id = "c" * 32
    try:
        for round_ in range(5):
            versions = [round_ * 10 + v for v in range(8)]
            with ThreadPoolExecutor(max_workers=8) as pool:
                list(pool.map(lambda v: store.note_deliveries([(consent_id, "510100", v, v, v % 2 == 0)]), versions))
            assert store.deliveries_of(consent_id)["510100"][0] == max(versions)
    finally:
        store.close()


def test_registry_replicas_decide_in_the_database(db_url: str):
    """Two RegistryStore objects on one database, as two replicas are: each decision holds
    whichever of them makes it, also when they make it at the same moment."""
    from concurrent.futures import ThreadPoolExecutor

    from registry.store import DirectoryContent

    a, b = RegistryStore(db_url), RegistryStore(db_url)
    a.create_schema()
    b.create_schema()  # the second replica finds the counters' rows made
    try:
        a.upsert_node(NodeRow("510100", "127.0.0.1:1", b"cert", 1))
        signed: list[DirectoryContent] = []

        def sign_as(name: bytes):
            return lambda content: signed.append(content) or name + str(content.version).encode()

        # The first replica to need version 1 signs it; the other serves those bytes.
        assert a.signed_directory_at(-1, sign_as(b"a"), 10) == (1, b"a1")
        assert b.signed_directory_at(-1, sign_as(b"b"), 11) == (1, b"a1")
        assert b.signed_directory_at(1, sign_as(b"b"), 12) is None
        assert [c.nodes[0].node_id for c in signed] == ["510100"]
        moved = b.upsert_node(NodeRow("510100", "127.0.0.1:2", b"cert", 20))
        assert moved.address.changed and moved.address.address.previous_endpoint == "127.0.0.1:1"
        assert a.node_addresses_seen()["510100"].endpoint == "127.0.0.1:2"
        assert a.signed_directory_at(1, sign_as(b"a"), 21) == (2, b"a2")

        # Consent events from both, at once: numbers unique, without a gap, in commit order.
        with ThreadPoolExecutor(8) as pool:
            seqs = list(pool.map(lambda i: (a, b)[i % 2].add_consent_event(f"{i:032x}"), range(40)))
        assert sorted(seqs) == list(range(1, 41))
        head, changed = b.consent_ids_changed_after(30)
        assert head == 40 and len(changed) == 10

        # A change applies only over an older state, never over a revocation.
        a.put_consent(consent())
        stored = b.get_consent("c" * 32)
        assert a.put_change(replace(stored, state="revoked", state_at_ms=12), 12, b"revoke") is True
        assert b.put_change(replace(stored, state="paused", state_at_ms=15), 15, b"pause") is False
        b.forget_consents(["c" * 32], float("inf"))
        assert b.get_consent("c" * 32).state == "revoked" and b.changes_of("c" * 32) == [b"revoke"]

        # Delegations: the newer statement is kept, whichever replica stores last.
        assert a.put_delegation(CHENGDU_FIRM, "zhang-wei", 100, False, 5, b"newer") is True
        assert b.put_delegation(CHENGDU_FIRM, "zhang-wei", 100, True, 4, b"older") is False
        assert a.delegation(CHENGDU_FIRM, "zhang-wei") == (b"newer", False, 100)
    finally:
        a.close()
        b.close()
