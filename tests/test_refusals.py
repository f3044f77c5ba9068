"""Every refusal on the query path, through the real servers: the fitting gRPC status, a message
naming the field and reason (with google.rpc details), and nothing stored but the audit record."""

from __future__ import annotations

import asyncio
import os

import grpc
import pytest
from harness import BANK, CHENGDU_FIRM, OTHER_BANK, SHANGHAI_FIRM, XINJIANG_FIRM, Network

from xinyi.clock import DAY_MS, now_ms
from xinyi.crypto.envelope import body_hash, sign
from xinyi.crypto.identity import Principal, Role
from xinyi.crypto.pki import RootCA
from xinyi.privacy.consent import build_change
from xinyi.query import build_query, open_answer
from xinyi.rpc.status import RpcFailure
from xinyi.v1 import (
    audit_pb2,
    audit_pb2_grpc,
    consent_pb2,
    consent_pb2_grpc,
    node_pb2,
    node_pb2_grpc,
    query_pb2,
    registry_pb2,
    registry_pb2_grpc,
)

ONCE_DETAIL = dict(detail_level=consent_pb2.DETAIL_LEVEL_DETAIL, history_months=12, fetch_type=consent_pb2.FETCH_TYPE_ONCE)


def body(**over) -> query_pb2.QueryBody:
    fields = dict(uscc=CHENGDU_FIRM, categories=["tax"], purpose="credit_assessment", consent_id="a" * 32,
                  nonce=os.urandom(16), issued_at_ms=now_ms(), answer_key=os.urandom(32))
    fields.update(over)
    return query_pb2.QueryBody(**fields)


async def route(net: Network, envelope, caller: str = BANK, role: Role = Role.BANK) -> query_pb2.QueryResponse:
    channel = net.channel(role, caller, net.registry_addr, Role.REGISTRY).channel
    return await registry_pb2_grpc.RegistryServiceStub(channel).RouteQuery(registry_pb2.RouteQueryRequest(query=envelope))


async def ask_node(net: Network, node_id: str, envelope, caller: str = BANK, role: Role = Role.BANK) -> query_pb2.NodeResult:
    channel = net.channel(role, caller, net.node_addr(node_id), Principal(Role.NODE, node_id)).channel
    return await node_pb2_grpc.NodeServiceStub(channel).Query(query_pb2.QueryRequest(query=envelope))


async def refused(call) -> RpcFailure:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    failure = RpcFailure.from_error(info.value)
    assert "Traceback" not in failure.message and "File \"" not in failure.message
    # the reason is a value of the contract's ErrorReason (a transport refusal sends none)
    assert not failure.reason or failure.error_reason.name == failure.reason, failure.reason
    return failure


class Stored:
    """Counts of what each store holds, to prove a refusal stored nothing but its audit record."""

    def __init__(self, net: Network) -> None:
        self.net = net

    async def snapshot(self) -> dict:
        def counts():
            out = {}
            for name, store in [("registry", self.net.registry.store), *((n, s.store) for n, s in self.net.nodes.items())]:
                out[name] = {
                    "audit": store.audit_log_size(),
                    "consents": len(store.consents_for()),
                    "records": store.count_records() if hasattr(store, "count_records") else 0,
                }
            return out

        return await asyncio.to_thread(counts)

    async def assert_only_audit(self, before: dict, where: str, expect_reason: str) -> None:
        after = await self.snapshot()
        for name in before:
            added = after[name]["audit"] - before[name]["audit"]
            assert after[name]["consents"] == before[name]["consents"], name
            assert after[name]["records"] == before[name]["records"], name
            assert added == (1 if name == where else 0), (name, added)
        store = self.net.registry.store if where == "registry" else self.net.nodes[where].store
        size = await asyncio.to_thread(store.audit_log_size)
        last = (await asyncio.to_thread(store.audit_entries, size - 1, size))[0].record()
        assert last.decision == audit_pb2.DECISION_DENY and expect_reason in last.reason, last


@pytest.fixture
def stored(network: Network) -> Stored:
    return Stored(network)


def bank_identity(net: Network, bank: str = BANK):
    return net.identity(Role.BANK, bank)


# --- validation at the registry ------------------------------------------------------------------
@pytest.mark.parametrize(
    "uscc, says",
    [
        (CHENGDU_FIRM[:17], "has 17 characters; expected 18"),
        (CHENGDU_FIRM[:17] + "I", "outside the USCC alphabet"),
        (CHENGDU_FIRM[:17] + ("0" if CHENGDU_FIRM[17] != "0" else "1"), "check character"),
    ],
    ids=["length", "alphabet", "check-character"],
)
async def test_invalid_uscc(network: Network, stored: Stored, uscc: str, says: str):
    before = await stored.snapshot()
    f = await refused(route(network, sign(bank_identity(network), body(uscc=uscc))))
    assert f.code == "INVALID_ARGUMENT" and f.reason == "INVALID_USCC"
    assert f.fields[0][0] == "query.uscc" and says in f.fields[0][1]
    assert f.message.startswith("query.uscc:")
    await stored.assert_only_audit(before, "registry", "INVALID_USCC")


async def test_area_code_no_node_serves(network: Network, stored: Stored):
    before = await stored.snapshot()
    f = await refused(route(network, sign(bank_identity(network), body(uscc=XINJIANG_FIRM))))
    assert f.code == "FAILED_PRECONDITION" and f.reason == "NO_NODE_FOR_AREA"
    assert "650100" in f.message and f.message.startswith("query.uscc:")
    await stored.assert_only_audit(before, "registry", "NO_NODE_FOR_AREA")


@pytest.mark.parametrize(
    "over, field, reason",
    [
        ({"categories": ["tax", "horoscope"]}, "query.categories", "UNKNOWN_CATEGORY"),
        ({"categories": []}, "query.categories", "INVALID_FIELD"),
        ({"purpose": "curiosity"}, "query.purpose", "UNKNOWN_PURPOSE"),
        ({"consent_id": "not-a-consent"}, "query.consent_id", "INVALID_FIELD"),
        ({"answer_key": b"short"}, "query.answer_key", "INVALID_FIELD"),
        ({"nonce": b"1234"}, "query.nonce", "INVALID_FIELD"),
    ],
    ids=["unknown-category", "no-category", "unknown-purpose", "malformed-consent-id", "bad-answer-key", "short-nonce"],
)
async def test_malformed_query_fields(network: Network, stored: Stored, over, field, reason):
    before = await stored.snapshot()
    f = await refused(route(network, sign(bank_identity(network), body(**over))))
    assert f.code == "INVALID_ARGUMENT" and f.reason == reason
    assert f.fields[0][0] == field
    await stored.assert_only_audit(before, "registry", reason)


async def test_no_consent_given(network: Network, stored: Stored):
    before = await stored.snapshot()
    f = await refused(route(network, sign(bank_identity(network), body(consent_id=""))))
    assert f.code == "PERMISSION_DENIED" and f.reason == "CONSENT_MISSING" and f.fields[0][0] == "query.consent_id"
    await stored.assert_only_audit(before, "registry", "CONSENT_MISSING")


async def test_purpose_not_allowed_for_the_role_names_the_policy(network: Network, stored: Stored):
    before = await stored.snapshot()
    f = await refused(route(network, sign(bank_identity(network), body(purpose="guarantee"))))
    assert f.code == "PERMISSION_DENIED" and f.reason == "POLICY_DENIED"
    assert "purpose-must-fit-role" in f.policy_ids and "purpose-must-fit-role" in f.message
    await stored.assert_only_audit(before, "registry", "purpose-must-fit-role")


# --- signatures, replay, time, size --------------------------------------------------------------
async def test_altered_body_fails_the_signature(network: Network, stored: Stored):
    envelope = sign(bank_identity(network), body())
    altered = query_pb2.QueryBody.FromString(envelope.body)
    altered.uscc = SHANGHAI_FIRM
    envelope.body = altered.SerializeToString(deterministic=True)
    before = await stored.snapshot()
    f = await refused(route(network, envelope))
    assert f.code == "UNAUTHENTICATED" and f.reason == "BAD_SIGNATURE" and f.fields[0][0] == "query.signature"
    await stored.assert_only_audit(before, "registry", "BAD_SIGNATURE")
    # The node checks for itself too: the same envelope sent directly is refused there.
    f = await refused(ask_node(network, "510100", envelope))
    assert f.code == "UNAUTHENTICATED" and f.fields[0][0] == "query.signature"


async def test_signature_by_a_key_from_another_ca_is_refused(network: Network, stored: Stored):
    impostor = RootCA.create().issue(Principal(Role.BANK, BANK))
    envelope = sign(impostor, body())
    before = await stored.snapshot()
    f = await refused(route(network, envelope))
    assert f.code == "UNAUTHENTICATED" and f.reason == "BAD_CERTIFICATE"
    assert f.fields[0][0] == "query.signer_cert" and "national root" in f.message
    await stored.assert_only_audit(before, "registry", "BAD_CERTIFICATE")


async def test_a_query_signed_by_a_non_bank_is_refused(network: Network):
    envelope = sign(network.identity(Role.ENTERPRISE, CHENGDU_FIRM), body())
    f = await refused(route(network, envelope, CHENGDU_FIRM, Role.ENTERPRISE))
    assert f.code == "UNAUTHENTICATED" and f.reason == "WRONG_SIGNER_ROLE"


async def test_a_bank_cannot_send_another_banks_signed_query(network: Network, stored: Stored):
    envelope = sign(bank_identity(network, OTHER_BANK), body())
    before = await stored.snapshot()
    f = await refused(route(network, envelope, BANK))
    assert f.code == "UNAUTHENTICATED" and f.reason == "SIGNER_IS_NOT_CALLER"
    await stored.assert_only_audit(before, "registry", "SIGNER_IS_NOT_CALLER")
    # Nor straight to a node: only the registry relays others' queries.
    before = await stored.snapshot()
    f = await refused(ask_node(network, "510100", envelope, BANK))
    assert f.code == "UNAUTHENTICATED" and f.reason == "RELAY_NOT_ALLOWED"
    await stored.assert_only_audit(before, "510100", "RELAY_NOT_ALLOWED")


async def test_replayed_nonce_is_refused_by_the_registry_and_by_the_node(network: Network, stored: Stored):
    consent = await network.grant()
    first_body = body(consent_id=consent)
    envelope = sign(bank_identity(network), first_body)
    first = await route(network, envelope)
    assert [r.outcome for r in first.results] == [query_pb2.NODE_OUTCOME_NO_DATA, query_pb2.NODE_OUTCOME_OK]
    # Another query under the same nonce is a replay.
    before = await stored.snapshot()
    other = sign(bank_identity(network), body(consent_id=consent, nonce=first_body.nonce, categories=["registration"]))
    f = await refused(route(network, other))
    assert f.code == "INVALID_ARGUMENT" and f.reason == "REPLAYED_NONCE" and f.fields[0][0] == "query.nonce"
    await stored.assert_only_audit(before, "registry", "REPLAYED_NONCE")
    # The very same query again (a client's retry after a lost answer) is told it was received, and when.
    before = await stored.snapshot()
    f = await refused(route(network, envelope))
    assert f.code == "ALREADY_EXISTS" and f.reason == "QUERY_ALREADY_RECEIVED", f
    facts = dict(f.metadata)
    assert facts["request_hash"] == first.request_hash.hex() and int(facts["received_at_ms"]) <= now_ms()
    assert "already received at" in f.message and "sign a new query" in f.message
    await stored.assert_only_audit(before, "registry", "QUERY_ALREADY_RECEIVED")
    # The node keeps its own record: the registry replaying the query it relayed is refused too.
    before = await stored.snapshot()
    f = await refused(ask_node(network, "510000", envelope, "national", Role.REGISTRY))
    assert f.code == "INVALID_ARGUMENT" and f.reason == "REPLAYED_NONCE"
    await stored.assert_only_audit(before, "510000", "REPLAYED_NONCE")


@pytest.mark.parametrize("skew_ms, says", [(-6 * 60_000, "behind"), (6 * 60_000, "ahead of")], ids=["stale", "future"])
async def test_timestamp_outside_five_minutes(network: Network, stored: Stored, skew_ms, says):
    before = await stored.snapshot()
    f = await refused(route(network, sign(bank_identity(network), body(issued_at_ms=now_ms() + skew_ms))))
    assert f.code == "INVALID_ARGUMENT" and f.reason == "STALE_TIMESTAMP"
    assert f.fields[0][0] == "query.issued_at_ms" and says in f.message
    await stored.assert_only_audit(before, "registry", "STALE_TIMESTAMP")


async def test_oversized_signed_body_is_refused_and_audited(network: Network, stored: Stored):
    before = await stored.snapshot()
    f = await refused(route(network, sign(bank_identity(network), body(consent_id="x" * 20000))))
    assert f.code == "INVALID_ARGUMENT" and f.reason == "TOO_LARGE" and f.fields[0][0] == "query.body"
    assert "16384" in f.message
    await stored.assert_only_audit(before, "registry", "TOO_LARGE")


async def test_oversized_message_is_refused_by_the_transport(network: Network, stored: Stored):
    envelope = sign(bank_identity(network), body())
    envelope.signer_cert = b"\0" * (5 * 1024 * 1024)
    before = await stored.snapshot()
    f = await refused(route(network, envelope))
    assert f.code == "RESOURCE_EXHAUSTED"
    assert await stored.snapshot() == before  # refused before any handler ran


# --- consent -------------------------------------------------------------------------------------
async def test_unknown_consent(network: Network, stored: Stored):
    await _consent_refused(network, stored, consent_id="b" * 32, reason="CONSENT_NOT_FOUND")


async def test_consent_for_another_bank(network: Network, stored: Stored):
    # Refused as if unknown: the bank learns neither whose consent it is nor who gave it.
    consent = await network.grant(grantee=OTHER_BANK)
    f = await _consent_refused(network, stored, consent_id=consent, reason="CONSENT_NOT_FOUND")
    assert OTHER_BANK not in f.message and CHENGDU_FIRM not in f.message
    unknown = await refused(ask_node(network, "510000", sign(bank_identity(network), body(consent_id="b" * 32))))
    assert f.message == unknown.message.replace("b" * 32, consent) and f.fields == tuple(
        (field, text.replace("b" * 32, consent)) for field, text in unknown.fields)
    # The auditors, though, see what it was.
    store = network.nodes["510000"].store
    size = await asyncio.to_thread(store.audit_log_size)
    entries = await asyncio.to_thread(store.audit_entries, size - 2, size)
    assert "[CONSENT_GRANTEE_MISMATCH]" in entries[0].record().reason
    assert "MISMATCH" not in entries[1].record().reason


async def test_consent_of_another_enterprise(network: Network, stored: Stored):
    # The Mianyang firm's consent is known to the Sichuan node (its province), not to Chengdu's.
    from harness import MIANYANG_FIRM

    consent = await network.grant(MIANYANG_FIRM, categories=("tax",))
    f = await _consent_refused(network, stored, consent_id=consent, reason="CONSENT_SUBJECT_MISMATCH",
                               elsewhere={"510100": "CONSENT_NOT_FOUND"})
    assert MIANYANG_FIRM not in f.message  # its own consent, but the enterprise is not named


async def test_consent_not_covering_a_category_or_the_purpose(network: Network, stored: Stored):
    consent = await network.grant(categories=("registration",))
    f = await _consent_refused(network, stored, consent_id=consent, reason="CONSENT_SCOPE")
    assert "tax" in f.message
    consent = await network.grant(purpose="guarantee", grantee=BANK, categories=("tax",))
    await _consent_refused(network, stored, consent_id=consent, reason="CONSENT_PURPOSE_MISMATCH")


async def test_a_query_asking_more_categories_than_its_consent_covers_is_refused(network: Network, stored: Stored):
    """Two categories asked under a consent covering one: refused whole, not answered for the
    covered one, at every node."""
    consent = await network.grant(categories=("registration",))
    asked = body(consent_id=consent, categories=["registration", "tax"])
    response = await route(network, sign(bank_identity(network), asked))
    assert [(r.node_id, r.outcome, r.error_reason, r.sealed_answer) for r in response.results] == [
        ("510100", query_pb2.NODE_OUTCOME_DENIED, "CONSENT_SCOPE", b""),
        ("510000", query_pb2.NODE_OUTCOME_DENIED, "CONSENT_SCOPE", b"")]
    before = await stored.snapshot()
    f = await refused(ask_node(network, "510100", sign(bank_identity(network), body(
        consent_id=consent, categories=["registration", "tax"]))))
    assert (f.code, f.reason, f.fields[0][0]) == ("PERMISSION_DENIED", "CONSENT_SCOPE", "consent_id")
    assert f.message == f"consent_id: consent {consent} does not cover tax", f.message
    await stored.assert_only_audit(before, "510100", "CONSENT_SCOPE")


async def _answered(net: Network, consent: str) -> list[str]:
    """The categories of the Chengdu node's opened answer to a fresh query under `consent`."""
    identity = bank_identity(net)
    envelope, key = build_query(identity, uscc=CHENGDU_FIRM, categories=["registration"], purpose="credit_assessment",
                                consent_id=consent, now_ms=now_ms())
    result = await ask_node(net, "510100", envelope)
    assert result.outcome == query_pb2.NODE_OUTCOME_OK, result
    directory = await net.bank().directory()
    opened = open_answer(result.sealed_answer, key, expected_node="510100", request_hash=body_hash(envelope.body),
                         node_signing_cert=directory.nodes["510100"].signing_cert, uscc=CHENGDU_FIRM,
                         trust=identity.trust())
    return [r["category"] for r in opened.records]


async def test_a_paused_consent_refuses_queries_until_resumed(network: Network, stored: Stored):
    consent = await network.grant(categories=("registration",))  # one fetch: spent by the answer after resume
    await network.enterprise().change(consent, "pause")
    before = await stored.snapshot()
    f = await refused(ask_node(network, "510100", sign(bank_identity(network), body(
        consent_id=consent, categories=["registration"]))))
    assert (f.code, f.reason, f.fields[0][0]) == ("PERMISSION_DENIED", "CONSENT_PAUSED", "consent_id")
    assert f.message == f"consent_id: consent {consent} is paused", f.message
    await stored.assert_only_audit(before, "510100", "CONSENT_PAUSED")
    await network.enterprise().change(consent, "resume")
    assert await _answered(network, consent) == ["registration"]


async def test_revoked_consent(network: Network, stored: Stored):
    consent = await network.grant()
    record = await network.enterprise().revoke(consent)
    assert record.status == consent_pb2.CONSENT_STATUS_REVOKED
    assert sorted(record.delivered_to) == ["510000", "510100"]
    await _consent_refused(network, stored, consent_id=consent, reason="CONSENT_REVOKED")


async def test_expired_consent(network: Network, stored: Stored):
    # A consent that ran out yesterday, delivered to the nodes as the registry would. It is signed
    # now: the enterprise's certificate (issued for this test run) did not exist ten days ago, and
    # a node checks a consent's signature as of its signing.
    from xinyi.privacy.consent import consent_id_for

    start = now_ms() - 10 * DAY_MS
    consent_body = consent_pb2.ConsentBody(uscc=CHENGDU_FIRM, grantee=BANK, purpose="credit_assessment",
                                           categories=["tax"], valid_from_ms=start, valid_until_ms=start + 9 * DAY_MS,
                                           nonce=os.urandom(16), issued_at_ms=now_ms(), **ONCE_DETAIL)
    envelope = sign(network.identity(Role.ENTERPRISE, CHENGDU_FIRM), consent_body)
    for node in ("510100", "510000"):
        channel = network.channel(Role.REGISTRY, "national", network.node_addr(node), Principal(Role.NODE, node)).channel
        reply = await node_pb2_grpc.NodeServiceStub(channel).DeliverConsent(
            node_pb2.DeliverConsentRequest(consent=consent_pb2.ConsentRecord(consent=envelope)))
        assert reply.status == consent_pb2.CONSENT_STATUS_EXPIRED
    await _consent_refused(network, stored, consent_id=consent_id_for(envelope.body), reason="CONSENT_EXPIRED")


async def _consent_refused(net: Network, stored: Stored, *, consent_id: str, reason: str,
                           elsewhere: dict[str, str] | None = None) -> RpcFailure:
    """Through the registry each node refuses (with `reason`, or as `elsewhere` says for that
    node); straight to the Sichuan node, the same refusal with its field and audit record."""
    response = await route(net, sign(bank_identity(net), body(consent_id=consent_id)))
    assert [r.node_id for r in response.results] == ["510100", "510000"]
    for r in response.results:
        assert r.outcome == query_pb2.NODE_OUTCOME_DENIED and not r.sealed_answer
        expected = (elsewhere or {}).get(r.node_id, reason)
        assert (r.error_code, r.error_reason) == ("PERMISSION_DENIED", expected)
        assert r.error_message.startswith("consent_id:")
    before = await stored.snapshot()
    f = await refused(ask_node(net, "510000", sign(bank_identity(net), body(consent_id=consent_id))))
    assert f.code == "PERMISSION_DENIED" and f.reason == reason and f.fields[0][0] == "consent_id"
    await stored.assert_only_audit(before, "510000", reason)
    return f


# --- who may call what ---------------------------------------------------------------------------
async def test_bank_calling_an_auditor_only_rpc(network: Network, stored: Stored):
    for target, expect, where in [(network.node_addr("510100"), Principal(Role.NODE, "510100"), "510100"),
                                  (network.registry_addr, Role.REGISTRY, "registry")]:
        channel = network.channel(Role.BANK, BANK, target, expect).channel
        before = await stored.snapshot()
        f = await refused(audit_pb2_grpc.AuditServiceStub(channel).ListAuditRecords(audit_pb2.ListAuditRecordsRequest()))
        assert f.code == "PERMISSION_DENIED" and "audit-log-is-auditor-only" in f.policy_ids
        await stored.assert_only_audit(before, where, "audit-log-is-auditor-only")


async def test_only_the_registry_delivers_consents_to_nodes(network: Network, stored: Stored):
    consent_env = sign(network.identity(Role.ENTERPRISE, CHENGDU_FIRM), consent_pb2.ConsentBody(
        uscc=CHENGDU_FIRM, grantee=BANK, purpose="credit_assessment", categories=["tax"],
        valid_from_ms=now_ms(), valid_until_ms=now_ms() + DAY_MS, nonce=os.urandom(16), issued_at_ms=now_ms(), **ONCE_DETAIL))
    channel = network.channel(Role.BANK, BANK, network.node_addr("510100"), Principal(Role.NODE, "510100")).channel
    before = await stored.snapshot()
    f = await refused(node_pb2_grpc.NodeServiceStub(channel).DeliverConsent(
        node_pb2.DeliverConsentRequest(consent=consent_pb2.ConsentRecord(consent=consent_env))))
    assert f.code == "PERMISSION_DENIED" and "registry-may-deliver-consents" not in f.policy_ids
    await stored.assert_only_audit(before, "510100", "POLICY_DENIED")


async def test_only_nodes_register_and_only_with_their_own_key(network: Network):
    stub = registry_pb2_grpc.RegistryServiceStub(network.channel(Role.BANK, BANK, network.registry_addr, Role.REGISTRY).channel)
    f = await refused(stub.RegisterNode(registry_pb2.RegisterNodeRequest(endpoint="127.0.0.1:1",
                                                                         signing_cert=bank_identity(network).signing_cert_der)))
    assert f.code == "PERMISSION_DENIED" and "nodes-may-register" not in f.policy_ids
    # Node 510100 passing off Sichuan's signed registration (say, one it recorded) as its own.
    from xinyi.registration import build_registration

    stub = registry_pb2_grpc.RegistryServiceStub(network.channel(Role.NODE, "510100", network.registry_addr, Role.REGISTRY).channel)
    f = await refused(stub.RegisterNode(registry_pb2.RegisterNodeRequest(
        registration=build_registration(network.identity(Role.NODE, "510000"), "127.0.0.1:1", [], now_ms()))))
    assert f.code == "UNAUTHENTICATED" and f.reason == "WRONG_REGISTRATION_SIGNER"
    assert f.fields[0][0] == "registration.signer_cert"
    # ... or the unsigned fields alone, naming Sichuan's key: the registry no longer reads them.
    f = await refused(stub.RegisterNode(registry_pb2.RegisterNodeRequest(
        endpoint="127.0.0.1:1", signing_cert=network.identity(Role.NODE, "510000").signing_cert_der)))
    assert (f.code, f.reason, f.fields[0][0]) == ("INVALID_ARGUMENT", "UNSIGNED_REGISTRATION", "registration")
    directory = await network.bank().directory(refresh=True)
    assert directory.nodes["510100"].endpoint == network.node_addr("510100")  # unchanged


# --- consent management refusals -----------------------------------------------------------------
async def test_enterprise_cannot_grant_for_another_enterprise(network: Network, stored: Stored):
    # Signed with its own key, but naming another enterprise.
    own = network.identity(Role.ENTERPRISE, SHANGHAI_FIRM)
    forged = sign(own, consent_pb2.ConsentBody(uscc=CHENGDU_FIRM, grantee=BANK, purpose="credit_assessment",
                                               categories=["tax"], valid_from_ms=now_ms(), valid_until_ms=now_ms() + DAY_MS,
                                               nonce=os.urandom(16), issued_at_ms=now_ms()))
    stub = consent_pb2_grpc.ConsentServiceStub(network.channel(Role.ENTERPRISE, SHANGHAI_FIRM, network.registry_addr, Role.REGISTRY).channel)
    before = await stored.snapshot()
    f = await refused(stub.GrantConsent(consent_pb2.GrantConsentRequest(consent=forged)))
    assert f.code == "PERMISSION_DENIED" and "no-managing-another-enterprises-consent" in f.policy_ids
    await stored.assert_only_audit(before, "registry", "CONSENT_OF_ANOTHER_ENTERPRISE")
    # Signed by the other enterprise's key (stolen bundle?) but sent by this one: still refused.
    theirs = sign(network.identity(Role.ENTERPRISE, CHENGDU_FIRM), consent_pb2.ConsentBody.FromString(forged.body))
    f = await refused(stub.GrantConsent(consent_pb2.GrantConsentRequest(consent=theirs)))
    assert f.code == "PERMISSION_DENIED"


async def test_enterprise_cannot_revoke_another_enterprises_consent(network: Network, stored: Stored):
    consent = await network.grant()
    other = network.identity(Role.ENTERPRISE, SHANGHAI_FIRM)
    stub = consent_pb2_grpc.ConsentServiceStub(network.channel(Role.ENTERPRISE, SHANGHAI_FIRM, network.registry_addr, Role.REGISTRY).channel)
    revocation = build_change(other, consent, "revoke", now_ms())
    before = await stored.snapshot()
    f = await refused(stub.ChangeConsent(consent_pb2.ChangeConsentRequest(change=revocation)))
    # As if unknown: whose consent it is is not told (the audit log records what it was).
    assert f.code == "NOT_FOUND" and f.reason == "CONSENT_NOT_FOUND" and CHENGDU_FIRM not in f.message
    await stored.assert_only_audit(before, "registry", "CONSENT_OF_ANOTHER_ENTERPRISE")
    status = await network.enterprise().status(consent)
    assert status.status == consent_pb2.CONSENT_STATUS_ACTIVE


@pytest.mark.parametrize(
    "grant, field",
    [
        (dict(grantee=BANK, purpose="credit_assessment", categories=["horoscope"], days=30), "consent.categories"),
        (dict(grantee=BANK, purpose="curiosity", categories=["tax"], days=30), "consent.purpose"),
        (dict(grantee="91440300708461136X", purpose="credit_assessment", categories=["tax"], days=30), "consent.grantee"),
        (dict(grantee=BANK, purpose="credit_assessment", categories=["tax"], days=400), "consent.valid_until_ms"),
    ],
    ids=["unknown-category", "unknown-purpose", "bad-grantee", "too-long"],
)
async def test_invalid_consent_is_refused_at_grant(network: Network, stored: Stored, grant, field):
    before = await stored.snapshot()
    with pytest.raises(Exception) as info:
        await network.enterprise().grant(**grant)
    f = info.value.failure
    assert f.code == "INVALID_ARGUMENT" and f.fields[0][0] == field
    await stored.assert_only_audit(before, "registry", "INVALID_FIELD")


async def test_bank_cannot_grant_consents(network: Network):
    envelope = sign(bank_identity(network), consent_pb2.ConsentBody(uscc=BANK, grantee=OTHER_BANK))
    stub = consent_pb2_grpc.ConsentServiceStub(network.channel(Role.BANK, BANK, network.registry_addr, Role.REGISTRY).channel)
    f = await refused(stub.GrantConsent(consent_pb2.GrantConsentRequest(consent=envelope)))
    assert f.code == "UNAUTHENTICATED" and f.reason == "WRONG_SIGNER_ROLE"


async def test_a_replay_is_refused_even_after_the_node_restarts(network: Network, stored: Stored):
    """The nonce is written with the query's audit entry, in the same durable commit, and read
    back at start: a restarted node still knows it."""
    from node.server import NodeConfig, NodeServer

    consent = await network.grant()
    envelope = sign(bank_identity(network), body(consent_id=consent))
    first = await ask_node(network, "510000", envelope)
    assert first.outcome == query_pb2.NODE_OUTCOME_OK
    old = network.nodes["510000"]
    await old.stop(0)
    restarted = NodeServer(NodeConfig(old.identity, f"127.0.0.1:{old.port}", old.config.db))
    await restarted.start()
    network.nodes["510000"] = restarted
    f = await refused(ask_node(network, "510000", envelope))
    assert f.code == "INVALID_ARGUMENT" and f.reason == "REPLAYED_NONCE"
