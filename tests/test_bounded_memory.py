"""Memory does not grow with the number of distinct consents asked about.

Each consent a node or the registry reads is kept in memory (xinyi.store.BaseStore, the consent
cache) and so are its uses (xinyi.query.UseLedger): at 50 queries a second under ever new
consents that was about 1.4 KB a consent, never given back. Both are now LRU caches with a fixed
maximum. What must still hold: a consent that left the cache is read from the store again, so a
revocation still stops it and a fetch limit still counts the uses made before it left; and a
use not yet on disk keeps its consent in memory (a re-read would not see it). The replay guard's
nonces are dropped as soon as their queries would be refused as stale anyway.

`make soak` (bench/soak.py) runs the same load for ten minutes and reports the servers' RSS.
"""

from __future__ import annotations

import dataclasses

import pytest
from harness import BANK, CHENGDU_FIRM, start_network
from test_store import consent

from node.store import NodeStore
from xinyi.privacy.consent import apply_change
from xinyi.query import NONCE_PRUNE_MS, TIMESTAMP_WINDOW_MS, ReplayGuard, UseLedger
from xinyi.cache import LRU
from xinyi.v1 import consent_pb2

LIMIT = 5


def test_an_lru_keeps_the_most_recently_used_and_what_it_is_told_to_keep() -> None:
    cache: LRU[str, int] = LRU(3)
    for i in range(10):
        cache.put(f"k{i}", i)
    assert len(cache) == 3 and [cache.get(f"k{i}") for i in (7, 8, 9)] == [7, 8, 9]
    cache.get("k7")  # now the most recently used
    cache.put("k10", 10)
    assert "k8" not in cache and "k7" in cache
    kept: LRU[str, int] = LRU(2, keep=lambda v: v < 0)
    kept.put("pinned", -1)
    for i in range(5):
        kept.put(f"k{i}", i)
    assert "pinned" in kept and len(kept) == 2
    with pytest.raises(ValueError):
        LRU(0)


def test_the_consent_cache_is_bounded_and_a_consent_that_left_it_is_read_again(db_url: str, monkeypatch) -> None:
    monkeypatch.setattr("xinyi.store.CONSENT_CACHE_LIMIT", LIMIT)
    store = NodeStore(db_url)
    store.create_schema()
    try:
        ids = [f"{i:032x}" for i in range(50)]
        for consent_id in ids:
            store.put_consent(dataclasses.replace(consent(), consent_id=consent_id))
        for consent_id in ids:
            assert store.get_consent(consent_id).state == "active"
        assert len(store._consents) <= LIMIT
        assert store.get_consent("f" * 32) is None  # unknown ids take a place too, and are bounded too
        assert len(store._consents) <= LIMIT

        # Revoked while out of the cache, and while in it: either way the next read says so.
        first, last = store.get_consent(ids[0]), store.get_consent(ids[-1])
        for c in (first, last):
            body = consent_pb2.ConsentChangeBody(consent_id=c.consent_id, uscc=c.uscc, action=3, at_ms=c.state_at_ms + 1)
            store.put_change(apply_change(c, body), body.at_ms, b"signed change")
        assert store.get_consent(ids[0]).state == "revoked"
        assert store.get_consent(ids[-1]).state == "revoked"
    finally:
        store.close()


async def test_the_use_ledger_is_bounded_and_a_spent_consent_stays_spent_after_leaving_it(db_url: str) -> None:
    store = NodeStore(db_url)
    store.create_schema()
    ledger = UseLedger(store, limit=LIMIT)
    ids = [f"{i:032x}" for i in range(40)]

    async def use(consent_id: str, request: str, *, durable: bool = True) -> bool:
        allowed, _, row = await ledger.reserve(consent_id, request, "bank/x", 100, window_start_ms=0, limit=1)
        if row is not None and durable:  # what the audit commit does, then `audited` reports
            store.append_audit_batch([], [row])
            ledger.settle(row[1], answered=True)
        return allowed

    try:
        assert await use(ids[0], "first")
        for consent_id in ids[1:]:
            assert await use(consent_id, "r")
        assert len(ledger) <= LIMIT
        # ids[0] left the ledger long ago: its one fetch is read back from the store.
        assert not await use(ids[0], "second")

        # A use whose audit commit has not happened yet is not on disk: its consent stays in memory.
        assert await use("a" * 32, "in flight", durable=False)
        for consent_id in ids[1:]:
            await use(consent_id, "again")
        assert not await use("a" * 32, "another"), "a use not yet on disk was forgotten: the fetch limit was passed"
    finally:
        store.close()


@pytest.mark.timeout(120)
async def test_servers_hold_a_bounded_number_of_consents_and_refuse_a_spent_one_after_evicting_it(
        databases, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr("xinyi.store.CONSENT_CACHE_LIMIT", LIMIT)
    monkeypatch.setattr("xinyi.query.USE_CACHE_LIMIT", LIMIT)
    net = await start_network(tmp_path, databases, nodes=("510100",))
    try:
        node, registry = net.nodes["510100"], net.registry
        enterprise, bank = net.enterprise(), net.bank()
        categories = ["registration", "judicial"]
        consents = [(await enterprise.grant(BANK, "credit_assessment", categories, 30)).consent_id for _ in range(30)]
        for consent_id in consents:
            result = await bank.query(CHENGDU_FIRM, categories, "credit_assessment", consent_id)
            assert [v.status for v in result.nodes] == ["ok"]
        assert len(node.store._consents) <= LIMIT and len(node.queries.uses) <= LIMIT
        assert len(registry.store._consents) <= LIMIT and len(registry.router.uses) <= LIMIT

        # The first consent allowed one fetch and left both caches long ago: it is still spent.
        result = await bank.query(CHENGDU_FIRM, categories, "credit_assessment", consents[0])
        assert [v.status for v in result.nodes] == ["denied"]
        assert result.nodes[0].reason == "CONSENT_SPENT", result.nodes[0]
        # And a revocation of a consent outside the caches stops it.
        fresh = (await enterprise.grant(BANK, "credit_assessment", categories, 30)).consent_id
        for consent_id in consents[1:]:
            await registry.store.consent(consent_id)
            await node.store.consent(consent_id)
        await enterprise.revoke(fresh)
        result = await bank.query(CHENGDU_FIRM, categories, "credit_assessment", fresh)
        assert [v.status for v in result.nodes] == ["denied"], result.nodes
    finally:
        await net.stop()



def test_the_replay_guard_holds_a_nonce_while_its_query_is_fresh_and_drops_it_after() -> None:
    window = TIMESTAMP_WINDOW_MS
    guard = ReplayGuard()
    # A query signed with a clock 5 minutes fast, seen at once: fresh until its timestamp is 5 minutes old.
    issued = 10 * window
    assert guard.take("bank/x", b"n" * 16, issued - window, issued) is not None
    for now in (issued - window, issued, issued + window):  # a replay, whenever the timestamp check lets it in
        assert guard.take("bank/x", b"n" * 16, now, issued) is None
    # Steady load for an hour, one query a second: the guard holds the last window's nonces, not the hour's.
    for second in range(3600):
        now = issued + window + 1 + second * 1000
        assert guard.take("bank/x", second.to_bytes(16, "big"), now, now) is not None
    assert len(guard) <= (window + NONCE_PRUNE_MS) // 1000 + 2


def test_check_query_refuses_what_the_replay_guard_has_dropped(tmp_path) -> None:
    """The guard may forget a nonce at issued_at + 5 minutes because the query is refused as stale from then on."""
    from xinyi.crypto.identity import Principal, Role
    from xinyi.crypto.pki import RootCA
    from xinyi.errors import Refusal
    from xinyi.query import build_query, check_query

    root = RootCA.create()
    bank = root.issue(Principal(Role.BANK, BANK), licence="B0014H144030001")
    issued = 1_900_000_000_000
    envelope, _ = build_query(bank, uscc=CHENGDU_FIRM, categories=["tax"], purpose="credit_assessment",
                              consent_id="c" * 32, now_ms=issued)
    check_query(envelope, bank.trust(), issued + TIMESTAMP_WINDOW_MS)
    with pytest.raises(Refusal) as refused:
        check_query(envelope, bank.trust(), issued + TIMESTAMP_WINDOW_MS + 1)
    assert refused.value.reason == "STALE_TIMESTAMP"
