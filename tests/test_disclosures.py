"""A denial never names a third party.

A bank using another bank's consent is refused as if the consent were unknown: it is told
neither which institution the consent names nor which enterprise gave it. An enterprise touching
another enterprise's consent is refused as if it were unknown. The auditors, not the caller,
learn what it really was. Through the real servers, every text a caller receives (message,
field descriptions, error details, each node's outcome) is scanned."""

from __future__ import annotations

import os

import pytest
from harness import BANK, CHENGDU_FIRM, MIANYANG_FIRM, OTHER_BANK, SHANGHAI_FIRM, Network

from xinyi.cli.alerts import AlertClient
from xinyi.client import ClientError, _call
from xinyi.clock import now_ms
from xinyi.crypto.envelope import sign
from xinyi.crypto.identity import Principal, Role
from xinyi.privacy.access import build_access_request
from xinyi.rpc.status import RpcFailure
from xinyi.v1 import access_pb2, access_pb2_grpc, consent_pb2, dispute_pb2, dispute_pb2_grpc

A, B = BANK, OTHER_BANK              # bank A holds the consent; bank B tries to use it
E1, E2 = CHENGDU_FIRM, SHANGHAI_FIRM  # E1 gave it; E2 tries to manage it


def _texts(failure: RpcFailure) -> str:
    """Everything a caller reads of a refusal."""
    return " | ".join([failure.code, failure.reason, failure.message,
                       *(f"{field}: {text}" for field, text in failure.fields),
                       *(f"{key}={value}" for key, value in failure.metadata)])


async def _refused(call) -> RpcFailure:
    with pytest.raises(ClientError) as info:
        await call
    return info.value.failure


def _assert_names_none(text: str, *parties: str) -> None:
    for party in parties:
        assert party not in text, f"{party} is named in: {text}"


async def _consents(net: Network) -> dict[str, str]:
    grant = net.enterprise(E1).grant
    return {
        "query": (await grant(A, "credit_assessment", ["registration", "tax"], 30)).consent_id,
        "eligibility": (await grant(A, "policy_matching", ["tax", "social_security", "dishonesty_list"], 30,
                                    detail_level="summary")).consent_id,
        "monitoring": (await grant(A, "loan_monitoring", ["judicial", "admin_penalty"], 90, detail_level="summary",
                                   fetch_type="periodic", max_fetches=4, fetch_period="month")).consent_id,
    }


async def test_a_bank_using_another_banks_consent_learns_neither_the_bank_nor_the_enterprise(network: Network):
    consents = await _consents(network)
    bank_b = network.bank(B)
    seen: list[str] = []
    # Through the registry, about the consent's enterprise and about another one the same nodes serve.
    for uscc in (E1, MIANYANG_FIRM):
        result = await bank_b.query(uscc, ["tax"], "credit_assessment", consents["query"])
        refused = [n for n in result.nodes if n.status == "denied"]
        assert refused and not result.answered
        assert all(n.reason == "CONSENT_NOT_FOUND" for n in refused), result.to_json()
        seen += [f"{n.reason}: {n.error}" for n in result.nodes]
    # Straight to the node: the same answer as for an id nobody ever granted.
    node = network.node_addr("510000")
    mine = await _refused(bank_b.query_node(node, "510000", E1, ["tax"], "credit_assessment", consents["query"]))
    unknown = await _refused(bank_b.query_node(node, "510000", E1, ["tax"], "credit_assessment", "f" * 32))
    assert (mine.code, mine.reason) == (unknown.code, unknown.reason) == ("PERMISSION_DENIED", "CONSENT_NOT_FOUND")
    assert mine.message == unknown.message.replace("f" * 32, consents["query"])
    seen.append(_texts(mine))
    # Evaluation and alerts under A's consents, and its status.
    seen.append(_texts(await _refused(bank_b.evaluate(E1, "policy_matching", consents["eligibility"],
                                                      programme="chengdu_sme_interest_subsidy"))))
    alerts = network._track(AlertClient(network.identity(Role.BANK, B), network.registry_addr))
    subscribed = await _refused(alerts.subscribe(E1, consents["monitoring"]))
    assert subscribed.reason == "CONSENT_NOT_FOUND"
    seen.append(_texts(subscribed))
    seen.append(_texts(await _refused(alerts.poll(E1, consents["monitoring"]))))
    status = network._track(network.enterprise_as(Role.BANK, B))
    seen.append(_texts(await _refused(status.status(consents["query"]))))
    for text in seen:
        _assert_names_none(text, A, E1)


async def test_an_enterprise_touching_anothers_consent_is_not_told_its_owner(network: Network):
    consents = await _consents(network)
    e2 = network.enterprise(E2)
    seen = []
    for action in ("pause", "resume", "revoke"):
        f = await _refused(e2.change(consents["query"], action))
        assert (f.code, f.reason) == ("NOT_FOUND", "CONSENT_NOT_FOUND"), f
        seen.append(_texts(f))
    unknown = await _refused(e2.change("f" * 32, "revoke"))
    assert seen[-1].replace(consents["query"], "f" * 32) == _texts(unknown)  # as if it did not exist
    seen.append(_texts(await _refused(e2.status(consents["query"]))))
    # Signing for E1 outright, or asking for E1's accesses, or disputing E1's record.
    forged = sign(network.identity(Role.ENTERPRISE, E2), consent_pb2.ConsentBody(
        uscc=E1, grantee=A, purpose="credit_assessment", categories=["tax"], valid_from_ms=now_ms(),
        valid_until_ms=now_ms() + 86_400_000, nonce=os.urandom(16), issued_at_ms=now_ms()))
    seen.append(_texts(await _refused(_call(e2.stub.GrantConsent(consent_pb2.GrantConsentRequest(consent=forged),
                                                                  timeout=10)))))
    body = access_pb2.AccessRequestBody.FromString(build_access_request(network.identity(Role.ENTERPRISE, E2),
                                                                        now_ms()).body)
    body.uscc = E1
    seen.append(_texts(await _refused(_call(access_pb2_grpc.AccessServiceStub(e2.channel).ListAccesses(
        access_pb2.ListAccessesRequest(request=sign(network.identity(Role.ENTERPRISE, E2), body)), timeout=10)))))
    dispute = sign(network.identity(Role.ENTERPRISE, E2), dispute_pb2.DisputeBody(
        uscc=E1, node_id="510100", record_id="a" * 64, reason="wrong", issued_at_ms=now_ms(), nonce=os.urandom(16)))
    seen.append(_texts(await _refused(_call(dispute_pb2_grpc.DisputeServiceStub(e2.channel).FileDispute(
        dispute_pb2.FileDisputeRequest(dispute=dispute), timeout=10)))))
    for text in seen:
        _assert_names_none(text, E1, A)
    # Nothing changed, and E1 still sees its consent as it was.
    assert (await network.enterprise(E1).status(consents["query"])).status == consent_pb2.CONSENT_STATUS_ACTIVE


async def test_the_auditors_still_learn_what_a_refusal_as_if_unknown_was(network: Network):
    consents = await _consents(network)
    await _refused(network.enterprise(E2).change(consents["query"], "pause"))
    await _refused(network.bank(B).query_node(network.node_addr("510000"), "510000", E1, ["tax"], "credit_assessment",
                                              consents["query"]))
    registry = await network.auditor(network.registry_addr, Role.REGISTRY).records()
    node = await network.auditor(network.node_addr("510000"), Principal(Role.NODE, "510000")).records()
    assert any(r.action == "pause_consent" and "[CONSENT_OF_ANOTHER_ENTERPRISE]" in r.reason for r in registry)
    assert any(r.action == "query" and r.caller_id == B and "[CONSENT_GRANTEE_MISMATCH]" in r.reason for r in node)
