"""An enterprise follows its own disputes (DisputeService.ListMyDisputes), through the real
servers of the `network` fixture (registry + nodes 510100, 510000, 310000 over mutual TLS, on
SQLite and on PostgreSQL):

- the enterprise's signed request is relayed to every node on its route; each node checks the
  signature itself and answers with that enterprise's disputes only (state, filed and due dates,
  overdue, the written reply, the corrected record), in a body it signs and binds to the request;
- another enterprise sees none of them; a bank is refused (PERMISSION_DENIED, naming no one else);
- a node that cannot be reached is reported for that node, the others' lists still shown;
- an answer the registry forged, altered, relabelled, replayed or dropped is not accepted;
- `xinyi dispute list --registry` shows it all.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys

import grpc
import pytest
from harness import BANK, CHENGDU_FIRM, MIANYANG_FIRM, SEED, SHANGHAI_FIRM, Network

from node.server import NodeConfig, NodeServer
from node.store import Record
from xinyi.client import ClientError, EnterpriseClient, OperatorClient
from xinyi.clock import DAY_MS, now_ms
from xinyi.crypto.envelope import sign
from xinyi.crypto.identity import Principal, Role
from xinyi.privacy.disputes import (
    MAX_ANSWER_BYTES,
    MIN_ANSWER_BYTES,
    DisputeAnswerError,
    answer_body,
    UnlistedDisputeKey,
    answer_hash,
    build_my_disputes_request,
    verify_node_disputes,
)
from xinyi.rpc.status import RpcFailure
from xinyi.v1 import audit_pb2, dispute_pb2, dispute_pb2_grpc, node_pb2_grpc

CHENGDU, SICHUAN, SHANGHAI = "510100", "510000", "310000"
JUDICIAL = SEED[CHENGDU][1]  # the Chengdu firm's court case, at the Chengdu node
TAX = SEED[SICHUAN][0]       # the Chengdu firm's tax record, at the Sichuan node
assert JUDICIAL.uscc == TAX.uscc == CHENGDU_FIRM
OPEN, CONFIRMED, CORRECTED = (dispute_pb2.DISPUTE_STATUS_OPEN, dispute_pb2.DISPUTE_STATUS_CONFIRMED,
                              dispute_pb2.DISPUTE_STATUS_CORRECTED)


async def xinyi(*args: object, timeout: float = 60) -> tuple[int, str, str]:
    """Run `python -m xinyi.cli ARGS` (as tests/test_cli.py does); (returncode, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "xinyi.cli", *map(str, args),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL)
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert "Traceback" not in err.decode(), err.decode()
    return proc.returncode, out.decode(), err.decode()


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("xinyi: "), stderr
    return lines[0]


def operator(net: Network, node_id: str) -> OperatorClient:
    return net._track(OperatorClient(net.identity(Role.NODE, node_id), net.node_addr(node_id)))


async def file_two(net: Network) -> tuple[dispute_pb2.Dispute, dispute_pb2.Dispute]:
    """The Chengdu firm disputes its court case at the Chengdu node, then its tax record at the
    Sichuan node; the Chengdu node's operator confirms the first."""
    enterprise = net.enterprise()
    case = await enterprise.dispute(CHENGDU, JUDICIAL.key, "the amount is wrong")
    await asyncio.sleep(0.005)  # filed one after the other, in that order
    tax = await enterprise.dispute(SICHUAN, TAX.key, "we paid 15000.00 for 2026-05")
    await operator(net, CHENGDU).resolve(case.dispute_id, "confirmed", "the court's judgment states 50000.00")
    return case, tax


def failure_of(info) -> RpcFailure:
    e = info.value
    return e.failure if isinstance(e, ClientError) else RpcFailure.from_error(e)


def texts(f: RpcFailure) -> str:
    """Everything a caller reads of a refusal."""
    return " | ".join([f.code, f.reason, f.message, *(f"{a}: {b}" for a, b in f.fields),
                       *(f"{k}={v}" for k, v in f.metadata)])


# --- the enterprise's list ---------------------------------------------------------------------
async def test_an_enterprise_follows_its_disputes_at_two_nodes(network: Network):
    net = network
    before = now_ms()
    case, tax = await file_two(net)

    disputes, problems = await net.enterprise().disputes()
    assert problems == {}
    # Newest filed first: the tax dispute, still open; the court case, confirmed with the reply.
    assert [d.dispute_id for d in disputes] == [tax.dispute_id, case.dispute_id]
    listed_tax, listed_case = disputes
    assert (listed_tax.node_id, listed_tax.record_id, listed_tax.uscc) == (SICHUAN, TAX.key, CHENGDU_FIRM)
    assert listed_tax.status == OPEN and not listed_tax.overdue and listed_tax.resolution == ""
    assert listed_tax.reason == "we paid 15000.00 for 2026-05" and listed_tax.resolved_at_ms == 0
    assert (listed_case.node_id, listed_case.record_id, listed_case.uscc) == (CHENGDU, JUDICIAL.key, CHENGDU_FIRM)
    assert listed_case.status == CONFIRMED and not listed_case.overdue
    assert listed_case.resolution == "the court's judgment states 50000.00"
    assert listed_case.resolved_at_ms >= listed_case.filed_at_ms and listed_case.corrected_record_id == ""
    for listed, filed in ((listed_tax, tax), (listed_case, case)):
        assert listed.filed_at_ms == filed.filed_at_ms and before <= listed.filed_at_ms <= now_ms()
        assert listed.due_ms == listed.filed_at_ms + 20 * DAY_MS
        assert listed.filed_by == f"enterprise/{CHENGDU_FIRM}"

    # A correction shows the record that replaced the disputed one.
    corrected_fields = dict(TAX.fields, tax_paid="15000.00")
    corrected = await operator(net, SICHUAN).resolve(tax.dispute_id, "corrected", "the payment of May was missing",
                                                     corrected_fields)
    disputes, problems = await net.enterprise().disputes()
    assert problems == {}
    listed_tax = next(d for d in disputes if d.dispute_id == tax.dispute_id)
    assert listed_tax.status == CORRECTED and listed_tax.resolution == "the payment of May was missing"
    assert listed_tax.corrected_record_id == corrected.corrected_record_id
    assert listed_tax.corrected_record_id == Record(CHENGDU_FIRM, "tax", TAX.as_of, TAX.source, corrected_fields).key

    # Each node logged who asked (the enterprise, relayed by the registry) and what it answered.
    for node_id in (CHENGDU, SICHUAN):
        log = await net.auditor(net.node_addr(node_id), Principal(Role.NODE, node_id)).records()
        reads = [r for r in log if r.action == "read_disputes"]
        assert len(reads) == 2 and all(
            (r.decision, r.caller_role, r.caller_id, r.relayed_by, r.uscc, r.reason)
            == (audit_pb2.DECISION_ALLOW, "enterprise", CHENGDU_FIRM, "national", CHENGDU_FIRM, "1 dispute")
            for r in reads), reads
    registry_log = await net.auditor(net.registry_addr, Role.REGISTRY).records()
    asked = [r.reason for r in registry_log if r.action == "read_disputes"]
    assert asked == [f"asked {CHENGDU},{SICHUAN}"] * 2


async def test_another_enterprise_sees_none_of_them(network: Network):
    net = network
    await file_two(net)
    # The Shanghai firm (route: Shanghai) and the Mianyang firm (route: Sichuan, and Shanghai,
    # which holds its branch's penalty): the Sichuan node holds a dispute, not theirs.
    for uscc, route in ((SHANGHAI_FIRM, SHANGHAI), (MIANYANG_FIRM, f"{SICHUAN},{SHANGHAI}")):
        disputes, problems = await net.enterprise(uscc).disputes()
        assert disputes == [] and problems == {}, (uscc, disputes, problems)
        log = await net.auditor(net.registry_addr, Role.REGISTRY).records()
        (read,) = [r for r in log if r.action == "read_disputes" and r.caller_id == uscc]
        assert read.reason == f"asked {route}"
    # The nodes answered each with an empty list, signed: no dispute of another enterprise left them.
    log = await net.auditor(net.node_addr(SICHUAN), Principal(Role.NODE, SICHUAN)).records()
    assert [r.reason for r in log if r.action == "read_disputes"] == ["0 disputes"]


async def test_an_overdue_dispute_is_said_to_be_overdue(network: Network):
    """A node of our own with a clock we move; the enterprise asks it directly (no registry,
    whose clock stays real), signing at the node's time, and reads the node's signed answer."""
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
    enterprise = net.enterprise(MIANYANG_FIRM)
    filed = await enterprise.dispute(node_id, record.key, "we were rated A for 2026-05")
    identity = net.identity(Role.ENTERPRISE, MIANYANG_FIRM)
    stub = node_pb2_grpc.NodeServiceStub(net.channel(Role.ENTERPRISE, MIANYANG_FIRM, net.node_addr(node_id),
                                                     Principal(Role.NODE, node_id)).channel)

    async def ask() -> dispute_pb2.NodeDisputesBody:
        request = build_my_disputes_request(identity, now_ms() + offset[0])
        answer = (await stub.ListMyDisputes(dispute_pb2.NodeListMyDisputesRequest(request=request))).answer
        return verify_node_disputes(answer, node_id=node_id, directory=await enterprise.directory(refresh=True),
                                    uscc=MIANYANG_FIRM, request_hash=answer_hash(request), trust=identity.trust())

    offset[0] = 19 * DAY_MS
    (d,) = (await ask()).disputes
    assert d.dispute_id == filed.dispute_id and d.status == OPEN and not d.overdue
    offset[0] = 21 * DAY_MS
    body = await ask()
    (d,) = body.disputes
    assert d.status == OPEN and d.overdue and d.due_ms == filed.filed_at_ms + 20 * DAY_MS
    assert body.answered_at_ms > d.due_ms
    # Through the registry, whose clock is 21 days behind this node's: the node refuses the request
    # as stale, and that is said for that node, with its reason; the other nodes' lists stand.
    disputes, problems = await enterprise.disputes()
    assert disputes == [] and list(problems) == [node_id], problems
    assert problems[node_id].startswith("INVALID_ARGUMENT: request.issued_at_ms: is more than 300 s"), problems
    raw = await dispute_pb2_grpc.DisputeServiceStub(enterprise.channel).ListMyDisputes(
        dispute_pb2.ListMyDisputesRequest(request=build_my_disputes_request(identity, now_ms())))
    assert {n.node_id: (n.error_code, n.error_reason) for n in raw.nodes if n.error} == {
        node_id: ("INVALID_ARGUMENT", "STALE_TIMESTAMP")}
    assert {n.node_id for n in raw.nodes} == {node_id, SICHUAN, SHANGHAI}
    # Answered late: no longer overdue.
    await operator(net, node_id).resolve(filed.dispute_id, "confirmed", "the rating for 2026-05 is B")
    (d,) = (await ask()).disputes
    assert d.status == CONFIRMED and not d.overdue and d.resolution == "the rating for 2026-05 is B"


async def test_a_node_that_cannot_be_reached_is_reported_for_that_node(network: Network):
    net = network
    case, tax = await file_two(net)
    sichuan = net.nodes.pop(SICHUAN)
    await sichuan.stop(0)
    disputes, problems = await net.enterprise().disputes()
    assert [d.dispute_id for d in disputes] == [case.dispute_id]
    assert problems == {SICHUAN: "UNAVAILABLE: the node could not be reached; try again later"}  # not the transport's text
    log = await net.auditor(net.registry_addr, Role.REGISTRY).records()
    (read,) = [r for r in log if r.action == "read_disputes"]
    assert read.decision == audit_pb2.DECISION_ALLOW and read.reason.endswith(f"no answer from {SICHUAN}")


# --- refusals ------------------------------------------------------------------------------------
async def test_a_bank_is_refused_and_told_of_no_one_else(network: Network):
    net = network
    await file_two(net)
    bank = net.identity(Role.BANK, BANK)
    own = build_my_disputes_request(bank, now_ms())
    firms = build_my_disputes_request(net.identity(Role.ENTERPRISE, CHENGDU_FIRM), now_ms())
    seen = []
    # Through the registry, with its own signed request or with the firm's: refused before any node is asked.
    registry = dispute_pb2_grpc.DisputeServiceStub(net.channel(Role.BANK, BANK, net.registry_addr, Role.REGISTRY).channel)
    for request in (own, firms):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await registry.ListMyDisputes(dispute_pb2.ListMyDisputesRequest(request=request))
        f = failure_of(info)
        assert (f.code, f.reason) == ("PERMISSION_DENIED", "POLICY_DENIED"), f
        assert "no-reading-another-enterprises-disputes" in f.message
        seen.append(texts(f))
    # The client library says the same.
    with pytest.raises(ClientError) as info:
        await net.enterprise_as(Role.BANK, BANK).disputes()
    f = failure_of(info)
    assert (f.code, f.reason) == ("PERMISSION_DENIED", "POLICY_DENIED")
    seen.append(texts(f))
    # Straight to a node, with its own signed request: the node refuses it too.
    node = node_pb2_grpc.NodeServiceStub(net.channel(Role.BANK, BANK, net.node_addr(CHENGDU),
                                                     Principal(Role.NODE, CHENGDU)).channel)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await node.ListMyDisputes(dispute_pb2.NodeListMyDisputesRequest(request=build_my_disputes_request(bank, now_ms())))
    f = failure_of(info)
    assert (f.code, f.reason) == ("PERMISSION_DENIED", "POLICY_DENIED"), f
    seen.append(texts(f))
    for text in seen:
        for party in (CHENGDU_FIRM, "the amount is wrong", JUDICIAL.key, TAX.key):
            assert party not in text, f"{party} is named in: {text}"
    # Nothing was asked of the nodes on the bank's behalf; the refusals are in the audit logs.
    registry_log = await net.auditor(net.registry_addr, Role.REGISTRY).records()
    refusals = [r for r in registry_log if r.action == "read_disputes"]
    assert len(refusals) == 3 and all(r.decision == audit_pb2.DECISION_DENY and r.caller_id == BANK for r in refusals)
    node_log = await net.auditor(net.node_addr(CHENGDU), Principal(Role.NODE, CHENGDU)).records()
    assert [(r.decision, r.caller_id) for r in node_log if r.action == "read_disputes"] == [(audit_pb2.DECISION_DENY, BANK)]


async def test_requests_the_caller_did_not_sign_or_that_are_stale_are_refused(network: Network):
    net = network
    await file_two(net)
    firm = net.identity(Role.ENTERPRISE, CHENGDU_FIRM)
    other = dispute_pb2_grpc.DisputeServiceStub(
        net.channel(Role.ENTERPRISE, SHANGHAI_FIRM, net.registry_addr, Role.REGISTRY).channel)
    mine = dispute_pb2_grpc.DisputeServiceStub(
        net.channel(Role.ENTERPRISE, CHENGDU_FIRM, net.registry_addr, Role.REGISTRY).channel)
    cases = [
        # The Chengdu firm's request, sent by the Shanghai firm (a copy it got hold of).
        (other, build_my_disputes_request(firm, now_ms()), "UNAUTHENTICATED", "SIGNER_IS_NOT_CALLER"),
        # Signed 10 minutes ago.
        (mine, build_my_disputes_request(firm, now_ms() - 600_000), "INVALID_ARGUMENT", "STALE_TIMESTAMP"),
        # Another kind of statement passed off as this one.
        (mine, sign(firm, dispute_pb2.DisputeBody(uscc=CHENGDU_FIRM, node_id=CHENGDU, record_id="a" * 64, reason="x",
                                                  issued_at_ms=now_ms(), nonce=os.urandom(16))),
         "INVALID_ARGUMENT", "INVALID_FIELD"),
    ]
    for stub, request, code, reason in cases:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.ListMyDisputes(dispute_pb2.ListMyDisputesRequest(request=request))
        f = failure_of(info)
        assert (f.code, f.reason) == (code, reason), f
    # The signature altered: the body no longer matches it.
    altered = build_my_disputes_request(firm, now_ms())
    altered.body = dispute_pb2.MyDisputesBody(nonce=b"\0" * 16, issued_at_ms=now_ms()).SerializeToString()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await mine.ListMyDisputes(dispute_pb2.ListMyDisputesRequest(request=altered))
    assert (failure_of(info).code, failure_of(info).reason) == ("UNAUTHENTICATED", "BAD_SIGNATURE")
    # A node checks the signature itself, whoever relays: the registry sending an altered request.
    node = node_pb2_grpc.NodeServiceStub(net.channel(Role.REGISTRY, "national", net.node_addr(CHENGDU),
                                                     Principal(Role.NODE, CHENGDU)).channel)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await node.ListMyDisputes(dispute_pb2.NodeListMyDisputesRequest(request=altered))
    assert (failure_of(info).code, failure_of(info).reason) == ("UNAUTHENTICATED", "BAD_SIGNATURE")


# --- what the client accepts ---------------------------------------------------------------------
class _HostileRegistry:
    """The registry's DisputeService as a hostile registry would answer: the real answers, then
    `tamper` applied to them (the registry cannot sign as a node)."""

    def __init__(self, real, tamper) -> None:
        self.real, self.tamper = real, tamper

    async def ListMyDisputes(self, request, **kwargs):
        response = await self.real.ListMyDisputes(request, **kwargs)
        self.tamper(response)
        return response


def hostile(client: EnterpriseClient, tamper) -> EnterpriseClient:
    stub = client._stub

    def stub_for(cls):
        real = stub(cls)
        return _HostileRegistry(real, tamper) if cls is dispute_pb2_grpc.DisputeServiceStub else real

    client._stub = stub_for
    return client


def _of(response, node_id):
    return next(n for n in response.nodes if n.node_id == node_id)


def _edit_body(node: dispute_pb2.NodeDisputes, edit) -> None:
    body = dispute_pb2.NodeDisputesBody.FromString(node.answer.body)
    edit(body)
    node.answer.body = body.SerializeToString()


async def test_an_answer_the_registry_forged_or_altered_is_not_accepted(network: Network):
    net = network
    case, tax = await file_two(net)
    registry_identity = net.identity(Role.REGISTRY, "national")
    stale: list = []

    # An answer kept from an earlier call, to be replayed.
    earlier = hostile(net.enterprise(), lambda r: stale.append(dispute_pb2.ListMyDisputesResponse.FromString(
        r.SerializeToString())))
    assert len((await earlier.disputes())[0]) == 2

    def reopen(response):  # the confirmed dispute shown open again, the body edited after signing
        _edit_body(_of(response, CHENGDU), lambda b: setattr(b.disputes[0], "status", OPEN))

    def forge(response):  # a body the registry signed itself
        node = _of(response, CHENGDU)
        body = dispute_pb2.NodeDisputesBody.FromString(node.answer.body)
        body.disputes[0].resolution = "withdrawn by the enterprise"
        node.answer.CopyFrom(sign(registry_identity, body))

    def forge_as_unregistered_node(response):  # a node key the root issued but the directory does not list
        node = _of(response, CHENGDU)
        body = dispute_pb2.NodeDisputesBody.FromString(node.answer.body)
        body.disputes[0].resolution = "withdrawn by the enterprise"
        node.answer.CopyFrom(sign(net.root.issue(Principal(Role.NODE, CHENGDU)), body))

    def relabel(response):  # the Sichuan node's answer given as the Chengdu node's
        _of(response, CHENGDU).answer.CopyFrom(_of(response, SICHUAN).answer)

    def replay(response):  # the earlier answer of the Chengdu node
        _of(response, CHENGDU).answer.CopyFrom(_of(stale[0], CHENGDU).answer)

    def drop(response):  # the Chengdu node's answer left out
        kept = [n for n in response.nodes if n.node_id != CHENGDU]
        del response.nodes[:]
        response.nodes.extend(kept)

    def twice(response):  # the Sichuan node's answer given twice
        response.nodes.append(_of(response, SICHUAN))

    cases = {
        "reopen": (reopen, "does not verify"),
        "forge": (forge, "does not verify"),
        "forge_as_unregistered_node": (forge_as_unregistered_node, "a key the directory does not list"),
        "relabel": (relabel, f"signed by node/{SICHUAN}"),
        "replay": (replay, "answers another request"),
        "drop": (drop, "gave no answer"),
    }
    for name, (tamper, problem) in cases.items():
        disputes, problems = await hostile(net.enterprise(), tamper).disputes()
        # The Chengdu node's list is not used; the Sichuan node's still is.
        assert [d.dispute_id for d in disputes] == [tax.dispute_id], name
        assert set(problems) == {CHENGDU} and problem in problems[CHENGDU], (name, problems)
    disputes, problems = await hostile(net.enterprise(), twice).disputes()
    assert {d.dispute_id for d in disputes} == {tax.dispute_id, case.dispute_id}
    assert set(problems) == {SICHUAN} and "more than once" in problems[SICHUAN]
    # Untampered, the same client code accepts both.
    disputes, problems = await net.enterprise().disputes()
    assert problems == {} and len(disputes) == 2


async def test_the_checks_of_a_node_answer(network: Network):
    """verify_node_disputes alone, on a real node answer: each binding it checks."""
    net = network
    await file_two(net)
    identity = net.identity(Role.ENTERPRISE, CHENGDU_FIRM)
    directory = await net.enterprise().directory()
    stub = node_pb2_grpc.NodeServiceStub(net.channel(Role.ENTERPRISE, CHENGDU_FIRM, net.node_addr(CHENGDU),
                                                     Principal(Role.NODE, CHENGDU)).channel)
    request = build_my_disputes_request(identity, now_ms())
    answer = (await stub.ListMyDisputes(dispute_pb2.NodeListMyDisputesRequest(request=request))).answer
    check = dict(node_id=CHENGDU, directory=directory, uscc=CHENGDU_FIRM, request_hash=answer_hash(request),
                 trust=identity.trust())
    body = verify_node_disputes(answer, **check)
    assert len(body.disputes) == 1 and body.omitted == 0 and body.request_hash == answer_hash(request)
    with pytest.raises(DisputeAnswerError, match="about"):
        verify_node_disputes(answer, **dict(check, uscc=SHANGHAI_FIRM))
    with pytest.raises(DisputeAnswerError, match="another request"):
        verify_node_disputes(answer, **dict(check, request_hash=b"\0" * 32))
    with pytest.raises(DisputeAnswerError, match="signed by"):
        verify_node_disputes(answer, **dict(check, node_id=SICHUAN))
    with pytest.raises(DisputeAnswerError, match="not in the signed directory"):
        verify_node_disputes(answer, **dict(check, node_id="110000"))
    # A node signing another enterprise's dispute into the answer is caught too.
    body.disputes[0].uscc = SHANGHAI_FIRM
    with pytest.raises(DisputeAnswerError, match="another enterprise"):
        verify_node_disputes(sign(net.identity(Role.NODE, CHENGDU), body), **check)
    with pytest.raises(UnlistedDisputeKey):
        verify_node_disputes(sign(net.root.issue(Principal(Role.NODE, CHENGDU)), body), **check)


def test_an_answer_keeps_the_newest_disputes_within_its_bound_and_counts_the_rest():
    def dispute(i: int) -> dispute_pb2.Dispute:
        return dispute_pb2.Dispute(dispute_id=f"{i:032x}", uscc=CHENGDU_FIRM, node_id=CHENGDU, record_id="a" * 64,
                                   reason="金额有误" * 500, resolution="x" * 8192, filed_at_ms=1_000 + i)

    many = [dispute(i) for i in range(100)]  # ~14 KB each, 1.4 MB in all
    body = answer_body(CHENGDU, CHENGDU_FIRM, b"h" * 32, 5, many)
    assert MAX_ANSWER_BYTES - 20_000 < body.ByteSize() <= MAX_ANSWER_BYTES
    kept = len(body.disputes)
    assert body.omitted == 100 - kept > 0
    assert [d.filed_at_ms for d in body.disputes] == [1_000 + i for i in range(99, 99 - kept, -1)]  # the newest
    # A budget asked below the floor gets the floor; a budget under one dispute still gets one.
    small = answer_body(CHENGDU, CHENGDU_FIRM, b"h" * 32, 5, many, max_bytes=1)
    assert small.ByteSize() <= MIN_ANSWER_BYTES and small.omitted == 100 - len(small.disputes)
    big = dispute(100)
    big.resolution = "x" * (MIN_ANSWER_BYTES + 1)
    alone = answer_body(CHENGDU, CHENGDU_FIRM, b"h" * 32, 5, [big, *many[:3]], max_bytes=1)
    assert [d.dispute_id for d in alone.disputes] == [big.dispute_id] and alone.omitted == 3
    # All of a few, none left out.
    assert answer_body(CHENGDU, CHENGDU_FIRM, b"h" * 32, 5, many[:3]).omitted == 0


# --- the command line ----------------------------------------------------------------------------
async def test_cli_dispute_list_for_an_enterprise(network: Network, tmp_path):
    net = network
    case, tax = await file_two(net)
    ids = net.identity(Role.ENTERPRISE, CHENGDU_FIRM).save(tmp_path / "ids")
    code, out, err = await xinyi("dispute", "list", "--identity", ids, "--registry", net.registry_addr, "--json")
    assert code == 0, err
    listed = json.loads(out)
    assert listed["uscc"] == CHENGDU_FIRM and listed["unverified_nodes"] == {}
    rows = {r["dispute_id"]: r for r in listed["disputes"]}
    assert [r["dispute_id"] for r in listed["disputes"]] == [tax.dispute_id, case.dispute_id]
    assert (rows[case.dispute_id]["status"], rows[case.dispute_id]["node"]) == ("confirmed", CHENGDU)
    assert rows[case.dispute_id]["resolution"] == "the court's judgment states 50000.00"
    assert (rows[tax.dispute_id]["status"], rows[tax.dispute_id]["overdue"]) == ("open", False)
    assert rows[tax.dispute_id]["due_ms"] == tax.filed_at_ms + 20 * DAY_MS

    code, out, err = await xinyi("dispute", "list", "--identity", ids, "--registry", net.registry_addr, "--open", "--json")
    assert code == 0 and [r["dispute_id"] for r in json.loads(out)["disputes"]] == [tax.dispute_id]

    code, out, err = await xinyi("dispute", "list", "--identity", ids, "--registry", net.registry_addr)
    assert code == 0, err
    lines = out.splitlines()
    (tax_line,) = [line for line in lines if line.startswith(tax.dispute_id)]
    assert f"node {SICHUAN}" in tax_line and " open " in tax_line and "OVERDUE" not in tax_line
    import datetime as dt

    due = dt.datetime.fromtimestamp(tax.due_ms / 1000, dt.timezone.utc).strftime("%Y-%m-%d")
    assert f"reply due {due}" in tax_line
    i = next(i for i, line in enumerate(lines) if line.startswith(case.dispute_id))
    assert "confirmed" in lines[i] and "the court's judgment states 50000.00" in lines[i + 1]

    # A node that cannot be reached: the rest is shown, the node is named, and the exit status says so.
    sichuan = net.nodes.pop(SICHUAN)
    await sichuan.stop(0)
    code, out, err = await xinyi("dispute", "list", "--identity", ids, "--registry", net.registry_addr, "--json")
    assert code == 1
    listed = json.loads(out)
    assert [r["dispute_id"] for r in listed["disputes"]] == [case.dispute_id]
    assert list(listed["unverified_nodes"]) == [SICHUAN]


async def test_cli_dispute_list_usage(network: Network, tmp_path):
    ids = network.identity(Role.ENTERPRISE, CHENGDU_FIRM).save(tmp_path / "ids")
    code, _, err = await xinyi("dispute", "list", "--identity", ids)
    assert code == 2 and "--registry" in one_line(err) and "--node" in one_line(err)
    code, _, err = await xinyi("dispute", "list", "--identity", ids, "--registry", network.registry_addr,
                               "--node", network.node_addr(CHENGDU))
    assert code == 2 and "not both" in one_line(err)
    bank = network.identity(Role.BANK, BANK).save(tmp_path / "bank")
    code, _, err = await xinyi("dispute", "list", "--identity", bank, "--registry", network.registry_addr)
    assert code == 2 and "enterprise identity" in one_line(err)
