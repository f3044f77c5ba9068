"""The federated query path end to end, through real servers on loopback, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio

import pytest
from harness import BANK, CHENGDU_FIRM, MIANYANG_FIRM, Network

from xinyi.clock import now_ms
from xinyi.crypto.envelope import body_hash, sign
from xinyi.crypto.identity import Principal, Role
from xinyi.crypto.sealing import seal_to
from xinyi.query import AnswerError, UnlistedKey, build_query, open_answer
from xinyi.v1 import audit_pb2, envelope_pb2, query_pb2, registry_pb2, registry_pb2_grpc


async def test_bank_query_through_registry_returns_verified_answers_from_city_and_province(network: Network):
    consent = await network.grant()
    result = await network.bank().query(CHENGDU_FIRM, ["registration", "tax", "judicial"], "credit_assessment", consent)

    by_node = {n.node: n for n in result.nodes}
    assert list(by_node) == ["510100", "510000"]  # city, then province; Shanghai is not asked
    chengdu, sichuan = by_node["510100"], by_node["510000"]
    assert chengdu.status == "ok" and chengdu.verified
    assert sorted(r["category"] for r in chengdu.records) == ["judicial", "registration"]
    reg = next(r for r in chengdu.records if r["category"] == "registration")
    assert reg["name"] == "成都锦江测试科技有限公司" and reg["source"] == "成都市市场监督管理局" and reg["as_of"] == "2026-06-30"
    assert sichuan.status == "ok" and sichuan.verified
    assert [r["period"] for r in sichuan.records] == ["2026-05", "2026-04"]  # newest first
    assert all(r["category"] == "tax" for r in sichuan.records)


async def test_answers_carry_only_the_categories_asked(network: Network):
    consent = await network.grant()
    result = await network.bank().query(CHENGDU_FIRM, ["tax"], "credit_assessment", consent)
    by_node = {n.node: n for n in result.nodes}
    assert by_node["510100"].status == "no_data" and by_node["510100"].verified and by_node["510100"].records == []
    assert {r["category"] for r in by_node["510000"].records} == {"tax"}


async def test_routing_reaches_nodes_that_declared_records_outside_their_area(network: Network):
    # Mianyang (510700) has no city node: the province answers, and Shanghai, which declared
    # holding a penalty record for this firm, is asked too.
    consent = await network.grant(MIANYANG_FIRM, categories=("tax", "admin_penalty"))
    result = await network.bank().query(MIANYANG_FIRM, ["tax", "admin_penalty"], "credit_assessment", consent)
    by_node = {n.node: n for n in result.nodes}
    assert list(by_node) == ["510000", "310000"]
    assert [r["category"] for r in by_node["510000"].records] == ["tax"]
    assert [r["category"] for r in by_node["310000"].records] == ["admin_penalty"]
    assert all(n.verified for n in result.nodes)


async def test_one_node_down_is_reported_as_unavailable_and_does_not_fail_the_query(network: Network):
    consent = await network.grant()
    await network.nodes["510000"].server.stop(0)
    result = await network.bank().query(CHENGDU_FIRM, ["registration", "tax"], "credit_assessment", consent)
    by_node = {n.node: n for n in result.nodes}
    assert by_node["510000"].status == "unavailable" and not by_node["510000"].verified
    assert by_node["510100"].status == "ok" and by_node["510100"].verified


async def test_a_slow_node_times_out_under_its_own_deadline_while_the_others_answer(network: Network, monkeypatch):
    consent = await network.grant()
    store = network.nodes["510000"].store
    original = store.fetch_records

    def slow_disk(*args, **kwargs):  # a failing disk is outside the product: simulated
        import time

        time.sleep(6.0)
        return original(*args, **kwargs)

    monkeypatch.setattr(store, "fetch_records", slow_disk)
    started = asyncio.get_running_loop().time()
    # 2 s leaves the healthy node room on a loaded CI machine with PostgreSQL; the slow one needs 6 s
    result = await network.bank().query(CHENGDU_FIRM, ["registration", "tax"], "credit_assessment", consent, per_node_timeout_ms=2000)
    elapsed = asyncio.get_running_loop().time() - started
    by_node = {n.node: n for n in result.nodes}
    assert by_node["510000"].status == "timeout"
    assert by_node["510100"].status == "ok" and by_node["510100"].verified
    assert elapsed < 5.0  # the slow node (6 s) did not hold up the answer


async def test_the_registry_cannot_read_or_alter_answers(network: Network):
    """What the registry relays is sealed to the bank and signed by the node: opening it with any
    other key fails, and an altered byte or a swapped answer is caught by the bank."""
    consent = await network.grant()
    bank_id = network.identity(Role.BANK, BANK)
    envelope, key = build_query(bank_id, uscc=CHENGDU_FIRM, categories=["registration", "tax"],
                                purpose="credit_assessment", consent_id=consent, now_ms=now_ms())
    stub = registry_pb2_grpc.RegistryServiceStub(network.bank().channel)
    response = await stub.RouteQuery(registry_pb2.RouteQueryRequest(query=envelope))
    directory = await network.bank().directory()
    results = {r.node_id: r for r in response.results}
    rhash = body_hash(envelope.body)
    common = dict(request_hash=rhash, uscc=CHENGDU_FIRM, trust=bank_id.trust())

    opened = open_answer(results["510100"].sealed_answer, key, expected_node="510100",
                         node_signing_cert=directory.nodes["510100"].signing_cert, **common)
    assert {r["category"] for r in opened.records} == {"registration"}
    assert b"registration" not in results["510100"].sealed_answer  # ciphertext, not plaintext

    from xinyi.crypto.sealing import AnswerKey

    with pytest.raises(AnswerError, match="does not open"):
        open_answer(results["510100"].sealed_answer, AnswerKey.generate(), expected_node="510100",
                    node_signing_cert=directory.nodes["510100"].signing_cert, **common)
    tampered = bytearray(results["510100"].sealed_answer)
    tampered[-5] ^= 0x01
    with pytest.raises(AnswerError):
        open_answer(bytes(tampered), key, expected_node="510100",
                    node_signing_cert=directory.nodes["510100"].signing_cert, **common)
    # The Sichuan node's answer passed off as Chengdu's: the signer does not match.
    with pytest.raises(AnswerError, match="signed by node/510000"):
        open_answer(results["510000"].sealed_answer, key, expected_node="510100",
                    node_signing_cert=directory.nodes["510100"].signing_cert, **common)
    # An answer to another query cannot be replayed as this one's.
    with pytest.raises(AnswerError, match="another request"):
        open_answer(results["510100"].sealed_answer, key, expected_node="510100",
                    node_signing_cert=directory.nodes["510100"].signing_cert,
                    **{**common, "request_hash": b"\x00" * 32})


async def test_an_answer_signed_by_a_second_key_in_the_nodes_name_is_refused(network: Network):
    """The root issued node/510100 twice (same name, another key): an answer signed with the key
    the directory does not list is refused, though its certificate chains to the root and names
    the right node."""
    consent = await network.grant()
    bank_id = network.identity(Role.BANK, BANK)
    envelope, key = build_query(bank_id, uscc=CHENGDU_FIRM, categories=["registration"],
                                purpose="credit_assessment", consent_id=consent, now_ms=now_ms())
    stub = registry_pb2_grpc.RegistryServiceStub(network.bank().channel)
    response = await stub.RouteQuery(registry_pb2.RouteQueryRequest(query=envelope))
    listed = (await network.bank().directory()).nodes["510100"].signing_cert
    genuine = envelope_pb2.SignedEnvelope.FromString(
        key.open(next(r for r in response.results if r.node_id == "510100").sealed_answer))
    second = network.root.issue(Principal(Role.NODE, "510100"))
    assert second.signing_cert_der != listed
    answer = query_pb2.AnswerBody.FromString(genuine.body)
    resealed = seal_to(key.public_bytes, sign(second, answer).SerializeToString())
    common = dict(expected_node="510100", request_hash=body_hash(envelope.body), uscc=CHENGDU_FIRM,
                  trust=bank_id.trust())

    with pytest.raises(UnlistedKey, match="signed with a key the directory does not list for it"):
        open_answer(resealed, key, node_signing_cert=listed, **common)
    # The same answer opens for a directory listing the second key: the key alone was refused.
    assert open_answer(resealed, key, node_signing_cert=second.signing_cert_der, **common).records


async def test_directory_is_signed_versioned_and_lists_every_node(network: Network):
    directory = await network.bank().directory()
    assert sorted(directory.nodes) == ["310000", "510000", "510100"]
    assert directory.registry_id == "national"
    assert directory.nodes["510100"].endpoint == network.node_addr("510100")
    before = directory.version
    await network.start_node("510700")
    after = await network.bank().directory(refresh=True)
    assert after.version == before + 1 and "510700" in after.nodes


async def test_bank_can_query_one_node_directly(network: Network):
    consent = await network.grant()
    view = await network.bank().query_node(network.node_addr("510100"), "510100", CHENGDU_FIRM, ["registration"],
                                           "credit_assessment", consent)
    assert view.verified and view.status == "ok" and view.records[0]["category"] == "registration"


async def test_guarantor_queries_for_guarantee(network: Network):
    from harness import GUARANTOR

    consent = await network.grant(grantee=GUARANTOR, purpose="guarantee", categories=("tax",))
    result = await network.bank(GUARANTOR, Role.GUARANTOR).query(CHENGDU_FIRM, ["tax"], "guarantee", consent)
    assert {n.node: n.status for n in result.nodes} == {"510100": "no_data", "510000": "ok"}


async def test_every_decision_is_audited_on_the_node_and_the_registry(network: Network):
    consent = await network.grant()
    result = await network.bank().query(CHENGDU_FIRM, ["registration"], "credit_assessment", consent)
    node_log = await network.auditor(network.node_addr("510100"), Role.NODE).records()
    reg_log = await network.auditor(network.registry_addr, Role.REGISTRY).records()

    query = [r for r in node_log if r.action == "query"]
    assert len(query) == 1
    q = query[0]
    assert (q.caller_role, q.caller_id, q.relayed_by) == ("bank", BANK, "national")
    assert (q.uscc, list(q.categories), q.purpose, q.consent_id) == (CHENGDU_FIRM, ["registration"], "credit_assessment", consent)
    assert q.decision == audit_pb2.DECISION_ALLOW and q.request_hash == result.request_hash
    assert "banks-may-query-for-credit-assessment-or-loan-monitoring" in q.policy_ids
    assert len(q.trace_id) == 32

    routed = [r for r in reg_log if r.action == "route_query"]
    assert len(routed) == 1 and routed[0].request_hash == result.request_hash
    assert routed[0].detail == "510100=ok 510000=no_data"
    assert [r.action for r in reg_log if r.action.endswith("consent")] == ["grant_consent"]
    # One trace follows the query from the registry to the node.
    assert routed[0].trace_id == q.trace_id


async def test_consent_reaches_a_node_that_was_offline(network: Network, tmp_path):
    """A node that registers after a consent was granted receives it with the registration."""
    consent = await network.grant()
    node = await network.start_node("510104")  # a district node for the firm's own area
    stored = await asyncio.to_thread(node.store.get_consent, consent)
    assert stored is not None and stored.uscc == CHENGDU_FIRM
