"""Nobody with a certificate can bloat an audit log or break its verification.

Every field of every request has a size limit, checked before any work; what is echoed into an
error or a log is bounded; a page of the log is bounded by bytes; and a log that already holds
huge entries (written before these bounds) is still read, verified and reconciled. Real servers
on loopback, on SQLite and PostgreSQL; the CLI as a separate process."""

from __future__ import annotations

import asyncio
import json

import grpc
import pytest
from harness import BANK, CHENGDU_FIRM, SEED, Network
from test_cli import xinyi

from node.server import NodeConfig, NodeServer
from registry.server import RegistryConfig, RegistryServer
from xinyi.audit import merkle
from xinyi.audit.entry import AuditEntry
from xinyi.audit.verify import verify_log
from xinyi.clock import now_ms
from xinyi.crypto.envelope import sign
from xinyi.crypto.identity import Principal, Role
from xinyi.crypto.pki import RootCA
from xinyi.errors import bounded
from xinyi.rpc.limits import DEFAULT_BYTES, DEFAULT_ITEMS, DEFAULT_STRING_CHARS, LIMITS
from xinyi.rpc.status import RpcFailure
from xinyi.v1 import (
    access_pb2,
    alerts_pb2,
    audit_pb2,
    consent_pb2,
    dispute_pb2,
    envelope_pb2,
    node_pb2,
    query_pb2,
    registry_pb2,
    registry_pb2_grpc,
    scoring_pb2,
    stats_pb2,
)

HUGE = 3_900_000  # what the attack sent: two such calls broke `audit verify` for good
TRANSPORT_LIMIT = 4 * 1024 * 1024
NODE_SERVICES = [node_pb2.DESCRIPTOR.services_by_name["NodeService"],
                 scoring_pb2.DESCRIPTOR.services_by_name["NodeEvaluationService"],
                 alerts_pb2.DESCRIPTOR.services_by_name["NodeAlertService"],
                 stats_pb2.DESCRIPTOR.services_by_name["NodeStatisticsService"],
                 audit_pb2.DESCRIPTOR.services_by_name["AuditService"]]
REGISTRY_SERVICES = [registry_pb2.DESCRIPTOR.services_by_name["RegistryService"],
                     consent_pb2.DESCRIPTOR.services_by_name["ConsentService"],
                     registry_pb2.DESCRIPTOR.services_by_name["WitnessService"],
                     access_pb2.DESCRIPTOR.services_by_name["AccessService"],
                     dispute_pb2.DESCRIPTOR.services_by_name["DisputeService"],
                     scoring_pb2.DESCRIPTOR.services_by_name["ModelService"],
                     alerts_pb2.DESCRIPTOR.services_by_name["AlertService"],
                     stats_pb2.DESCRIPTOR.services_by_name["StatisticsService"],
                     audit_pb2.DESCRIPTOR.services_by_name["AuditService"]]


# --- what is echoed is bounded ----------------------------------------------------------------------
def test_bounded_strips_control_characters_and_marks_what_it_cut():
    assert bounded("ok\n\x00forged line\u202e") == "okforged line"
    cut = bounded("x" * 4_000_000, 100)
    assert cut.startswith("x" * 100) and cut.endswith("…[3999900 more characters]") and len(cut) < 130
    assert bounded("成都锦江测试科技有限公司") == "成都锦江测试科技有限公司"  # text is kept as it is


def test_an_audit_entry_is_bounded_when_made_whatever_a_handler_passes():
    huge = "\n" + "y" * HUGE
    entry = AuditEntry(at_ms=1, caller_role="bank", caller_id=BANK, action="query", decision="deny", uscc=huge,
                       categories=tuple(huge for _ in range(100)), purpose=huge, consent_id=huge, policy_ids=(huge,),
                       reason=huge, request_hash=huge, trace_id=huge, detail=huge, relayed_by=huge)
    leaf = entry.to_record(0, b"").SerializeToString(deterministic=True)
    assert len(leaf) < 64 * 1024
    assert "\n" not in entry.reason and entry.categories[-1] == "…[68 more]"


# --- every field of every request has a limit ---------------------------------------------------
def _limit_of(field) -> tuple[int, int]:
    limit = LIMITS.get(field.full_name)
    size = (limit.size if limit and limit.size else DEFAULT_STRING_CHARS if field.type == field.TYPE_STRING
            else DEFAULT_BYTES)
    return size, (limit.items if limit and limit.items else DEFAULT_ITEMS)


def _oversized_requests(request_type, prefix=(), depth=0):
    """(field path, request) for every string, bytes and repeated field reachable in a request
    (each once), with a value one over its limit, where the transport would carry it."""
    for field in request_type.fields:
        path = (*prefix, field.name)
        size, items = _limit_of(field)
        if field.is_repeated:
            yield ".".join(path), items, (path, "items", items + 1)
        if field.type == field.TYPE_MESSAGE:
            if depth < 3 and not field.message_type.GetOptions().map_entry:
                for inner_path, limit, how in _oversized_requests(field.message_type, path, depth + 1):
                    # A path through a repeated message goes into its first item.
                    yield (inner_path.replace(f"{'.'.join(path)}.", f"{'.'.join(path)}[0].", 1)
                           if field.is_repeated else inner_path), limit, how
        elif field.type in (field.TYPE_STRING, field.TYPE_BYTES) and size + 1 < TRANSPORT_LIMIT - 64 * 1024:
            path_str = ".".join(path) + ("[0]" if field.is_repeated else "")
            yield path_str, size, (path, "size", size + 1)


def _build(request_type, how):
    from google.protobuf import message_factory

    path, kind, n = how
    request = message_factory.GetMessageClass(request_type)()
    target = request
    for name in path[:-1]:
        child = getattr(target, name)
        target = child.add() if hasattr(child, "add") else child
    field = target.DESCRIPTOR.fields_by_name[path[-1]]
    value = "x" * n if field.type == field.TYPE_STRING else b"x" * n
    container = getattr(target, path[-1])
    if kind == "items":
        if field.type == field.TYPE_MESSAGE:
            for _ in range(n):
                container.add()
        else:
            container.extend([value[:0]] * n)
    elif field.is_repeated:
        container.append(value)
    else:
        setattr(target, path[-1], value)
    return request


async def _every_field_over_its_limit_is_refused(net: Network, target: str, expect, services, store) -> int:
    channel = net.channel(Role.BANK, BANK, target, expect).channel
    refused = 0
    for service in services:
        for method in service.methods:
            seen = set()
            for path, limit, how in _oversized_requests(method.input_type):
                if path in seen:
                    continue
                seen.add(path)
                request = _build(method.input_type, how)
                call = channel.unary_unary(f"/{service.full_name}/{method.name}",
                                           request_serializer=lambda m: m.SerializeToString(),
                                           response_deserializer=lambda b: b)
                size = await asyncio.to_thread(store.audit_log_size)
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await call(request, timeout=20)
                f = RpcFailure.from_error(info.value)
                where = f"{service.name}/{method.name} {path}"
                assert f.code == "INVALID_ARGUMENT" and f.reason == "TOO_LARGE", (where, f)
                assert f.fields and f.fields[0][0] == path and str(limit) in f.message, (where, f)
                # Refused before any work, and audited: exactly one entry, small, naming the method.
                assert await asyncio.to_thread(store.audit_log_size) == size + 1, where
                (last,) = await asyncio.to_thread(store.audit_entries, size, size + 1)
                record = last.record()
                assert record.decision == audit_pb2.DECISION_DENY and record.action == f"{service.name.removesuffix('Service')}/{method.name}"
                assert len(last.leaf_input) < 4096, where
                refused += 1
    return refused


async def _verified(net: Network, target: str, expect, origin: str):
    from xinyi.cli.audit import fetch_log, log_key

    auditor = net.auditor(target, expect)
    response, directory, entries = await fetch_log(auditor)
    report, _ = verify_log(response.checkpoint, origin, log_key(directory, origin), entries)
    assert report.ok, report.problems
    return entries


async def test_every_field_of_every_request_over_its_limit_is_refused_before_any_work(network: Network):
    node = network.nodes["510100"]
    at_node = await _every_field_over_its_limit_is_refused(
        network, network.node_addr("510100"), Principal(Role.NODE, "510100"), NODE_SERVICES, node.store)
    at_registry = await _every_field_over_its_limit_is_refused(
        network, network.registry_addr, Role.REGISTRY, REGISTRY_SERVICES, network.registry.store)
    assert at_node >= 60 and at_registry >= 50  # every method with a field, every field of it
    await _verified(network, network.node_addr("510100"), Principal(Role.NODE, "510100"), "xinyi/510100")
    await _verified(network, network.registry_addr, Role.REGISTRY, "xinyi/national")


async def test_the_huge_body_type_attack_is_refused_and_the_logs_stay_verifiable(network: Network, tmp_path):
    bank = network.identity(Role.BANK, BANK)
    query = sign(bank, query_pb2.QueryBody(uscc=CHENGDU_FIRM, categories=["tax"], purpose="credit_assessment",
                                           consent_id="a" * 32, nonce=b"n" * 16, issued_at_ms=now_ms(),
                                           answer_key=b"k" * 32))
    query.body_type = "\n" + "q" * HUGE  # unsigned, and 3.9 MB
    registry = registry_pb2_grpc.RegistryServiceStub(
        network.channel(Role.BANK, BANK, network.registry_addr, Role.REGISTRY).channel)
    node = network.channel(Role.BANK, BANK, network.node_addr("510100"), Principal(Role.NODE, "510100")).channel
    node_query = node.unary_unary("/xinyi.v1.NodeService/Query", request_serializer=lambda m: m.SerializeToString(),
                                  response_deserializer=query_pb2.NodeResult.FromString)
    consent = consent_pb2.GrantConsentRequest(consent=envelope_pb2.SignedEnvelope(body_type="c" * HUGE, body=b"x"))
    grant = network.channel(Role.ENTERPRISE, CHENGDU_FIRM, network.registry_addr, Role.REGISTRY).channel.unary_unary(
        "/xinyi.v1.ConsentService/GrantConsent", request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=lambda b: b)
    for _ in range(2):
        for call, request, field in ((registry.RouteQuery, registry_pb2.RouteQueryRequest(query=query), "query.body_type"),
                                     (node_query, query_pb2.QueryRequest(query=query), "query.body_type"),
                                     (grant, consent, "consent.body_type")):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await call(request, timeout=20)
            f = RpcFailure.from_error(info.value)
            assert f.code == "INVALID_ARGUMENT" and f.fields[0][0] == field
            assert f"{HUGE + (1 if field.startswith('query') else 0)} characters; at most 256" in f.message
            assert len(info.value.details()) < 300
    # The logs hold short refusals and verify, through the CLI as an auditor runs it.
    auditor = str(network.identity(Role.AUDITOR, "audit-office").save(tmp_path / "ids"))
    for where in (["--node", network.node_addr("510100")], ["--registry", network.registry_addr]):
        code, out, err = await xinyi("audit", "verify", "--identity", auditor, *where,
                                     "--state", str(tmp_path / f"{where[0]}.json"))
        assert code == 0 and ": OK" in out, err
    code, out, err = await xinyi("audit", "reconcile", "--identity", auditor, "--registry", network.registry_addr, "--json")
    assert code == 0, err
    entries = await _verified(network, network.registry_addr, Role.REGISTRY, "xinyi/national")
    assert max(len(leaf) for _, leaf in entries) < 4096


# --- a log that already holds huge entries is still read and verified ---------------------------------
def _seed_huge_entries(store, sizes: list[int]) -> None:
    """Append entries as an older version, before entries were bounded, wrote them: chained and
    hashed like any other, straight into the store (the server is not running yet)."""
    store.create_schema()
    tracker = merkle.RootTracker()
    for index, size in enumerate(sizes):
        record = audit_pb2.AuditRecord(index=index, at_ms=now_ms(), caller_role="bank", caller_id=BANK,
                                       action="route_query", decision=audit_pb2.DECISION_DENY,
                                       reason="INVALID_FIELD: query.body_type: is " + "'" * size,
                                       prev_root=tracker.root())
        leaf = record.SerializeToString(deterministic=True)
        leaf_hash = merkle.leaf_hash(leaf)
        store.append_audit_batch([{"idx": index, "leaf_input": leaf, "leaf_hash": leaf_hash, "at_ms": record.at_ms,
                                   "caller_id": BANK, "action": record.action, "uscc": "", "decision": "deny",
                                   "request_hash": ""}])
        tracker.append(leaf_hash)


async def _network_with_huge_logs(tmp_path, databases) -> Network:
    # Two entries near the old 4 MiB message limit side by side (no page may hold both), and one
    # larger than an ordinary message may be (the auditor's channel must still receive it).
    sizes = [100, HUGE, HUGE, 5 * 1024 * 1024, 100]
    net = Network(RootCA.create(), tmp_path, databases)
    net.registry = RegistryServer(RegistryConfig(net.identity(Role.REGISTRY, "national"), "127.0.0.1:0",
                                                 databases.new("registry")))
    await asyncio.to_thread(_seed_huge_entries, net.registry.store, sizes)
    await net.registry.start()
    for node_id in ("510100", "510000"):
        node = NodeServer(NodeConfig(net.identity(Role.NODE, node_id), "127.0.0.1:0", databases.new(f"node{node_id}"),
                                     registry=net.registry_addr))
        await asyncio.to_thread(_seed_huge_entries, node.store, sizes)
        await asyncio.to_thread(node.store.add_records, list(SEED[node_id]), now_ms())
        await node.start()
        await asyncio.wait_for(node.registered.wait(), 10)
        net.nodes[node_id] = node
    await net.register_institution(BANK)  # consents may name only known institutions
    return net


@pytest.mark.slow  # a minute of make test's budget between these; CI runs them in make test-slow
async def test_verify_log_and_reconcile_work_over_a_log_holding_huge_entries(databases, tmp_path):
    net = await _network_with_huge_logs(tmp_path, databases)
    try:
        consent = await net.grant()
        result = await net.bank().query(CHENGDU_FIRM, ["registration", "tax"], "credit_assessment", consent)
        assert result.answered
        auditor = str(net.identity(Role.AUDITOR, "audit-office").save(tmp_path / "ids"))
        for where in (["--node", net.node_addr("510100")], ["--registry", net.registry_addr]):
            code, out, err = await xinyi("audit", "verify", "--identity", auditor, *where,
                                         "--state", str(tmp_path / f"{where[0]}.json"), timeout=120)
            assert code == 0 and ": OK, " in out, err
            code, out, err = await xinyi("audit", "log", "--identity", auditor, *where, "--json", timeout=120)
            assert code == 0, err
            rows = json.loads(out)
            assert [r["index"] for r in rows] == list(range(len(rows))) and len(rows) > 5
            assert len(rows[3]["reason"]) > HUGE  # served whole: the log is what it is
        code, out, err = await xinyi("audit", "reconcile", "--identity", auditor, "--registry", net.registry_addr,
                                     "--json", timeout=120)
        report = json.loads(out)
        assert code == 0 and report["routings_checked"] == 2 and report["unreachable_nodes"] == {}, err
    finally:
        await net.stop()


async def test_an_entry_too_long_for_the_search_columns_fails_no_group_commit(db_url: str):
    """A malformed USCC or a long action in one refused request must not fail the commit of the
    entries written with it (PostgreSQL enforces column sizes), nor be found as a real USCC."""
    from node.store import NodeStore
    from xinyi.audit.log import AuditLog

    root = RootCA.create()
    identity = root.issue(Principal(Role.NODE, "510100"))
    store = NodeStore(db_url)
    store.create_schema()
    log = AuditLog(store, identity, now_ms)
    await log.open()
    odd = AuditEntry(at_ms=1, caller_role="bank", caller_id=BANK, action="NodeEvaluation/ComputeFeatures-and-more",
                     decision="deny", uscc=CHENGDU_FIRM + "X", request_hash="f" * 80)
    fine = [AuditEntry(at_ms=1, caller_role="bank", caller_id=BANK, action="query", decision="allow", uscc=CHENGDU_FIRM)
            for _ in range(5)]
    indexes = await asyncio.gather(*(log.append(e) for e in (*fine[:2], odd, *fine[2:])))
    assert sorted(indexes) == list(range(6))
    assert [e.index for e in store.find_audit(uscc=CHENGDU_FIRM)] == [i for i in range(6) if i != indexes[2]]
    (stored,) = store.audit_entries(indexes[2], indexes[2] + 1)
    assert stored.record().uscc == CHENGDU_FIRM + "X"  # the entry keeps what was sent
    await log.close()
    store.close()
