"""An enterprise's access history stays readable however long it grows: each node answers a
page at a time (newest first unless asked), bounded by count and bytes, each entry proven; the
client follows the pages; the lookup is an index range scan. Real servers, SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import os

import grpc
import pytest
from harness import BANK, CHENGDU_FIRM, SHANGHAI_FIRM, Network
from sqlalchemy import event, text

from node.store import NodeStore
from xinyi.audit.entry import AuditEntry
from xinyi.clock import now_ms
from xinyi.crypto.identity import Role
from xinyi.privacy.access import build_access_request
from xinyi.rpc.status import RpcFailure
from xinyi.v1 import access_pb2, access_pb2_grpc, audit_pb2, node_pb2_grpc

GRPC_LIMIT = 4 * 1024 * 1024


class LegacyEntry(AuditEntry):
    """An entry as versions before entries were bounded wrote it: fields of any length."""

    def __post_init__(self) -> None:
        pass


def refused_query(i: int, uscc: str = CHENGDU_FIRM, reason_bytes: int = 400) -> AuditEntry:
    """What 'any licensed bank' sending queries without a consent leaves in a node's log (an
    older version's, when its reason is longer than entries are now allowed)."""
    return (LegacyEntry if reason_bytes > 2000 else AuditEntry)(at_ms=now_ms() - 10_000_000 + i, caller_role="bank", caller_id=BANK, action="query",
                      decision="deny", uscc=uscc, categories=("tax",), purpose="credit_assessment",
                      reason="CONSENT_NOT_FOUND: " + "x" * reason_bytes, request_hash=f"{i:064x}")


async def seed(network: Network, node_id: str, entries: list[AuditEntry]) -> None:
    """Append through the node's own log (group-committed), so its tree and checkpoints agree."""
    log = network.nodes[node_id].audit_log
    await asyncio.gather(*(log.append(e) for e in entries))


async def test_a_history_past_4_mib_and_10000_entries_is_listed_whole_newest_first_each_proven(network: Network):
    # 12,000 refused queries of ~450 bytes: 5 MiB at the Chengdu node, more than one message could carry.
    await seed(network, "510100", [refused_query(i) for i in range(12_000)])
    enterprise = network.enterprise()
    listing = await enterprise.access_listing(count_total=True)
    assert listing.problems == {}
    seeded = [a for a in listing.accesses if a.node == "510100" and a.record.request_hash]
    assert len(seeded) == 12_000 and not listing.more
    assert listing.totals["510100"] == len([a for a in listing.accesses if a.node == "510100"])
    # Newest first across nodes, and every node's entries in descending index order.
    ats = [a.record.at_ms for a in listing.accesses]
    assert ats == sorted(ats, reverse=True)
    assert seeded[0].record.request_hash == f"{11_999:064x}"  # the newest is not left out
    # The 50 newest (the listing itself has added newer ones since), and the listing says there is more.
    newest = await enterprise.access_listing(limit=50)
    assert newest.problems == {} and len(newest.accesses) == 50 and newest.more
    assert [a.record.at_ms for a in newest.accesses] == sorted((a.record.at_ms for a in newest.accesses), reverse=True)
    assert newest.accesses[-1].record.at_ms >= listing.accesses[49].record.at_ms
    # Oldest first reaches the same set, ending before the entries the listing itself added.
    oldest = await enterprise.access_listing(oldest_first=True, page_size=700)
    assert oldest.problems == {}
    assert [a.record.request_hash for a in oldest.accesses if a.node == "510100" and a.record.request_hash] == \
        [f"{i:064x}" for i in range(12_000)]
    # One raw page: bounded by count and below the message limit, with a cursor to go on.
    stub = access_pb2_grpc.AccessServiceStub(
        network.channel(Role.ENTERPRISE, CHENGDU_FIRM, network.registry_addr, Role.REGISTRY).channel)
    response = await stub.ListAccesses(access_pb2.ListAccessesRequest(
        request=build_access_request(network.identity(Role.ENTERPRISE, CHENGDU_FIRM), now_ms()), count_total=True))
    page = next(n for n in response.nodes if n.node_id == "510100")
    assert len(page.entries) <= 1000 and page.next_cursor.startswith("n") and response.ByteSize() < GRPC_LIMIT
    assert page.total >= 12_000


async def test_an_entry_too_large_for_any_page_is_proven_by_its_hash_and_the_listing_moves_on(network: Network):
    # A log written before fields were bounded may hold an entry of megabytes about the firm.
    await seed(network, "510100", [refused_query(0), refused_query(1, reason_bytes=3_500_000), refused_query(2)])
    listing = await network.enterprise().access_listing()
    assert listing.problems == {}
    seeded = [a for a in listing.accesses if a.node == "510100" and a.record.action in ("query", "")]
    assert [a.withheld_bytes > 3_500_000 for a in seeded] == [False, True, False]
    assert "too large to send" in seeded[1].to_json()["reason"]
    # A small byte budget asked of the node directly: each page is within it, and nothing is lost.
    stub = node_pb2_grpc.NodeServiceStub(
        network.channel(Role.ENTERPRISE, CHENGDU_FIRM, network.node_addr("510100"), Role.NODE).channel)
    identity = network.identity(Role.ENTERPRISE, CHENGDU_FIRM)
    seen, cursor = [], ""
    while True:
        answer = (await stub.ListAccesses(access_pb2.NodeAccessesRequest(
            request=build_access_request(identity, now_ms()), cursor=cursor, max_bytes=8192))).accesses
        assert answer.ByteSize() <= 8192 + len(answer.checkpoint)
        seen += [e.index for e in answer.entries]
        if not answer.next_cursor:
            break
        cursor = answer.next_cursor
    assert seen == sorted(seen, reverse=True) and len(seen) == len(set(seen)) >= 3


async def test_paging_fields_are_bounded_and_refusals_audited(network: Network):
    stub = access_pb2_grpc.AccessServiceStub(
        network.channel(Role.ENTERPRISE, CHENGDU_FIRM, network.registry_addr, Role.REGISTRY).channel)
    identity = network.identity(Role.ENTERPRISE, CHENGDU_FIRM)

    async def refused(**fields) -> RpcFailure:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await stub.ListAccesses(access_pb2.ListAccessesRequest(
                request=build_access_request(identity, now_ms()), **fields))
        return RpcFailure.from_error(e.value)

    page = access_pb2.AccessPage
    cases = [
        ({"page_size": 1001}, "page_size"),
        ({"pages": [page(node_id="310000", cursor="n5")]}, "pages[0].node_id"),     # not on the firm's route
        ({"pages": [page(node_id="5" * 100_000, cursor="n5")]}, "pages[0].node_id"),
        ({"pages": [page(node_id="510100", cursor="n5")] * 2}, "pages[1].node_id"),
        ({"pages": [page(node_id="510100", cursor="x" * 1_000_000)]}, "pages[0].cursor"),
        ({"pages": [page(node_id="510100", cursor="DROP TABLE")]}, "pages[0].cursor"),
        ({"pages": [page(node_id="510100", cursor="o1.9")]}, "pages[0].cursor"),    # the other order
        ({"pages": [page(node_id="510100", cursor="")]}, "pages[0].cursor"),
        ({"pages": [page(node_id="510100", cursor="n1")] * 65}, "pages"),
    ]
    for fields, field in cases:
        f = await refused(**fields)
        assert f.code == "INVALID_ARGUMENT" and f.fields and f.fields[0][0] == field, (fields, f)
        assert len(f.message) < 300  # nothing the caller sent is echoed back at length
    # Each refusal is in the registry's log, bounded, with the enterprise as caller: the ones over a
    # field's size limit by the request guard, before the request was read (action "Access/ListAccesses"),
    # the others by the access desk.
    rows = await asyncio.to_thread(network.registry.store.find_audit, limit=10_000)
    denied = [r.record() for r in rows if r.record().action in ("read_accesses", "Access/ListAccesses")
              and r.record().decision == audit_pb2.DECISION_DENY and r.record().caller_id == CHENGDU_FIRM]
    assert len(denied) == len(cases) and all(len(r.reason) < 300 for r in denied), [r.reason for r in denied]
    # A node checks the cursor itself, when asked directly.
    node = node_pb2_grpc.NodeServiceStub(
        network.channel(Role.ENTERPRISE, CHENGDU_FIRM, network.node_addr("510100"), Role.NODE).channel)
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await node.ListAccesses(access_pb2.NodeAccessesRequest(request=build_access_request(identity, now_ms()),
                                                               cursor="n-1"))
    assert RpcFailure.from_error(e.value).code == "INVALID_ARGUMENT"


async def test_a_node_that_repeats_a_page_or_forges_an_entry_is_not_believed(network: Network):
    """The client checks each page: signed checkpoint, proofs, and that pages go on in order."""
    from xinyi.privacy.access import AccessProofError, verify_node_accesses

    await seed(network, "510100", [refused_query(i, reason_bytes=10) for i in range(30)])
    enterprise = network.enterprise()
    directory = await enterprise.directory()
    stub = node_pb2_grpc.NodeServiceStub(
        network.channel(Role.ENTERPRISE, CHENGDU_FIRM, network.node_addr("510100"), Role.NODE).channel)
    identity = network.identity(Role.ENTERPRISE, CHENGDU_FIRM)
    first = (await stub.ListAccesses(access_pb2.NodeAccessesRequest(
        request=build_access_request(identity, now_ms()), page_size=10))).accesses
    ok = verify_node_accesses(first, directory, CHENGDU_FIRM, newest_first=True)
    assert len(ok) == 10
    with pytest.raises(AccessProofError, match="out of order"):  # the same page again, as if it were the next
        verify_node_accesses(first, directory, CHENGDU_FIRM, newest_first=True, after=ok[-1].index)
    forged = access_pb2.NodeAccesses()
    forged.CopyFrom(first)
    forged.entries[3].leaf_input = forged.entries[3].leaf_input.replace(b"x", b"y")
    with pytest.raises(AccessProofError, match="not in the log"):
        verify_node_accesses(forged, directory, CHENGDU_FIRM, newest_first=True)
    hidden = access_pb2.NodeAccesses()
    hidden.CopyFrom(first)
    hidden.entries[3].leaf_hash = os.urandom(32)  # "withheld", with a hash that is not the entry's
    hidden.entries[3].withheld_bytes = 5_000_000
    hidden.entries[3].leaf_input = b""
    with pytest.raises(AccessProofError, match="not in the log"):
        verify_node_accesses(hidden, directory, CHENGDU_FIRM, newest_first=True)


# --- the index: a page is a range scan, however many entries -------------------------------------
def _rows(n: int, start: int = 0) -> list[dict]:
    """Audit rows for the store, most about other firms, every hundredth about the Chengdu firm."""
    out = []
    for i in range(start, start + n):
        uscc = CHENGDU_FIRM if i % 100 == 0 else SHANGHAI_FIRM
        record = refused_query(i, uscc, reason_bytes=20).to_record(i, b"")
        leaf = record.SerializeToString(deterministic=True)
        out.append({"idx": i, "leaf_input": leaf, "leaf_hash": os.urandom(32), "at_ms": record.at_ms,
                    "caller_id": BANK, "action": "query", "uscc": uscc, "decision": "deny", "request_hash": record.request_hash})
    return out


def _plan(store: NodeStore, run) -> str:
    """The database's plan for the statement `run` executes."""
    seen = []
    listener = lambda conn, cursor, statement, parameters, context, many: seen.append((statement, parameters))  # noqa: E731
    event.listen(store.engine, "before_cursor_execute", listener)
    try:
        run()
    finally:
        event.remove(store.engine, "before_cursor_execute", listener)
    statement, parameters = seen[-1]
    with store.engine.connect() as conn:
        if store.engine.dialect.name == "sqlite":
            return " | ".join(str(row[-1]) for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters))
        conn.execute(text("SET enable_seqscan = off"))  # a small table would be scanned anyway
        return " | ".join(row[0] for row in conn.exec_driver_sql(f"EXPLAIN {statement}", parameters))


def test_an_enterprises_page_is_read_through_the_uscc_idx_index_without_a_sort(db_url: str):
    store = NodeStore(db_url)
    store.create_schema()
    store.append_audit_batch(_rows(20_000))
    if store.engine.dialect.name == "postgresql":
        with store.engine.begin() as conn:
            conn.execute(text("ANALYZE audit_log"))
    for newest_first in (True, False):
        page = lambda: store.audit_sizes(uscc=CHENGDU_FIRM, start=0, end=16_000, limit=101, newest_first=newest_first)  # noqa: E731
        plan = _plan(store, page)
        assert "ix_audit_log_uscc_idx" in plan and "TEMP B-TREE" not in plan and "Sort" not in plan, plan
        got = [i for i, _ in page()]
        assert got == (list(range(15_900, -1, -100))[:101] if newest_first else list(range(0, 16_000, 100))[:101])
    assert store.count_audit(uscc=CHENGDU_FIRM, end=16_000) == 160
    rows = store.find_audit(uscc=CHENGDU_FIRM, start=1000, end=2000, limit=5, newest_first=True)
    assert [r.index for r in rows] == [1900, 1800, 1700, 1600, 1500]
    store.close()


async def test_the_cli_shows_the_newest_by_default_and_follows_every_page_with_all(network: Network, tmp_path):
    import json

    from test_cli import xinyi

    await seed(network, "510100", [refused_query(i, reason_bytes=10) for i in range(250)])
    enterprise = str(network.identity(Role.ENTERPRISE, CHENGDU_FIRM).save(tmp_path / "ids"))
    base = ["access", "list", "--identity", enterprise, "--registry", network.registry_addr]
    code, out, err = await xinyi(*base, "--json")
    listing = json.loads(out)
    assert code == 0, err
    assert len(listing["accesses"]) == 100 and listing["complete"] is False and listing["order"] == "newest first"
    assert listing["unverified_nodes"] == {}
    code, out, err = await xinyi(*base, "--all", "--oldest-first", "--json")
    listing = json.loads(out)
    assert code == 0 and listing["complete"] is True
    assert listing["totals"]["510100"] == len([a for a in listing["accesses"] if a["node"] == "510100"])
    seeded = [a["index"] for a in listing["accesses"] if a["node"] == "510100" and a["reason"].startswith("CONSENT_NOT_FOUND")]
    assert len(seeded) == 250 and seeded == sorted(seeded)
    code, out, err = await xinyi(*base, "--limit", 5)
    assert code == 0 and len(out.strip().splitlines()) == 1 + 5 and "--all" in err
    code, _, err = await xinyi(*base, "--limit", 0)
    assert code == 2 and "--limit" in err
