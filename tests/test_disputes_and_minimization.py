"""Disputes and data minimization through the real servers of the `network` fixture (registry +
nodes 510100, 510000, 310000 over mutual TLS, on SQLite and on PostgreSQL):

- detail answers mask natural persons' identifiers (policies/minimization.toml [masking]);
- summary answers carry indicators only, never a record, an amount or a name;
- negative records past their retention are not served, whatever their as_of;
- an enterprise's dispute flags the record in every answer until the node's operator resolves
  it (confirmed: the flag goes; corrected: the corrected record replaces the old one), with every
  step in the node's audit log; an open dispute past its 20 days is listed as overdue;
- each refusal on the dispute path: its gRPC status, its reason, and nothing stored but the
  audit record.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json

import grpc
import pytest
from harness import BANK, CHENGDU_FIRM, MIANYANG_FIRM, REG, SEED, SHANGHAI_FIRM, Network

from node.server import NodeConfig, NodeServer
from node.store import Record
from xinyi.client import ClientError, OperatorClient, QueryResult
from xinyi.clock import DAY_MS, now_ms
from xinyi.crypto.envelope import sign
from xinyi.crypto.identity import Principal, Role
from xinyi.policy import DEFAULT_POLICY_DIR
from xinyi.privacy.consent import CHINA
from xinyi.privacy.minimize import MinimizationRules
from xinyi.rpc.status import RpcFailure
from xinyi.v1 import audit_pb2, dispute_pb2, dispute_pb2_grpc, node_pb2_grpc

PURPOSE = "credit_assessment"
CHENGDU_NODE = "510100"
JUDICIAL = SEED[CHENGDU_NODE][1]  # the pending case against the Chengdu firm, amount 50000.00
assert JUDICIAL.category == "judicial" and JUDICIAL.uscc == CHENGDU_FIRM


# --- helpers ---------------------------------------------------------------------------------------
def today() -> dt.date:
    """The nodes' calendar day (Beijing time), as node/query.py computes it."""
    return dt.datetime.now(CHINA).date()


async def ask(net: Network, categories=("registration", "tax", "judicial"), *, uscc: str = CHENGDU_FIRM,
              **consent) -> QueryResult:
    """A fresh consent (credit_assessment consents are for one fetch) and one query under it."""
    record = await net.enterprise(uscc).grant(BANK, PURPOSE, list(categories), 30, **consent)
    return await net.bank().query(uscc, list(categories), PURPOSE, record.consent_id)


def node_view(result: QueryResult, node_id: str):
    views = [v for v in result.nodes if v.node == node_id]
    assert len(views) == 1, [v.node for v in result.nodes]
    assert views[0].verified, views[0]
    return views[0]


def records_of(result: QueryResult, node_id: str, category: str) -> list[dict]:
    return [r for r in node_view(result, node_id).records if r["category"] == category]


def operator(net: Network, node_id: str = CHENGDU_NODE) -> OperatorClient:
    return net._track(OperatorClient(net.identity(Role.NODE, node_id), net.node_addr(node_id)))


async def refused(call) -> RpcFailure:
    """The failure of a client call (ClientError) or a raw stub call (AioRpcError); never a traceback."""
    try:
        await call
    except ClientError as e:
        failure = e.failure
    except grpc.aio.AioRpcError as e:
        failure = RpcFailure.from_error(e)
    else:
        raise AssertionError("the call was not refused")
    assert "Traceback" not in failure.message and 'File "' not in failure.message
    return failure


class Stored:
    """What each store holds, to prove a refusal stored nothing but its audit records."""

    def __init__(self, net: Network) -> None:
        self.net = net

    async def snapshot(self) -> dict:
        def counts():
            out = {"registry": {"audit": self.net.registry.store.audit_log_size()}}
            for node_id, node in self.net.nodes.items():
                out[node_id] = {
                    "audit": node.store.audit_log_size(),
                    "records": node.store.count_records(),
                    "disputes": [(d["dispute_id"], d["status"], d["corrected_key"]) for d in node.store.list_disputes()],
                }
            return out

        return await asyncio.to_thread(counts)

    async def assert_only_audit(self, before: dict, audited: dict[str, str]) -> None:
        """Nothing changed but one denying audit entry in each store of `audited` (store -> reason)."""
        after = await self.snapshot()
        for name in before:
            for key in before[name]:
                if key != "audit":
                    assert after[name][key] == before[name][key], (name, key)
            added = after[name]["audit"] - before[name]["audit"]
            assert added == (1 if name in audited else 0), (name, added)
        for name, reason in audited.items():
            store = self.net.registry.store if name == "registry" else self.net.nodes[name].store
            size = after[name]["audit"]
            last = (await asyncio.to_thread(store.audit_entries, size - 1, size))[0].record()
            assert last.decision == audit_pb2.DECISION_DENY and last.reason.startswith(reason), (name, last)


@pytest.fixture
def stored(network: Network) -> Stored:
    return Stored(network)


async def judicial_record_id(net: Network) -> str:
    result = await ask(net, ("judicial",))
    (record,) = records_of(result, CHENGDU_NODE, "judicial")
    return record["record_id"]


# --- masking ---------------------------------------------------------------------------------------
async def test_detail_answers_mask_the_legal_representative(network: Network):
    result = await ask(network, ("registration", "tax", "judicial"))
    (registration,) = records_of(result, CHENGDU_NODE, "registration")
    # person_name style: the surname kept, every other character masked ("张三" -> "张*").
    rules = MinimizationRules.from_dir(DEFAULT_POLICY_DIR)
    assert rules.mask_char == "*"
    assert registration["legal_representative"] == "张*"
    # Nothing else of the record is touched.
    assert {k: registration[k] for k in REG if k != "legal_representative"} == \
           {k: v for k, v in REG.items() if k != "legal_representative"}
    assert registration["record_id"] == SEED[CHENGDU_NODE][0].key  # the stored record's id, not the masked copy's
    # The name appears nowhere in what the bank holds.
    text = json.dumps(result.to_json(), ensure_ascii=False)
    assert "张三" not in text
    assert "张三" not in json.dumps([v.records for v in result.nodes], ensure_ascii=False)
    # The Sichuan node answered the tax records alongside, unmasked (they identify no person).
    assert [r["period"] for r in records_of(result, "510000", "tax")] == ["2026-05", "2026-04"]


# --- summary ---------------------------------------------------------------------------------------
async def test_summary_answers_carry_indicators_only(network: Network):
    result = await ask(network, ("registration", "tax", "judicial"), detail_level="summary")
    chengdu, sichuan = node_view(result, CHENGDU_NODE), node_view(result, "510000")
    assert chengdu.records == [] and sichuan.records == []
    indicators = {(n.node, i["category"], i["name"]): i["value"] for n in (chengdu, sichuan) for i in n.indicators}
    established = dt.date.fromisoformat(REG["established"])
    years = today().year - established.year - ((today().month, today().day) < (established.month, established.day))
    assert indicators == {
        # Chengdu holds registration and judicial records; it says nothing about tax, which it does not hold.
        (CHENGDU_NODE, "registration", "status"): "active",
        (CHENGDU_NODE, "registration", "years_established"): years,
        (CHENGDU_NODE, "registration", "registered_capital_band"): "1000000-5000000",
        (CHENGDU_NODE, "judicial", "open_cases_as_defendant"): 1,
        (CHENGDU_NODE, "judicial", "cases_24m"): 1,
        # Sichuan holds the tax records only: two months, 12000.00 each.
        ("510000", "tax", "latest_period"): "2026-05",
        ("510000", "tax", "latest_credit_rating"): "A",
        ("510000", "tax", "tax_paid_12m_band"): "0-100000",
        ("510000", "tax", "months_reported_12m"): 2,
    }
    as_of = {(i["category"], i["name"]): i["as_of"] for i in chengdu.indicators}
    assert as_of[("judicial", "open_cases_as_defendant")] == JUDICIAL.as_of
    # No amount, name, case number or court from the records leaves the node.
    text = json.dumps(result.to_json(), ensure_ascii=False)
    for raw in ("张三", REG["name"], REG["registered_capital"], "12000.00", "24000", JUDICIAL.fields["amount"],
                JUDICIAL.fields["case_no"], JUDICIAL.fields["court"], "record_id", "legal_representative"):
        assert raw not in text, raw


# --- retention -------------------------------------------------------------------------------------
def _penalty(decision_no: str, decided: dt.date, as_of: dt.date) -> Record:
    return Record(CHENGDU_FIRM, "admin_penalty", as_of.isoformat(), "成都市生态环境局",
                  {"decision_no": decision_no, "authority": "成都市生态环境局", "decided": decided.isoformat(),
                   "reason": "超标排放大气污染物", "amount": "200000.00"})


async def test_negative_information_ages_out_whatever_its_as_of(network: Network):
    day = today()
    reported = day - dt.timedelta(days=30)  # every record re-reported a month ago: inside any history window
    old = _penalty("成环罚〔2020〕1号", day - dt.timedelta(days=6 * 365 + 2), reported)  # decided 6 years ago
    almost = _penalty("成环罚〔2021〕2号", day - dt.timedelta(days=5 * 365 - 30), reported)  # 4 years 11 months
    recent = _penalty("成环罚〔2025〕3号", day - dt.timedelta(days=365), day - dt.timedelta(days=360))  # 1 year ago
    added = await asyncio.to_thread(network.nodes["510000"].store.add_records, [old, almost, recent], now_ms())
    assert added == 3

    result = await ask(network, ("admin_penalty",), history_months=24)
    served = records_of(result, "510000", "admin_penalty")
    assert [r["decision_no"] for r in served] == ["成环罚〔2021〕2号", "成环罚〔2025〕3号"]
    assert "成环罚〔2020〕1号" not in json.dumps(result.to_json(), ensure_ascii=False)
    # The Chengdu node holds no penalties: it says nothing about them.
    assert node_view(result, CHENGDU_NODE).status == "no_data"

    # Summaries count what is still served: one penalty in the last 24 months.
    summary = await ask(network, ("admin_penalty",), history_months=24, detail_level="summary")
    values = {i["name"]: i["value"] for i in node_view(summary, "510000").indicators}
    assert values == {"penalty_in_24m": True, "penalties_24m": 1}


# --- disputes end to end ---------------------------------------------------------------------------
async def test_dispute_flags_the_record_until_it_is_confirmed_or_corrected(network: Network):
    net = network
    enterprise = net.enterprise()
    record_id = await judicial_record_id(net)
    assert record_id == JUDICIAL.key

    # 1. The enterprise objects; the node must reply within 20 days.
    before_ms = now_ms()
    filed = await enterprise.dispute(CHENGDU_NODE, record_id, "the amount is wrong")
    assert filed.status == dispute_pb2.DISPUTE_STATUS_OPEN and not filed.overdue
    assert (filed.uscc, filed.node_id, filed.record_id) == (CHENGDU_FIRM, CHENGDU_NODE, record_id)
    assert filed.filed_by == f"enterprise/{CHENGDU_FIRM}" and filed.reason == "the amount is wrong"
    assert before_ms <= filed.filed_at_ms <= now_ms()
    assert filed.due_ms - filed.filed_at_ms == 20 * DAY_MS

    # 2. Every answer now flags the record, and only that one.
    result = await ask(net, ("registration", "judicial"))
    (judicial,) = records_of(result, CHENGDU_NODE, "judicial")
    (registration,) = records_of(result, CHENGDU_NODE, "registration")
    assert judicial["record_id"] == record_id and judicial["disputed"] is True
    assert "disputed" not in registration

    # 3. The operator lists it: open, due 20 days after filing.
    ops = operator(net)
    (listed,) = await ops.disputes(open_only=True)
    assert listed.dispute_id == filed.dispute_id and listed.record_id == record_id
    assert listed.status == dispute_pb2.DISPUTE_STATUS_OPEN and listed.due_ms == filed.filed_at_ms + 20 * DAY_MS
    assert not listed.overdue and await ops.disputes(overdue_only=True) == []

    # 4. Confirmed, with the written reply: closed, and the flag is gone.
    confirmed = await ops.resolve(filed.dispute_id, "confirmed", "the court's judgment states 50000.00")
    assert confirmed.status == dispute_pb2.DISPUTE_STATUS_CONFIRMED
    assert confirmed.resolution == "the court's judgment states 50000.00" and confirmed.resolved_at_ms > 0
    assert confirmed.corrected_record_id == ""
    assert await ops.disputes(open_only=True) == []
    (judicial,) = records_of(await ask(net, ("judicial",)), CHENGDU_NODE, "judicial")
    assert judicial["record_id"] == record_id and "disputed" not in judicial
    assert judicial["amount"] == "50000.00"

    # 5. A second objection, corrected: the corrected record replaces the old one.
    second = await enterprise.dispute(CHENGDU_NODE, record_id, "the case was settled for 5000")
    assert second.dispute_id != filed.dispute_id
    corrected_fields = dict(JUDICIAL.fields, amount="5000.00", status="closed")
    corrected = await ops.resolve(second.dispute_id, "corrected", "settled: amount and status corrected", corrected_fields)
    assert corrected.status == dispute_pb2.DISPUTE_STATUS_CORRECTED
    new_id = corrected.corrected_record_id
    expected = Record(CHENGDU_FIRM, "judicial", JUDICIAL.as_of, JUDICIAL.source, corrected_fields)
    assert new_id == expected.key and new_id != record_id

    result = await ask(net, ("judicial",))
    (judicial,) = records_of(result, CHENGDU_NODE, "judicial")
    assert judicial["record_id"] == new_id and "disputed" not in judicial
    assert (judicial["amount"], judicial["status"]) == ("5000.00", "closed")
    assert record_id not in json.dumps(result.to_json())
    # The replaced record can no longer be disputed: the node no longer serves it.
    f = await refused(enterprise.dispute(CHENGDU_NODE, record_id, "again"))
    assert f.code == "NOT_FOUND" and f.reason == "RECORD_NOT_FOUND"

    # 6. The operator's list keeps the whole history; the node's audit log has every step.
    history = {d.dispute_id: d.status for d in await ops.disputes()}
    assert history == {filed.dispute_id: dispute_pb2.DISPUTE_STATUS_CONFIRMED,
                       second.dispute_id: dispute_pb2.DISPUTE_STATUS_CORRECTED}
    log = await net.auditor(net.node_addr(CHENGDU_NODE), Principal(Role.NODE, CHENGDU_NODE)).records()
    steps = [(r.action, r.decision, f"{r.caller_role}/{r.caller_id}", r.relayed_by, r.uscc) for r in log
             if r.action in ("file_dispute", "resolve_dispute")]
    allow, deny = audit_pb2.DECISION_ALLOW, audit_pb2.DECISION_DENY
    assert steps == [
        ("file_dispute", allow, f"enterprise/{CHENGDU_FIRM}", "national", CHENGDU_FIRM),
        ("resolve_dispute", allow, f"node/{CHENGDU_NODE}", "", CHENGDU_FIRM),
        ("file_dispute", allow, f"enterprise/{CHENGDU_FIRM}", "national", CHENGDU_FIRM),
        ("resolve_dispute", allow, f"node/{CHENGDU_NODE}", "", CHENGDU_FIRM),
        # the refused objection to the replaced record: the enterprise's, relayed by the registry
        ("file_dispute", deny, f"enterprise/{CHENGDU_FIRM}", "national", CHENGDU_FIRM),
    ]
    resolutions = [r.reason for r in log if r.action == "resolve_dispute"]
    assert filed.dispute_id in resolutions[0] and "confirmed" in resolutions[0]
    assert second.dispute_id in resolutions[1] and "corrected" in resolutions[1]
    # The registry's own log has the relays.
    registry_log = await net.auditor(net.registry_addr, Role.REGISTRY).records()
    relayed = [r.reason for r in registry_log if r.action == "file_dispute" and r.decision == allow]
    assert relayed == [f"relayed to {CHENGDU_NODE}: dispute {filed.dispute_id}",
                       f"relayed to {CHENGDU_NODE}: dispute {second.dispute_id}"]


async def test_an_open_dispute_past_20_days_is_overdue(network: Network):
    """A node of our own with a clock we move; the rest of the network keeps real time."""
    net = network
    node_id = "510700"
    offset = [0]
    record = Record(MIANYANG_FIRM, "tax", "2026-06-15", "国家税务总局绵阳市税务局",
                    {"period": "2026-05", "tax_paid": "3000.00", "credit_rating": "B"})
    node = NodeServer(NodeConfig(net.identity(Role.NODE, node_id), "127.0.0.1:0", net.databases.new(f"node{node_id}"),
                                 registry=net.registry_addr, clock=lambda: now_ms() + offset[0]))
    await asyncio.to_thread(node.store.create_schema)
    await asyncio.to_thread(node.store.add_records, [record], now_ms())
    await node.start()
    net.nodes[node_id] = node  # stopped with the network
    await asyncio.wait_for(node.registered.wait(), 10)

    filed = await net.enterprise(MIANYANG_FIRM).dispute(node_id, record.key, "we were rated A for 2026-05")
    assert filed.due_ms == filed.filed_at_ms + 20 * DAY_MS
    ops = operator(net, node_id)
    assert await ops.disputes(overdue_only=True) == []
    offset[0] = 19 * DAY_MS
    assert await ops.disputes(overdue_only=True) == []
    (still_open,) = await ops.disputes(open_only=True)
    assert not still_open.overdue

    offset[0] = 21 * DAY_MS
    (overdue,) = await ops.disputes(overdue_only=True)
    assert overdue.dispute_id == filed.dispute_id and overdue.overdue
    assert overdue.status == dispute_pb2.DISPUTE_STATUS_OPEN
    # Late, but answered: no longer overdue.
    await ops.resolve(filed.dispute_id, "confirmed", "the rating for 2026-05 is B")
    assert await ops.disputes(overdue_only=True) == []
    (closed,) = await ops.disputes()
    assert closed.status == dispute_pb2.DISPUTE_STATUS_CONFIRMED and not closed.overdue


# --- refusals --------------------------------------------------------------------------------------
async def test_another_enterprise_cannot_dispute_the_record(network: Network, stored: Stored):
    record_id = await judicial_record_id(network)
    # Signed by the Shanghai firm about its own records: the node holds no such record of its
    # (NOT_FOUND: whether the id belongs to someone else is not revealed).
    before = await stored.snapshot()
    f = await refused(network.enterprise(SHANGHAI_FIRM).dispute(CHENGDU_NODE, record_id, "the amount is wrong"))
    assert f.code == "NOT_FOUND" and f.reason == "RECORD_NOT_FOUND" and f.message.startswith("dispute.record_id:")
    assert CHENGDU_FIRM not in f.message
    await stored.assert_only_audit(before, {"registry": "RECORD_NOT_FOUND", CHENGDU_NODE: "RECORD_NOT_FOUND"})

    # Naming the Chengdu firm in a body the Shanghai firm signs: refused at the registry.
    body = dispute_pb2.DisputeBody(uscc=CHENGDU_FIRM, node_id=CHENGDU_NODE, record_id=record_id, reason="the amount is wrong",
                         issued_at_ms=now_ms(), nonce=b"n" * 16)
    envelope = sign(network.identity(Role.ENTERPRISE, SHANGHAI_FIRM), body)
    channel = network.channel(Role.ENTERPRISE, SHANGHAI_FIRM, network.registry_addr, Role.REGISTRY).channel
    before = await stored.snapshot()
    f = await refused(dispute_pb2_grpc.DisputeServiceStub(channel).FileDispute(
        dispute_pb2.FileDisputeRequest(dispute=envelope), timeout=10))
    assert f.code == "PERMISSION_DENIED" and f.reason == "RECORD_OF_ANOTHER_ENTERPRISE"
    assert f.fields[0][0] == "dispute.uscc"
    await stored.assert_only_audit(before, {"registry": "RECORD_OF_ANOTHER_ENTERPRISE"})
    # Nor straight to the node.
    channel = network.channel(Role.ENTERPRISE, SHANGHAI_FIRM, network.node_addr(CHENGDU_NODE),
                              Principal(Role.NODE, CHENGDU_NODE)).channel
    before = await stored.snapshot()
    f = await refused(node_pb2_grpc.NodeServiceStub(channel).FileDispute(
        dispute_pb2.NodeFileDisputeRequest(dispute=envelope), timeout=10))
    assert f.code == "PERMISSION_DENIED" and f.reason == "RECORD_OF_ANOTHER_ENTERPRISE"
    await stored.assert_only_audit(before, {CHENGDU_NODE: "RECORD_OF_ANOTHER_ENTERPRISE"})


async def test_unknown_record_id(network: Network, stored: Stored):
    before = await stored.snapshot()
    f = await refused(network.enterprise().dispute(CHENGDU_NODE, "0" * 64, "no such record should exist"))
    assert f.code == "NOT_FOUND" and f.reason == "RECORD_NOT_FOUND" and f.message.startswith("dispute.record_id:")
    await stored.assert_only_audit(before, {"registry": "RECORD_NOT_FOUND", CHENGDU_NODE: "RECORD_NOT_FOUND"})
    # A record the Sichuan node holds, disputed at the Chengdu node: not there either.
    tax_id = SEED["510000"][0].key
    before = await stored.snapshot()
    f = await refused(network.enterprise().dispute(CHENGDU_NODE, tax_id, "wrong node"))
    assert f.code == "NOT_FOUND" and f.reason == "RECORD_NOT_FOUND"
    await stored.assert_only_audit(before, {"registry": "RECORD_NOT_FOUND", CHENGDU_NODE: "RECORD_NOT_FOUND"})


async def test_a_refused_dispute_is_logged_as_the_enterprises_relayed_by_the_registry(network: Network):
    """As for queries: once the signature is verified, the asker is the enterprise that signed,
    and the registry is recorded as the relay, in the node's log as in the registry's."""
    await refused(network.enterprise().dispute(CHENGDU_NODE, "0" * 64, "no such record should exist"))
    node_store, registry_store = network.nodes[CHENGDU_NODE].store, network.registry.store
    for store, relay in ((node_store, "national"), (registry_store, "")):
        size = await asyncio.to_thread(store.audit_log_size)
        last = (await asyncio.to_thread(store.audit_entries, size - 1, size))[0].record()
        assert last.action == "file_dispute" and last.decision == audit_pb2.DECISION_DENY
        assert (last.caller_role, last.caller_id, last.relayed_by) == ("enterprise", CHENGDU_FIRM, relay), last
    # And the same for an allowed filing.
    await network.enterprise().dispute(CHENGDU_NODE, JUDICIAL.key, "the amount is wrong")
    size = await asyncio.to_thread(node_store.audit_log_size)
    last = (await asyncio.to_thread(node_store.audit_entries, size - 1, size))[0].record()
    assert (last.caller_id, last.relayed_by, last.decision) == (CHENGDU_FIRM, "national", audit_pb2.DECISION_ALLOW)


@pytest.mark.parametrize("reason", ["", "   "], ids=["empty", "blank"])
async def test_a_dispute_must_say_what_is_wrong(network: Network, stored: Stored, reason: str):
    before = await stored.snapshot()
    f = await refused(network.enterprise().dispute(CHENGDU_NODE, JUDICIAL.key, reason))
    assert f.code == "INVALID_ARGUMENT" and f.reason == "INVALID_FIELD"
    assert f.fields[0][0] == "dispute.reason"
    await stored.assert_only_audit(before, {"registry": "INVALID_FIELD"})


async def test_a_bank_cannot_list_a_nodes_disputes(network: Network, stored: Stored):
    await network.enterprise().dispute(CHENGDU_NODE, JUDICIAL.key, "the amount is wrong")
    channel = network.channel(Role.BANK, BANK, network.node_addr(CHENGDU_NODE), Principal(Role.NODE, CHENGDU_NODE)).channel
    before = await stored.snapshot()
    f = await refused(node_pb2_grpc.NodeServiceStub(channel).ListDisputes(dispute_pb2.ListDisputesRequest(), timeout=10))
    assert f.code == "PERMISSION_DENIED" and f.reason == "NOT_THIS_NODES_OPERATOR"
    assert f"bank/{BANK}" in f.message
    after = await stored.snapshot()
    for name in before:
        for key in before[name]:
            if key != "audit":
                assert after[name][key] == before[name][key], (name, key)


async def test_a_refused_listing_of_disputes_is_audited(network: Network, stored: Stored):
    channel = network.channel(Role.BANK, BANK, network.node_addr(CHENGDU_NODE), Principal(Role.NODE, CHENGDU_NODE)).channel
    before = await stored.snapshot()
    f = await refused(node_pb2_grpc.NodeServiceStub(channel).ListDisputes(dispute_pb2.ListDisputesRequest(), timeout=10))
    assert f.code == "PERMISSION_DENIED"
    await stored.assert_only_audit(before, {CHENGDU_NODE: "NOT_THIS_NODES_OPERATOR"})


async def test_another_nodes_identity_cannot_resolve(network: Network, stored: Stored):
    filed = await network.enterprise().dispute(CHENGDU_NODE, JUDICIAL.key, "the amount is wrong")
    # The Sichuan node's identity, talking to the Chengdu node (OperatorClient only talks to its own node).
    channel = network.channel(Role.NODE, "510000", network.node_addr(CHENGDU_NODE), Principal(Role.NODE, CHENGDU_NODE)).channel
    stub = node_pb2_grpc.NodeServiceStub(channel)
    before = await stored.snapshot()
    f = await refused(stub.ResolveDispute(dispute_pb2.ResolveDisputeRequest(
        dispute_id=filed.dispute_id, outcome=dispute_pb2.DISPUTE_STATUS_CONFIRMED, resolution="looks fine to me"), timeout=10))
    assert f.code == "PERMISSION_DENIED" and f.reason == "NOT_THIS_NODES_OPERATOR"
    assert "node/510000" in f.message and CHENGDU_NODE in f.message
    await stored.assert_only_audit(before, {CHENGDU_NODE: "NOT_THIS_NODES_OPERATOR"})
    # Nor list them.
    f = await refused(stub.ListDisputes(dispute_pb2.ListDisputesRequest(), timeout=10))
    assert f.code == "PERMISSION_DENIED" and f.reason == "NOT_THIS_NODES_OPERATOR"
    (still,) = await operator(network).disputes()
    assert still.status == dispute_pb2.DISPUTE_STATUS_OPEN


async def test_resolving_twice_and_invalid_resolutions(network: Network, stored: Stored):
    ops = operator(network)
    enterprise = network.enterprise()
    filed = await enterprise.dispute(CHENGDU_NODE, JUDICIAL.key, "the amount is wrong")

    # Corrected with fields that are not valid judicial fields: refused, the record untouched.
    for fields, says in [({"amount": "5000.00"}, "is required"),
                         (dict(JUDICIAL.fields, amount="-5"), "amount"),
                         (dict(JUDICIAL.fields, horoscope="leo"), "horoscope"),
                         (None, "")]:
        before = await stored.snapshot()
        request = dispute_pb2.ResolveDisputeRequest(
            dispute_id=filed.dispute_id, outcome=dispute_pb2.DISPUTE_STATUS_CORRECTED, resolution="corrected",
            corrected_fields_json=json.dumps(fields) if fields is not None else "")
        f = await refused(ops.stub.ResolveDispute(request, timeout=10))
        assert f.code == "INVALID_ARGUMENT" and f.fields[0][0] == "corrected_fields_json", (fields, f)
        assert "corrected_fields_json" in f.message and says in f.message, (fields, f.message)
        await stored.assert_only_audit(before, {CHENGDU_NODE: "INVALID_FIELD"})
    # A field given twice (json would keep the last one silently): refused, not guessed.
    before = await stored.snapshot()
    twice = json.dumps(dict(JUDICIAL.fields, amount="5000.00"))[:-1] + ', "amount": "999999.00"}'
    f = await refused(ops.stub.ResolveDispute(dispute_pb2.ResolveDisputeRequest(
        dispute_id=filed.dispute_id, outcome=dispute_pb2.DISPUTE_STATUS_CORRECTED, resolution="corrected",
        corrected_fields_json=twice), timeout=10))
    assert f.code == "INVALID_ARGUMENT" and f.fields[0][0] == "corrected_fields_json"
    assert "amount: is given more than once" in f.message, f.message
    await stored.assert_only_audit(before, {CHENGDU_NODE: "INVALID_FIELD"})
    # Not JSON at all.
    before = await stored.snapshot()
    f = await refused(ops.stub.ResolveDispute(dispute_pb2.ResolveDisputeRequest(
        dispute_id=filed.dispute_id, outcome=dispute_pb2.DISPUTE_STATUS_CORRECTED, resolution="corrected",
        corrected_fields_json="{amount: 5000"), timeout=10))
    assert f.code == "INVALID_ARGUMENT" and f.fields[0][0] == "corrected_fields_json"
    await stored.assert_only_audit(before, {CHENGDU_NODE: "INVALID_FIELD"})
    # No written reply.
    before = await stored.snapshot()
    f = await refused(ops.resolve(filed.dispute_id, "confirmed", "  "))
    assert f.code == "INVALID_ARGUMENT" and f.fields[0][0] == "resolution"
    await stored.assert_only_audit(before, {CHENGDU_NODE: "INVALID_FIELD"})
    # Unknown dispute.
    before = await stored.snapshot()
    f = await refused(ops.resolve("f" * 32, "confirmed", "fine"))
    assert f.code == "NOT_FOUND" and f.reason == "DISPUTE_NOT_FOUND"
    await stored.assert_only_audit(before, {CHENGDU_NODE: "DISPUTE_NOT_FOUND"})

    (still,) = await ops.disputes(open_only=True)
    assert still.dispute_id == filed.dispute_id
    (judicial,) = records_of(await ask(network, ("judicial",)), CHENGDU_NODE, "judicial")
    assert judicial["record_id"] == JUDICIAL.key and judicial["disputed"] is True

    # Resolved once; the second time it is closed already, whichever the outcome.
    await ops.resolve(filed.dispute_id, "confirmed", "the amount is right")
    for outcome, fields in (("confirmed", None), ("corrected", dict(JUDICIAL.fields, amount="1.00"))):
        before = await stored.snapshot()
        f = await refused(ops.resolve(filed.dispute_id, outcome, "again", fields))
        assert f.code == "FAILED_PRECONDITION" and f.reason == "DISPUTE_CLOSED" and "confirmed" in f.message
        await stored.assert_only_audit(before, {CHENGDU_NODE: "DISPUTE_CLOSED"})
    (closed,) = await ops.disputes()
    assert closed.status == dispute_pb2.DISPUTE_STATUS_CONFIRMED and closed.resolution == "the amount is right"


async def test_a_correction_that_changes_nothing_keeps_the_record_served(network: Network, stored: Stored):
    ops = operator(network)
    filed = await network.enterprise().dispute(CHENGDU_NODE, JUDICIAL.key, "the amount is wrong")
    # A "correction" to the record's own fields would supersede the record by itself (same key): refused,
    # the operator told to confirm instead; the dispute stays open and the record served.
    before = await stored.snapshot()
    f = await refused(ops.resolve(filed.dispute_id, "corrected", "checked", dict(JUDICIAL.fields)))
    assert f.code == "INVALID_ARGUMENT" and f.fields[0][0] == "corrected_fields_json", f
    assert "changes nothing" in f.message and "confirmed" in f.message, f.message
    await stored.assert_only_audit(before, {CHENGDU_NODE: "INVALID_FIELD"})
    (still,) = await ops.disputes(open_only=True)
    assert still.dispute_id == filed.dispute_id
    served = records_of(await ask(network, ("judicial",)), CHENGDU_NODE, "judicial")
    assert len(served) == 1, "the record corrected to its own fields is no longer served"
    assert served[0]["record_id"] == JUDICIAL.key and served[0]["amount"] == JUDICIAL.fields["amount"]
