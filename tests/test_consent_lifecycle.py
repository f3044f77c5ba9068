"""The consent lifecycle through the real servers: pause, resume, revoke; once and periodic
fetch limits; fair-use rules at grant; representatives; the node's freshness bound; the
enterprise's view. On SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import re

import grpc
import pytest
from harness import BANK, CHENGDU_FIRM, SHANGHAI_FIRM, Network

from node.server import NodeConfig, NodeServer
from xinyi.client import ClientError
from xinyi.crypto.identity import Role
from xinyi.privacy.consent import build_change
from xinyi.rpc.status import RpcFailure
from xinyi.v1 import consent_pb2, consent_pb2_grpc

ASK = (CHENGDU_FIRM, ["registration", "tax"], "credit_assessment")


def outcomes(result) -> dict[str, str]:
    return {n.node: n.status for n in result.nodes}


def reasons(result) -> dict[str, str | None]:
    return {n.node: n.reason for n in result.nodes}


async def node_state(net: Network, node: str, consent_id: str) -> str:
    stored = await asyncio.to_thread(net.nodes[node].store.get_consent, consent_id)
    return stored.state


async def test_pause_resume_and_revoke_reach_every_node_at_once(network: Network):
    enterprise = network.enterprise()
    consent = await network.grant(categories=("registration", "tax"), days=30)
    record = await enterprise.change(consent, "pause")
    assert record.status == consent_pb2.CONSENT_STATUS_PAUSED and sorted(record.delivered_to) == ["510000", "510100"]
    # Pushed, not polled: the nodes hold the new state as soon as the call returns.
    assert [await node_state(network, n, consent) for n in ("510100", "510000")] == ["paused", "paused"]
    result = await network.bank().query(*ASK, consent)
    assert set(reasons(result).values()) == {"CONSENT_PAUSED"}

    await enterprise.change(consent, "resume")
    result = await network.bank().query(*ASK, consent)
    assert outcomes(result) == {"510100": "ok", "510000": "ok"}

    await enterprise.change(consent, "revoke")
    with pytest.raises(ClientError) as e:
        await enterprise.change(consent, "resume")  # revoke is final
    assert e.value.failure.code == "FAILED_PRECONDITION" and e.value.failure.reason == "CONSENT_NOT_CHANGED"
    # Said with the time a person reads, not a raw millisecond count.
    message = e.value.failure.message
    assert re.search(r"was revoked at \d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2} UTC; a revocation is final", message), message
    assert not re.search(r"\d{12}", message.replace(consent, "")), message
    assert [await node_state(network, n, consent) for n in ("510100", "510000")] == ["revoked", "revoked"]


async def test_pausing_an_unknown_or_anothers_consent_is_refused(network: Network):
    with pytest.raises(ClientError) as e:
        await network.enterprise().change("e" * 32, "pause")
    assert e.value.failure.code == "NOT_FOUND"
    unknown = e.value.failure
    consent = await network.grant()
    with pytest.raises(ClientError) as e:
        await network.enterprise(SHANGHAI_FIRM).change(consent, "pause")
    # Another's consent is refused as if unknown: its owner is not told, ids cannot be probed.
    assert (e.value.failure.code, e.value.failure.reason) == ("NOT_FOUND", "CONSENT_NOT_FOUND")
    assert e.value.failure.message == unknown.message.replace("e" * 32, consent)
    assert (await network.enterprise().status(consent)).status == consent_pb2.CONSENT_STATUS_ACTIVE


async def test_a_once_consent_is_spent_after_one_answer(network: Network):
    consent = await network.grant(categories=("registration", "tax"))
    first = await network.bank().query(*ASK, consent)
    assert outcomes(first) == {"510100": "ok", "510000": "ok"}
    second = await network.bank().query(*ASK, consent)
    assert set(reasons(second).values()) == {"CONSENT_SPENT"}
    listed = {c.consent_id: c for c in await network.enterprise().list()}
    assert listed[consent].uses == 1 and listed[consent].last_used_ms > 0
    assert listed[consent].status == consent_pb2.CONSENT_STATUS_SPENT


async def test_a_periodic_monitoring_consent_allows_its_ceiling_and_answers_with_indicators(network: Network):
    record = await network.enterprise().grant(BANK, "loan_monitoring", ["tax", "judicial"], 90, detail_level="summary",
                                              fetch_type="periodic", max_fetches=2, fetch_period="month")
    for _ in range(2):
        result = await network.bank().query(CHENGDU_FIRM, ["tax"], "loan_monitoring", record.consent_id)
        sichuan = next(n for n in result.nodes if n.node == "510000")
        assert sichuan.verified and sichuan.records == [] and sichuan.indicators
        assert {i["name"] for i in sichuan.indicators} >= {"latest_credit_rating"}
    third = await network.bank().query(CHENGDU_FIRM, ["tax"], "loan_monitoring", record.consent_id)
    assert set(reasons(third).values()) == {"FETCH_LIMIT"}


@pytest.mark.parametrize(
    "grant, field, reason",
    [
        (dict(purpose="credit_assessment", categories=["tax"], days=45), "consent.valid_until_ms", "FAIR_USE_MAX_DAYS"),
        (dict(purpose="credit_assessment", categories=["tax"], days=30, history_months=36), "consent.history_months",
         "FAIR_USE_MAX_HISTORY_MONTHS"),
        (dict(purpose="loan_monitoring", categories=["tax"], days=90, detail_level="summary"), "consent.fetch_type",
         "FAIR_USE_FETCH_TYPES"),
        (dict(purpose="loan_monitoring", categories=["tax"], days=90, detail_level="summary", fetch_type="periodic",
              max_fetches=10, fetch_period="month"), "consent.max_fetches", "FAIR_USE_MAX_FETCHES"),
        (dict(purpose="loan_monitoring", categories=["tax"], days=90, detail_level="detail", fetch_type="periodic",
              max_fetches=4, fetch_period="month"), "consent.detail_level", "FAIR_USE_DETAIL_LEVELS"),
        (dict(purpose="loan_monitoring", categories=["customs"], days=90, detail_level="summary", fetch_type="periodic",
              max_fetches=4, fetch_period="month"), "consent.categories", "FAIR_USE_CATEGORIES"),
    ],
    ids=["duration", "history", "fetch-type", "frequency", "detail-level", "category"],
)
async def test_consents_beyond_fair_use_are_refused_at_grant_naming_the_rule(network: Network, grant, field, reason):
    before = await asyncio.to_thread(network.registry.store.audit_log_size)
    grant = dict(grant)  # the parameters are shared by both back ends' runs
    purpose = grant.pop("purpose")
    categories = grant.pop("categories")
    days = grant.pop("days")
    with pytest.raises(ClientError) as e:
        await network.enterprise().grant(BANK, purpose, categories, days, **grant)
    f = e.value.failure
    assert f.code == "FAILED_PRECONDITION" and f.reason == reason
    assert f.fields[0][0] == field and "fair-use rule" in f.message
    assert await asyncio.to_thread(network.registry.store.consents_for) == []
    assert await asyncio.to_thread(network.registry.store.audit_log_size) == before + 1  # only the refusal's record


async def test_a_named_representative_signs_consents_until_the_delegation_ends(network: Network):
    enterprise = network.enterprise()
    rep = network.enterprise_as(Role.REPRESENTATIVE, "zhang-wei")
    with pytest.raises(ClientError) as e:  # not (yet) named by the enterprise
        await rep.grant(BANK, "credit_assessment", ["tax"], 30, uscc=CHENGDU_FIRM)
    assert e.value.failure.code == "PERMISSION_DENIED"

    named = await enterprise.delegate("zhang-wei", days=30)
    assert named.active
    record = await rep.grant(BANK, "credit_assessment", ["registration", "tax"], 30, uscc=CHENGDU_FIRM)
    assert record.signed_by == "representative/zhang-wei" and record.delegation.body
    # Each node verified the delegation behind the representative's signature, and answers.
    result = await network.bank().query(*ASK, record.consent_id)
    assert outcomes(result) == {"510100": "ok", "510000": "ok"}
    listed = {c.consent_id: c for c in await enterprise.list()}
    assert listed[record.consent_id].signed_by == "representative/zhang-wei"

    # The representative cannot sign for another enterprise, nor pause (the enterprise signs changes).
    with pytest.raises(ClientError) as e:
        await rep.grant(BANK, "credit_assessment", ["tax"], 30, uscc=SHANGHAI_FIRM)
    assert e.value.failure.code == "PERMISSION_DENIED"
    rep_stub = consent_pb2_grpc.ConsentServiceStub(rep.channel)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await rep_stub.ChangeConsent(consent_pb2.ChangeConsentRequest(
            change=build_change(network.identity(Role.REPRESENTATIVE, "zhang-wei"), record.consent_id, "pause", 0)))
    assert RpcFailure.from_error(err.value).code == "UNAUTHENTICATED"

    ended = await enterprise.delegate("zhang-wei", revoke=True)
    assert not ended.active
    with pytest.raises(ClientError) as e:
        await rep.grant(BANK, "credit_assessment", ["tax"], 30, uscc=CHENGDU_FIRM)
    assert e.value.failure.code == "PERMISSION_DENIED" and e.value.failure.reason in ("NOT_DELEGATED", "CONSENT_OF_ANOTHER_ENTERPRISE")


async def test_a_node_that_cannot_confirm_consents_refuses_rather_than_answers(network: Network, tmp_path):
    consent = await network.grant(categories=("registration",))
    node = NodeServer(NodeConfig(network.identity(Role.NODE, "510104"), "127.0.0.1:0", network.databases.new("n510104"),
                                 registry=network.registry_addr, sync_seconds=0.1, consent_freshness_seconds=0.5))
    await node.start()
    await asyncio.wait_for(node.registered.wait(), 10)
    network.nodes["510104"] = node
    # Confirmed, it answers (it holds nothing). A freshness bound of 0.5 s is tight on a loaded
    # machine: a sync may come late, so ask until it does (the property is the refusal below).
    for _ in range(50):
        result = await network.bank().query(CHENGDU_FIRM, ["registration"], "credit_assessment", consent)
        if outcomes(result)["510104"] == "no_data":
            break
        await asyncio.sleep(0.2)
    assert outcomes(result)["510104"] == "no_data"
    # The registry goes away: after the freshness bound the node refuses.
    for task in node._tasks:
        task.cancel()
    await asyncio.sleep(0.7)
    with pytest.raises(ClientError) as e:
        await network.bank().query_node(network.node_addr("510104"), "510104", CHENGDU_FIRM, ["registration"],
                                        "credit_assessment", consent)
    assert e.value.failure.code == "UNAVAILABLE" and e.value.failure.reason == "CONSENT_STATUS_UNCONFIRMED"
    result = await network.bank().query(CHENGDU_FIRM, ["registration"], "credit_assessment", consent)
    assert outcomes(result)["510104"] == "unavailable"  # the node's state, not a refusal of the bank
    assert "0.5 s" in e.value.failure.message


async def test_consent_list_shows_state_uses_and_accesses(network: Network):
    consent = await network.grant(categories=("registration", "tax"))
    await network.bank().query(*ASK, consent)
    listed = {c.consent_id: c for c in await network.enterprise().list()}
    c = listed[consent]
    assert c.status == consent_pb2.CONSENT_STATUS_SPENT and c.uses == 1
    assert c.detail_level == consent_pb2.DETAIL_LEVEL_DETAIL and c.fetch_type == consent_pb2.FETCH_TYPE_ONCE
    accesses, problems = await network.enterprise().accesses()
    assert problems == {}
    assert sum(1 for a in accesses if a.record.consent_id == consent and a.record.action == "query") == 2


async def test_a_joint_consent_lets_the_bank_and_its_guarantor_see_the_same_data(network: Network):
    from harness import GUARANTOR, OTHER_BANK

    record = await network.enterprise().grant(GUARANTOR, "guarantee", ["registration", "tax"], 60, co_grantee=BANK)
    assert record.co_grantee == BANK
    guarantor = await network.bank(GUARANTOR, Role.GUARANTOR).query(CHENGDU_FIRM, ["registration", "tax"], "guarantee",
                                                                    record.consent_id)
    bank = await network.bank().query(CHENGDU_FIRM, ["registration", "tax"], "guarantee", record.consent_id)
    assert outcomes(guarantor) == outcomes(bank) == {"510100": "ok", "510000": "ok"}
    strip = lambda result: {n.node: n.records for n in result.nodes}  # noqa: E731
    assert strip(guarantor) == strip(bank)  # the same signed data, each opened and verified by its own key
    # Each institution has its own once: the bank's look did not spend the guarantor's.
    again = await network.bank().query(CHENGDU_FIRM, ["registration", "tax"], "guarantee", record.consent_id)
    assert set(reasons(again).values()) == {"CONSENT_SPENT"}
    # An institution the consent does not name is refused, and a bank may not use the guarantee
    # purpose outside a joint consent.
    with pytest.raises(ClientError) as e:  # the registry already refuses: not named, so not joint
        await network.bank(OTHER_BANK).query(CHENGDU_FIRM, ["tax"], "guarantee", record.consent_id)
    assert e.value.failure.code == "PERMISSION_DENIED"
    solo = await network.grant(grantee=GUARANTOR, purpose="guarantee", categories=("tax",))
    with pytest.raises(ClientError) as e:
        await network.bank().query(CHENGDU_FIRM, ["tax"], "guarantee", solo)
    assert e.value.failure.code == "PERMISSION_DENIED" and "purpose-must-fit-role" in e.value.failure.policy_ids
