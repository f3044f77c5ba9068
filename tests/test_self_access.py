"""An enterprise reads its own records (purpose self_access): through the registry, from every
node that holds them, verified, audited and shown in its access listing; refused for anyone
else and over the daily cap. Real servers on loopback, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os

import pytest
from harness import BANK, CHENGDU_FIRM, MIANYANG_FIRM, SHANGHAI_FIRM, Network
from test_refusals import ask_node, refused, route

from node.store import Record
from xinyi.clock import now_ms
from xinyi.crypto.envelope import sign
from xinyi.crypto.identity import Principal, Role
from xinyi.errors import Refusal
from xinyi.privacy.fairuse import FairUse, FairUseError, SelfAccessRule, self_access_rule
from xinyi.privacy.minimize import MinimizationConfigError, MinimizationRules
from xinyi.query import build_query, build_self_query
from xinyi.records.vocab import CATEGORIES
from xinyi.v1 import audit_pb2, dispute_pb2, query_pb2

CHENGDU_NODE, SICHUAN_NODE, SHANGHAI_NODE = "510100", "510000", "310000"


def self_body(uscc: str = CHENGDU_FIRM, **over) -> query_pb2.QueryBody:
    fields = dict(uscc=uscc, categories=["registration", "tax"], purpose="self_access", consent_id="",
                  nonce=os.urandom(16), issued_at_ms=now_ms(), answer_key=os.urandom(32))
    fields.update(over)
    return query_pb2.QueryBody(**fields)


async def last_entry(net: Network, where: str) -> audit_pb2.AuditRecord:
    store = net.registry.store if where == "registry" else net.nodes[where].store
    size = await asyncio.to_thread(store.audit_log_size)
    return (await asyncio.to_thread(store.audit_entries, size - 1, size))[0].record()


async def entries(net: Network, where: str) -> list[audit_pb2.AuditRecord]:
    store = net.registry.store if where == "registry" else net.nodes[where].store
    size = await asyncio.to_thread(store.audit_log_size)
    return [e.record() for e in await asyncio.to_thread(store.audit_entries, 0, size)]


def self_accesses(records: list[audit_pb2.AuditRecord], decision=audit_pb2.DECISION_ALLOW) -> list[audit_pb2.AuditRecord]:
    return [r for r in records if r.action == "query" and r.purpose == "self_access" and r.decision == decision]


# --- the enterprise reads its own records ------------------------------------------------------


async def test_an_enterprise_gets_its_records_from_every_node_that_holds_them_verified(network: Network):
    result = await network.enterprise().my_records()
    by_node = {n.node: n for n in result.nodes}
    assert list(by_node) == [CHENGDU_NODE, SICHUAN_NODE]  # its city and province; Shanghai holds nothing of it
    assert result.uscc == CHENGDU_FIRM and result.answered
    chengdu, sichuan = by_node[CHENGDU_NODE], by_node[SICHUAN_NODE]
    assert chengdu.status == "ok" and chengdu.verified and sichuan.status == "ok" and sichuan.verified
    assert [r["category"] for r in chengdu.records] == ["registration", "judicial"]  # vocabulary order
    assert [r["period"] for r in sichuan.records] == ["2026-05", "2026-04"]
    # Every category it has, with the record ids the node stores them under.
    stored = {r.record_id for r in await asyncio.to_thread(network.nodes[CHENGDU_NODE].store.fetch_records,
                                                          CHENGDU_FIRM, list(CATEGORIES))}
    assert {r["record_id"] for r in chengdu.records} == stored and len(stored) == 2
    # Its own filing, unmasked: a bank sees 张* (test_disputes_and_minimization); the firm its own legal representative.
    registration = next(r for r in chengdu.records if r["category"] == "registration")
    assert registration["legal_representative"] == "张三"


async def test_records_held_outside_the_enterprise_s_area_are_included(network: Network):
    """Mianyang has no city node: the province answers, and Shanghai, approved as holding a
    penalty of the firm's branch, is asked too."""
    result = await network.enterprise(MIANYANG_FIRM).my_records()
    by_node = {n.node: n for n in result.nodes}
    assert list(by_node) == [SICHUAN_NODE, SHANGHAI_NODE]
    assert [r["category"] for r in by_node[SICHUAN_NODE].records] == ["tax"]
    assert [r["category"] for r in by_node[SHANGHAI_NODE].records] == ["admin_penalty"]
    assert all(n.verified for n in result.nodes)


async def test_categories_narrow_the_answer_and_a_node_with_none_of_them_says_no_data(network: Network):
    result = await network.enterprise().my_records(["tax"])
    by_node = {n.node: n for n in result.nodes}
    assert by_node[CHENGDU_NODE].status == "no_data" and by_node[CHENGDU_NODE].verified
    assert {r["category"] for r in by_node[SICHUAN_NODE].records} == {"tax"}


async def test_a_record_id_from_my_records_is_what_a_dispute_takes(network: Network):
    firm = network.enterprise()
    result = await firm.my_records(["judicial"])
    (judicial,) = next(n for n in result.nodes if n.node == CHENGDU_NODE).records
    filed = await firm.dispute(CHENGDU_NODE, judicial["record_id"], "the case was settled")
    assert filed.status == dispute_pb2.DISPUTE_STATUS_OPEN and filed.record_id == judicial["record_id"]
    again = await firm.my_records(["judicial"])
    (flagged,) = next(n for n in again.nodes if n.node == CHENGDU_NODE).records
    assert flagged["record_id"] == judicial["record_id"] and flagged["disputed"] is True


async def test_the_self_access_is_audited_and_listed_as_one(network: Network):
    result = await network.enterprise().my_records(["registration", "tax"])
    for node in (CHENGDU_NODE, SICHUAN_NODE):
        (entry,) = self_accesses(await entries(network, node))
        assert (entry.caller_role, entry.caller_id, entry.uscc) == ("enterprise", CHENGDU_FIRM, CHENGDU_FIRM)
        assert entry.relayed_by == "national" and entry.consent_id == "" and entry.request_hash == result.request_hash
        assert entry.detail.startswith("self_access: ") and list(entry.categories) == ["registration", "tax"]
    assert self_accesses(await entries(network, SHANGHAI_NODE)) == []
    routed = [r for r in await entries(network, "registry") if r.action == "route_query" and r.purpose == "self_access"]
    assert len(routed) == 1 and routed[0].decision == audit_pb2.DECISION_ALLOW

    accesses, problems = await network.enterprise().accesses()
    assert problems == {}
    mine = [a for a in accesses if a.self_access]
    assert sorted(a.node for a in mine) == [SICHUAN_NODE, CHENGDU_NODE]
    for a in mine:
        j = a.to_json()
        assert j["self_access"] is True and j["institution"] == f"enterprise/{CHENGDU_FIRM}"
        assert (j["action"], j["purpose"], j["decision"]) == ("query", "self_access", "allow")
    assert not any(a.to_json()["self_access"] for a in accesses if a.record.action != "query")


# --- refusals -------------------------------------------------------------------------------------


async def test_another_enterprise_cannot_self_query_this_uscc(network: Network):
    shanghai = network.identity(Role.ENTERPRISE, SHANGHAI_FIRM)
    # Through the registry: refused there, forwarded to no node.
    before = {n: len(await entries(network, n)) for n in network.nodes}
    f = await refused(route(network, sign(shanghai, self_body()), SHANGHAI_FIRM, Role.ENTERPRISE))
    assert f.code == "PERMISSION_DENIED" and f.reason == "SELF_ACCESS_OF_ANOTHER_ENTERPRISE"
    assert f.fields[0][0] == "query.uscc" and f"enterprise/{SHANGHAI_FIRM}" in f.message
    # Names no third party: not the firm asked about, nor which nodes hold it.
    assert CHENGDU_FIRM not in f.message and not any(n in f.message for n in network.nodes)
    entry = await last_entry(network, "registry")
    assert (entry.action, entry.decision, entry.caller_id, entry.uscc) == (
        "route_query", audit_pb2.DECISION_DENY, SHANGHAI_FIRM, CHENGDU_FIRM)
    assert "SELF_ACCESS_OF_ANOTHER_ENTERPRISE" in entry.reason
    assert {n: len(await entries(network, n)) for n in network.nodes} == before

    # Straight to the node that holds the records: the node checks for itself, audits the
    # attempt, and the enterprise sees it among the accesses to its data.
    f = await refused(ask_node(network, CHENGDU_NODE, sign(shanghai, self_body()), SHANGHAI_FIRM, Role.ENTERPRISE))
    assert f.code == "PERMISSION_DENIED" and f.reason == "SELF_ACCESS_OF_ANOTHER_ENTERPRISE"
    assert CHENGDU_FIRM not in f.message
    entry = await last_entry(network, CHENGDU_NODE)
    assert (entry.action, entry.decision, entry.caller_id, entry.uscc, entry.purpose) == (
        "query", audit_pb2.DECISION_DENY, SHANGHAI_FIRM, CHENGDU_FIRM, "self_access")
    accesses, _ = await network.enterprise().accesses()
    attempt = [a for a in accesses if a.record.caller_id == SHANGHAI_FIRM]
    assert len(attempt) == 1 and not attempt[0].self_access and attempt[0].to_json()["decision"] == "deny"


async def test_a_bank_cannot_use_the_self_access_purpose(network: Network):
    bank = network.identity(Role.BANK, BANK)
    f = await refused(route(network, sign(bank, self_body())))
    assert f.code == "PERMISSION_DENIED" and f.reason == "POLICY_DENIED"
    assert "self-access-is-for-the-enterprise-itself" in f.message
    entry = await last_entry(network, "registry")
    assert entry.decision == audit_pb2.DECISION_DENY and "self-access-is-for-the-enterprise-itself" in entry.policy_ids
    # At the node too, asked directly.
    f = await refused(ask_node(network, CHENGDU_NODE, sign(bank, self_body())))
    assert f.code == "PERMISSION_DENIED" and f.reason == "POLICY_DENIED"
    assert "self-access-is-for-the-enterprise-itself" in (await last_entry(network, CHENGDU_NODE)).policy_ids
    # A bank about its own USCC is no enterprise either.
    f = await refused(route(network, sign(bank, self_body(uscc=BANK))))
    assert f.reason == "POLICY_DENIED" and "self-access-is-for-the-enterprise-itself" in f.message


async def test_a_self_access_names_no_consent_and_an_enterprise_signs_nothing_else(network: Network):
    firm = network.identity(Role.ENTERPRISE, CHENGDU_FIRM)
    f = await refused(route(network, sign(firm, self_body(consent_id="a" * 32)), CHENGDU_FIRM, Role.ENTERPRISE))
    assert f.code == "INVALID_ARGUMENT" and f.fields[0][0] == "query.consent_id" and "self_access" in f.message
    f = await refused(route(network, sign(firm, self_body(purpose="credit_assessment", consent_id="a" * 32)),
                            CHENGDU_FIRM, Role.ENTERPRISE))
    assert f.code == "UNAUTHENTICATED" and f.reason == "WRONG_SIGNER_ROLE" and "self_access" in f.message
    with pytest.raises(Refusal, match="query.consent_id"):
        build_query(firm, uscc=CHENGDU_FIRM, categories=["tax"], purpose="self_access", consent_id="b" * 32,
                    now_ms=now_ms())


async def test_a_representative_cannot_read_the_enterprise_s_records(network: Network):
    """Its delegation is held by the registry; the nodes that answer could not check it."""
    await network.enterprise().delegate("zhang-wei")
    rep = network.enterprise_as(Role.REPRESENTATIVE, "zhang-wei")
    with pytest.raises(ValueError, match="own identity"):
        await rep.my_records()
    envelope = sign(network.identity(Role.REPRESENTATIVE, "zhang-wei"), self_body())
    f = await refused(route(network, envelope, "zhang-wei", Role.REPRESENTATIVE))
    assert f.code == "UNAUTHENTICATED" and f.reason == "WRONG_SIGNER_ROLE"


async def test_the_daily_cap_refuses_with_a_clear_message_before_any_node_is_asked(network: Network):
    firm = network.enterprise()
    for _ in range(3):
        assert (await firm.my_records(["tax"])).answered
    with pytest.raises(Exception) as info:
        await firm.my_records(["tax"])
    f = info.value.failure
    assert f.code == "PERMISSION_DENIED" and f.reason == "FETCH_LIMIT" and f.fields[0][0] == "query.purpose"
    assert "at most 3 times a day" in f.message and "3 were answered" in f.message and "Beijing time" in f.message
    assert dict(f.metadata)["limit"] == "3"
    # The fourth reached no node: each answered three.
    for node in (CHENGDU_NODE, SICHUAN_NODE):
        assert len(self_accesses(await entries(network, node))) == 3
        assert self_accesses(await entries(network, node), audit_pb2.DECISION_DENY) == []
    # Another enterprise's cap is its own.
    assert (await network.enterprise(MIANYANG_FIRM).my_records(["tax"])).answered

    # Each node counts on its own: sent straight to a node, a fourth is refused there too.
    ident = network.identity(Role.ENTERPRISE, CHENGDU_FIRM)
    f = await refused(ask_node(network, SICHUAN_NODE, sign(ident, self_body(categories=["tax"])), CHENGDU_FIRM,
                               Role.ENTERPRISE))
    assert f.code == "PERMISSION_DENIED" and f.reason == "FETCH_LIMIT" and "at most 3 times a day" in f.message
    assert len(self_accesses(await entries(network, SICHUAN_NODE), audit_pb2.DECISION_DENY)) == 1


async def test_a_refused_self_access_does_not_count_against_the_cap(network: Network):
    firm = network.identity(Role.ENTERPRISE, CHENGDU_FIRM)
    for _ in range(3):  # unknown categories: refused before any node, nothing counted
        await refused(route(network, sign(firm, self_body(categories=["horoscope"])), CHENGDU_FIRM, Role.ENTERPRISE))
    client = network.enterprise()
    for _ in range(3):
        assert (await client.my_records(["registration"])).answered


async def test_the_node_cap_follows_the_policy_directory(network: Network, tmp_path):
    """The cap is configuration (fair_use.toml [self_access]), read by the node, as by the registry."""
    from node.server import NodeConfig, NodeServer

    from xinyi.policy import DEFAULT_POLICY_DIR
    import shutil

    policies = tmp_path / "policies-one-a-day"
    shutil.copytree(DEFAULT_POLICY_DIR, policies, ignore=shutil.ignore_patterns("__pycache__", "*.py"))
    text = (policies / "fair_use.toml").read_text()
    (policies / "fair_use.toml").write_text(text.replace("max_queries = 3", "max_queries = 1"))
    node = NodeServer(NodeConfig(network.identity(Role.NODE, "510700"), "127.0.0.1:0", network.databases.new("node510700"),
                                 registry=network.registry_addr, policy_dir=policies))
    await asyncio.to_thread(node.store.create_schema)
    await asyncio.to_thread(node.store.add_records, [Record(MIANYANG_FIRM, "tax", "2026-06-15", "国家税务总局绵阳市税务局",
                                                            {"period": "2026-05", "tax_paid": "3000.00",
                                                             "credit_rating": "B"})], now_ms())
    await node.start()
    network.nodes["510700"] = node  # stopped with the network
    await asyncio.wait_for(node.registered.wait(), 10)
    assert node.queries.self_access == SelfAccessRule(1, "day")
    firm = network.enterprise(MIANYANG_FIRM)
    first = {n.node: n for n in (await firm.my_records(["tax"])).nodes}
    assert first["510700"].status == "ok" and first["510700"].verified
    second = {n.node: n for n in (await firm.my_records(["tax"])).nodes}
    assert second["510700"].status == "denied" and second["510700"].reason == "FETCH_LIMIT"
    assert second[SICHUAN_NODE].status == "ok"  # the province allows three


# --- the rules, without a network ---------------------------------------------------------------


def test_self_access_sees_its_records_unmasked_but_aged_out():
    rules = MinimizationRules.from_dir()
    today = dt.date(2026, 7, 1)
    reg = Record(CHENGDU_FIRM, "registration", "2026-06-30", "成都市市场监督管理局",
                 {"name": "成都锦江测试科技有限公司", "legal_representative": "张三", "registered_capital": "1000000.00",
                  "established": "2015-03-02", "status": "active"})
    old_case = Record(CHENGDU_FIRM, "judicial", "2019-01-10", "成都市中级人民法院",
                      {"case_no": "(2019)川01民初1号", "court": "成都市中级人民法院", "filed": "2019-01-02",
                       "role": "defendant", "amount": "1000.00", "status": "closed"})
    own = rules.minimize_own([old_case, reg], categories=["registration", "judicial"], today=today)
    assert own == [reg]  # the closed case is past its five years; the registration untouched
    assert own[0].record_id == reg.key
    masked, _ = rules.minimize([reg], categories=["registration"], detail_level="detail", today=today)
    assert masked[0].fields["legal_representative"] == "张*"  # what a bank sees


def test_what_is_masked_for_the_enterprise_itself_is_configuration(tmp_path):
    from xinyi.policy import DEFAULT_POLICY_DIR

    text = (DEFAULT_POLICY_DIR / "minimization.toml").read_text()
    path = tmp_path / "minimization.toml"
    path.write_text(text.replace("[self_access.fields]\n", '[self_access.fields]\n"*.legal_representative" = "person_name"\n'))
    rules = MinimizationRules.from_file(path)
    reg = Record(CHENGDU_FIRM, "registration", "2026-06-30", "x", {"name": "n", "legal_representative": "张三",
                                                                   "registered_capital": "1.00", "established": "2015-03-02",
                                                                   "status": "active"}, stored_key="k" * 64)
    (own,) = rules.minimize_own([reg], categories=["registration"], today=dt.date(2026, 7, 1))
    assert own.fields["legal_representative"] == "张*" and own.record_id == "k" * 64  # still disputable
    path.write_text(text.replace("[self_access.fields]\n", '[self_access.fields]\n"*.legal_representative" = "nope"\n'))
    with pytest.raises(MinimizationConfigError, match=r"\[self_access.fields\].*unknown style 'nope'"):
        MinimizationRules.from_file(path)


def test_the_self_access_cap_is_read_strictly(tmp_path):
    from xinyi.policy import DEFAULT_POLICY_DIR

    assert FairUse.from_dir().self_access == SelfAccessRule(3, "day")
    text = (DEFAULT_POLICY_DIR / "fair_use.toml").read_text()
    head = text[: text.index("\n[self_access]") + 1]
    path = tmp_path / "fair_use.toml"
    path.write_text(head)
    assert FairUse.from_file(path).self_access == SelfAccessRule(3, "day")  # the documented default
    for body, says in [("max_queries = 0\nperiod = \"day\"", "max_queries"), ("max_queries = 2\nperiod = \"week\"", "period"),
                       ("max_queries = 2\nperiod = \"day\"\nburst = 1", "burst: unknown key"),
                       ("period = \"day\"", "max_queries: missing")]:
        path.write_text(head + "[self_access]\n" + body + "\n")
        with pytest.raises(FairUseError, match=r"\[self_access\] " + says):
            FairUse.from_file(path)
    path.write_text(head + "[self_access]\nmax_queries = 10\nperiod = \"month\"\n")
    rule = FairUse.from_file(path).self_access
    assert rule == SelfAccessRule(10, "month")
    at = int(dt.datetime(2026, 7, 15, 12, tzinfo=dt.timezone(dt.timedelta(hours=8))).timestamp() * 1000)
    assert rule.window_start(at) == int(dt.datetime(2026, 7, 1, tzinfo=dt.timezone(dt.timedelta(hours=8))).timestamp() * 1000)
    assert "from 2026-08-01 00:00 Beijing time" in rule.refusal(10, at).message
    # A node's policy directory from before self-access has no fair_use.toml: the default cap.
    assert self_access_rule(tmp_path) == SelfAccessRule(10, "month")
    assert self_access_rule(tmp_path / "elsewhere") == SelfAccessRule(3, "day")


def test_only_an_enterprise_builds_a_self_query():
    from xinyi.crypto.pki import RootCA

    root = RootCA.create()
    envelope, _ = build_self_query(root.issue(Principal(Role.ENTERPRISE, CHENGDU_FIRM)), now_ms=now_ms())
    body = query_pb2.QueryBody.FromString(envelope.body)
    assert (body.uscc, body.purpose, body.consent_id, list(body.categories)) == (
        CHENGDU_FIRM, "self_access", "", list(CATEGORIES))
    with pytest.raises(ValueError):
        build_self_query(root.issue(Principal(Role.BANK, BANK)), now_ms=now_ms())


# --- the command line -----------------------------------------------------------------------------


async def test_xinyi_my_data_prints_each_node_s_records_with_their_ids(network: Network, tmp_path):
    from test_cli import one_line, xinyi

    ids = tmp_path / "ids"
    firm = ["--identity", network.identity(Role.ENTERPRISE, CHENGDU_FIRM).save(ids), "--registry", network.registry_addr]
    stored = {n: {r.record_id for r in await asyncio.to_thread(network.nodes[n].store.fetch_records, CHENGDU_FIRM,
                                                               list(CATEGORIES))} for n in (CHENGDU_NODE, SICHUAN_NODE)}

    code, out, err = await xinyi("my-data", *firm, "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["uscc"] == CHENGDU_FIRM
    nodes = {n["node"]: n for n in result["nodes"]}
    assert list(nodes) == [CHENGDU_NODE, SICHUAN_NODE] and all(n["verified"] for n in nodes.values())
    for node_id, ids_there in stored.items():
        assert {r["record_id"] for r in nodes[node_id]["records"]} == ids_there

    code, out, err = await xinyi("my-data", *firm, "--category", "judicial", "--category", "registration")
    assert code == 0, err
    assert "node 510100 Chengdu: 2 record(s) (verified)" in out and "node 510000 Sichuan: no records (verified)" in out
    for record_id in stored[CHENGDU_NODE]:
        assert f"record {record_id}" in out
    assert "张三" in out and "dispute file" in out

    # Listed as a self-access in the enterprise's own view.
    code, out, err = await xinyi("access", "list", *firm)
    assert code == 0, err
    assert out.count("you (self-access)") == 4  # two queries, two nodes each

    # The third is answered; the fourth is refused, one line saying why.
    code, _, err = await xinyi("my-data", *firm)
    assert code == 0, err
    code, out, err = await xinyi("my-data", *firm)
    assert code == 1 and "FETCH_LIMIT" not in out
    line = one_line(err)
    assert "PERMISSION_DENIED" in line and "at most 3 times a day" in line

    # A bank's identity is a usage error, not a query.
    code, _, err = await xinyi("my-data", "--identity", network.identity(Role.BANK, BANK).save(ids),
                               "--registry", network.registry_addr)
    assert code == 2 and "enterprise identity" in one_line(err)
    code, _, err = await xinyi("my-data", *firm, "--category", "horoscope")
    assert code == 2 and "--category: unknown category" in one_line(err)


# --- a node of several worker processes -----------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_the_cap_is_counted_once_for_a_node_of_several_workers(databases, tmp_path):
    """Eight self-accesses at once on eight connections to a node of two workers: the sequencer
    counts for both, so exactly three are answered."""
    from collections import Counter

    from processes import NODE, Proc, free_port, network_identities, seed_node, wait_registered
    from test_workers import ask_on_fresh_channel

    logs = tmp_path / "logs"
    logs.mkdir()
    ids, dirs = network_identities(tmp_path / "certs")
    node_db, registry_db = databases.new(f"node{NODE}"), databases.new("registry")
    seed_node(node_db)
    registry, node_addr = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    reg = Proc("registry", ["registry", "serve", "--identity", str(dirs["registry"]), "--listen", registry,
                            "--db", registry_db], logs)
    node = Proc("node", ["node", "serve", "--identity", str(dirs["node"]), "--listen", node_addr, "--registry", registry,
                         "--db", node_db, "--workers", "2"], logs)
    firm = ids["enterprise"]
    try:
        reg.start()
        node.start()
        await wait_registered(ids["bank"], ids["auditor"], registry, node_addr, [reg, node])
        queries = [sign(firm, self_body(categories=["registration"])) for _ in range(8)]
        outcomes = Counter(await asyncio.gather(*(ask_on_fresh_channel(firm, node_addr, q) for q in queries)))
        assert outcomes == Counter({"ok": 3, "FETCH_LIMIT": 5}), outcomes
    except BaseException:
        for p in (reg, node):
            print(p.dump_logs())
        raise
    finally:
        for p in (reg, node):
            p.kill()
