"""Hostile requests to every RPC the registry and a node serve (found from the descriptors and by
server reflection, so a new RPC is attacked too), sent by parties holding real certificates.

Whatever is sent, a server answers with the fitting status (INVALID_ARGUMENT for what cannot be
parsed, UNAUTHENTICATED for signatures and certificates, PERMISSION_DENIED for a party out of its
role, ...), never UNKNOWN or INTERNAL, with no stack trace, class name, source path or host:port
in what it says; a denial names no third party (item 9); and the audit logs still verify.
Oversized fields are in test_hostile_oversized.py, on a network of their own.
"""

from __future__ import annotations

import os

import pytest
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.descriptor import FieldDescriptor
from harness import BANK, CHENGDU_FIRM, MIANYANG_FIRM, OTHER_BANK, SHANGHAI_FIRM
from invariants import assert_clean, failure_text, verify_logs
from procnet import CATEGORIES, PURPOSE
from rpcs import (
    PARTIES,
    Caller,
    Method,
    Surface,
    all_methods,
    discover_signed_fields,
    envelope,
    field_at,
    natural_caller,
    with_envelope,
)

from xinyi.clock import now_ms
from xinyi.crypto.envelope import sign
from xinyi.crypto.identity import Role
from xinyi.privacy.consent import build_change, build_consent
from xinyi.query import build_query
from xinyi.records import uscc as uscc_codes
from xinyi.v1 import (
    audit_pb2,
    consent_pb2,
    dispute_pb2,
    node_pb2,
    query_pb2,
    registry_pb2,
    scoring_pb2,
)

pytestmark = [pytest.mark.adversarial, pytest.mark.timeout(240)]

NODE = "510100"
SERVERS = ("registry", NODE)
# Bytes that are no protobuf message: a field of wire type 7 (none exists); a length-delimited
# field claiming 2^35 bytes; one claiming 5 bytes and carrying 2; a varint that never ends.
MALFORMED = [b"\xff", b"\x0a\xff\xff\xff\xff\x7f", b"\x12\x05ab", b"\x08" + b"\xff" * 11]
SIGNATURE_LENGTHS = [0, 1, 32, 63, 65, 128, 4096]
# The signed statements every deployment relies on: their signature must be checked.
MUST_CHECK_SIGNATURE = {"RegistryService/RouteQuery", "NodeService/Query", "ConsentService/GrantConsent",
                        "ConsentService/ChangeConsent", "ConsentService/Delegate", "DisputeService/FileDispute",
                        "AccessService/ListAccesses", "DisputeService/ListMyDisputes", "NodeService/ListMyDisputes"}
# RPCs only some parties may call: (method, or service) -> may this party call it on this server?
ONLY = {
    "RegistryService/RegisterNode": lambda party, server: party[0] is Role.NODE,
    "RegistryService/SyncConsents": lambda party, server: party[0] is Role.NODE,
    "WitnessService/AddCheckpoint": lambda party, server: party[0] is Role.NODE,
    "ModelService/ApproveModel": lambda party, server: party[0] is Role.REGISTRY,
    "NodeService/DeliverConsent": lambda party, server: party[0] is Role.REGISTRY,
    "NodeService/ListDisputes": lambda party, server: party == (Role.NODE, server),
    "NodeService/ResolveDispute": lambda party, server: party == (Role.NODE, server),
    "NodeService/GetNodeReport": lambda party, server: party == (Role.NODE, server),
    "ConsentService/ListConsents": lambda party, server: party[0] in (Role.ENTERPRISE, Role.REPRESENTATIVE),
    # An enterprise's own disputes: at the registry, and at a node (directly or relayed).
    "DisputeService/ListMyDisputes": lambda party, server: party[0] is Role.ENTERPRISE,
    "NodeService/ListMyDisputes": lambda party, server: party[0] is Role.ENTERPRISE,
    "AuditService": lambda party, server: party[0] is Role.AUDITOR,
}
REFUSED_PARTY = {"PERMISSION_DENIED", "UNAUTHENTICATED"}


def may_call(method: Method, party, server: str) -> bool:
    rule = ONLY.get(method.short) or ONLY.get(method.service.rsplit(".", 1)[1])
    return rule is None or rule(party, server)


@pytest.fixture(scope="module")
async def surface(network_of_processes):
    caller = Caller(network_of_processes)
    surface = await Surface.of(caller, SERVERS)
    yield surface
    await caller.close()


@pytest.fixture(scope="module")
async def signed_fields(surface: Surface, network_of_processes):
    return await discover_signed_fields(surface, network_of_processes)


async def test_every_service_is_served_somewhere(surface: Surface) -> None:
    unserved = surface.unserved()
    assert not unserved, f"services in xinyi/v1 that neither the registry nor a node serves (none attacked): {unserved}"
    assert len(surface.targets) >= len(all_methods())


async def test_undecodable_bytes_to_every_rpc(surface: Surface, network_of_processes) -> None:
    bad = []
    for server, method in surface.targets:
        for payload in MALFORMED:
            _, failure = await surface.caller.call(natural_caller(method), server, method, payload)
            if failure is None or failure.code != "INVALID_ARGUMENT":
                bad.append(f"{server} {method.short} {payload[:8]!r}: {failure.code if failure else 'OK'} "
                           f"{failure.message[:120] if failure else ''!r}")
                continue
            assert_clean(failure, f"{server} {method.short} undecodable bytes")
    assert not bad, f"{len(bad)} undecodable requests not refused as INVALID_ARGUMENT:\n" + "\n".join(bad[:20])
    await verify_logs(network_of_processes)


async def test_wrong_signature_lengths_on_every_signed_field(surface: Surface, signed_fields,
                                                             network_of_processes) -> None:
    net, caller = network_of_processes, surface.caller
    unchecked = sorted({m.rsplit(".", 1)[1] for (_, m, _), hit in signed_fields.items() if hit is None})
    missed = sorted(set(unchecked) & MUST_CHECK_SIGNATURE)
    assert not missed, f"no signature check reached in {missed}"
    auditor_cert = net.identity(Role.AUDITOR, "audit-office").signing_cert_der
    bad, tried = [], 0
    for (server, path_name, path), hit in sorted(signed_fields.items()):
        if hit is None:
            continue
        body_type, signer = hit
        method = next(m for s, m in surface.targets if s == server and m.path == path_name)
        identity = net.identity(*signer)
        variants = [(f"signature of {n} bytes", envelope(identity, body_type, signature=os.urandom(n)))
                    for n in SIGNATURE_LENGTHS]
        variants += [("signature of 64 zero bytes", envelope(identity, body_type, signature=bytes(64))),
                     ("empty signer_cert", envelope(identity, body_type, signer_cert=b"")),
                     ("signer_cert of 1 byte", envelope(identity, body_type, signer_cert=b"\x30")),
                     ("signer_cert truncated",
                      envelope(identity, body_type, signer_cert=identity.signing_cert_der[:-9])),
                     ("another party's signer_cert", envelope(identity, body_type, signer_cert=auditor_cert))]
        for what, env in variants:
            tried += 1
            _, failure = await caller.call(natural_caller(method), server, method, with_envelope(method, path, env))
            where = f"{server} {method.short} {'.'.join(path)}: {what}"
            if failure is None or failure.code not in ("UNAUTHENTICATED", "INVALID_ARGUMENT"):
                bad.append(f"{where}: {failure.code if failure else 'OK'} {failure.message[:120] if failure else ''!r}")
                continue
            assert_clean(failure, where)
    print(f"\n[{net.backend}] {tried} bad signatures and certificates sent; signature never reached in: {unchecked}")
    assert not bad, (f"{len(bad)} bad signatures not refused as UNAUTHENTICATED/INVALID_ARGUMENT:\n"
                     + "\n".join(bad[:20]))
    await verify_logs(net)


def _minimal_body(body_type: str):
    """A statement of this type with every string field "x" (parses, means nothing)."""
    desc = descriptor_pool.Default().FindMessageTypeByName(body_type)
    message = message_factory.GetMessageClass(desc)()
    for f in desc.fields:
        if f.type == FieldDescriptor.TYPE_STRING and not f.is_repeated:
            setattr(message, f.name, "x")
    return message


async def test_every_party_on_every_rpc(surface: Surface, signed_fields, network_of_processes) -> None:
    """Each party calls each RPC with a statement it signed itself: nobody gets an opaque error,
    and a party out of its role is refused."""
    net, caller = network_of_processes, surface.caller
    bad = []
    for server, method in surface.targets:
        for party in PARTIES:
            request = method.request_class()()
            for path in method.envelope_paths():
                hit = signed_fields.get((server, method.path, path))
                if hit:
                    field_at(request, path).CopyFrom(sign(net.identity(*party), _minimal_body(hit[0])))
            _, failure = await caller.call(party, server, method, request.SerializeToString())
            where = f"{party[0]}/{party[1]} -> {server} {method.short}"
            if not may_call(method, party, server):
                if failure is None or failure.code not in REFUSED_PARTY | {"INVALID_ARGUMENT"}:
                    bad.append(f"{where}: {failure.code if failure else 'OK'} (a party out of its role)")
                    continue
            if failure is not None:
                if failure.code in ("UNKNOWN", "INTERNAL"):
                    bad.append(f"{where}: {failure.code} {failure.message[:160]!r}")
                    continue
                assert_clean(failure, where)
    assert not bad, f"{len(bad)} calls answered wrongly:\n" + "\n".join(bad[:30])
    await verify_logs(net)


@pytest.fixture(scope="module")
async def artefacts(network_of_processes):
    """Real signed statements of the network, for parties to misuse: a consent and its record,
    a bank's query, the node's checkpoint."""
    from xinyi.client import AuditClient
    from xinyi.crypto.identity import Principal

    net = network_of_processes
    consent = await net.grant(deliver_to=[NODE])
    record = await net.enterprise().status(consent)
    async with AuditClient(net.auditor, net.node_addrs[NODE], Principal(Role.NODE, NODE)) as audit:
        checkpoint = (await audit.checkpoint()).checkpoint
    query, _ = build_query(net.bank_identity, uscc=CHENGDU_FIRM, categories=CATEGORIES, purpose=PURPOSE,
                           consent_id=consent, now_ms=now_ms())
    enterprise = net.identity(Role.ENTERPRISE, CHENGDU_FIRM)
    fresh = build_consent(enterprise, grantee=BANK, purpose=PURPOSE, categories=["tax"], days=30, now_ms=now_ms())
    revoke = build_change(enterprise, consent, "revoke", now_ms())
    return dict(consent=consent, record=record, checkpoint=checkpoint, query=query, fresh=fresh, revoke=revoke)


BANK_PARTY, ENTERPRISE_PARTY = (Role.BANK, BANK), (Role.ENTERPRISE, CHENGDU_FIRM)
NODE_PARTY, OTHER_NODE = (Role.NODE, NODE), (Role.NODE, "310000")
OUT_OF_ROLE = {
    # name: (party, server, method path, request built from the artefacts)
    "bank-registers-as-node": (BANK_PARTY, "registry", "/xinyi.v1.RegistryService/RegisterNode",
                               lambda a, net: registry_pb2.RegisterNodeRequest(
                                   endpoint="127.0.0.1:1", signing_cert=net.bank_identity.signing_cert_der,
                                   held_usccs=[CHENGDU_FIRM])),
    "enterprise-registers-as-node": (ENTERPRISE_PARTY, "registry", "/xinyi.v1.RegistryService/RegisterNode",
                                     lambda a, net: registry_pb2.RegisterNodeRequest(
                                         endpoint="127.0.0.1:1",
                                         signing_cert=net.identity(*ENTERPRISE_PARTY).signing_cert_der)),
    "bank-pulls-consents": (BANK_PARTY, "registry", "/xinyi.v1.RegistryService/SyncConsents",
                            lambda a, net: registry_pb2.SyncConsentsRequest(after=0)),
    "bank-submits-a-checkpoint": (BANK_PARTY, "registry", "/xinyi.v1.WitnessService/AddCheckpoint",
                                  lambda a, net: registry_pb2.AddCheckpointRequest(checkpoint=a["checkpoint"])),
    "bank-approves-a-model": (BANK_PARTY, "registry", "/xinyi.v1.ModelService/ApproveModel",
                              lambda a, net: scoring_pb2.ApproveModelRequest(sha256=bytes(32))),
    "bank-lists-consents": (BANK_PARTY, "registry", "/xinyi.v1.ConsentService/ListConsents",
                            lambda a, net: consent_pb2.ListConsentsRequest()),
    "node-grants-an-enterprises-consent": (NODE_PARTY, "registry", "/xinyi.v1.ConsentService/GrantConsent",
                                           lambda a, net: consent_pb2.GrantConsentRequest(consent=a["fresh"])),
    "auditor-grants-an-enterprises-consent": ((Role.AUDITOR, "audit-office"), "registry",
                                              "/xinyi.v1.ConsentService/GrantConsent",
                                              lambda a, net: consent_pb2.GrantConsentRequest(consent=a["fresh"])),
    "node-revokes-an-enterprises-consent": (NODE_PARTY, "registry", "/xinyi.v1.ConsentService/ChangeConsent",
                                            lambda a, net: consent_pb2.ChangeConsentRequest(change=a["revoke"])),
    "enterprise-relays-a-banks-query": (ENTERPRISE_PARTY, "registry", "/xinyi.v1.RegistryService/RouteQuery",
                                        lambda a, net: registry_pb2.RouteQueryRequest(query=a["query"])),
    "enterprise-relays-a-banks-query-to-a-node": (ENTERPRISE_PARTY, NODE, "/xinyi.v1.NodeService/Query",
                                                  lambda a, net: query_pb2.QueryRequest(query=a["query"])),
    "other-node-relays-a-banks-query": (OTHER_NODE, NODE, "/xinyi.v1.NodeService/Query",
                                        lambda a, net: query_pb2.QueryRequest(query=a["query"])),
    "bank-delivers-a-consent-to-a-node": (BANK_PARTY, NODE, "/xinyi.v1.NodeService/DeliverConsent",
                                          lambda a, net: node_pb2.DeliverConsentRequest(consent=a["record"])),
    "bank-lists-a-nodes-disputes": (BANK_PARTY, NODE, "/xinyi.v1.NodeService/ListDisputes",
                                    lambda a, net: dispute_pb2.ListDisputesRequest()),
    "other-node-lists-a-nodes-disputes": (OTHER_NODE, NODE, "/xinyi.v1.NodeService/ListDisputes",
                                          lambda a, net: dispute_pb2.ListDisputesRequest()),
    "bank-resolves-a-dispute": (BANK_PARTY, NODE, "/xinyi.v1.NodeService/ResolveDispute",
                                lambda a, net: dispute_pb2.ResolveDisputeRequest(dispute_id="0" * 32, resolution="x")),
    "bank-reads-a-nodes-report": (BANK_PARTY, NODE, "/xinyi.v1.NodeService/GetNodeReport",
                                  lambda a, net: node_pb2.GetNodeReportRequest()),
    "other-node-reads-a-nodes-report": (OTHER_NODE, NODE, "/xinyi.v1.NodeService/GetNodeReport",
                                        lambda a, net: node_pb2.GetNodeReportRequest()),
    "bank-reads-a-nodes-log": (BANK_PARTY, NODE, "/xinyi.v1.AuditService/GetEntries",
                               lambda a, net: audit_pb2.GetEntriesRequest(start=0, end=0)),
    "enterprise-reads-the-registrys-log": (ENTERPRISE_PARTY, "registry", "/xinyi.v1.AuditService/ListAuditRecords",
                                           lambda a, net: audit_pb2.ListAuditRecordsRequest()),
}


@pytest.mark.parametrize("case", sorted(OUT_OF_ROLE))
async def test_a_party_out_of_its_role_is_refused(case, surface: Surface, artefacts, network_of_processes) -> None:
    net = network_of_processes
    party, server, path, build = OUT_OF_ROLE[case]
    response, failure = await surface.caller.call(party, server, path, build(artefacts, net).SerializeToString())
    assert failure is not None, f"{case}: answered {response[:200]!r}"
    assert failure.code in REFUSED_PARTY, f"{case}: {failure.code} {failure.message[:300]!r}"
    assert_clean(failure, case)
    # Nothing the misused statements say happened: the consent is still in force, the fresh one unknown.
    record = await net.enterprise().status(artefacts["consent"])
    assert record.status == consent_pb2.CONSENT_STATUS_ACTIVE, f"{case}: the consent is now {record.status}"


async def test_denials_name_no_third_party(surface: Surface, artefacts, network_of_processes) -> None:
    """Item 9: a bank using another bank's consent is not told whose it is or which enterprise gave
    it; an enterprise touching another's consent is not told its owner."""
    net, caller = network_of_processes, surface.caller
    consent = artefacts["consent"]
    other_bank = net.identity(Role.BANK, OTHER_BANK)
    said = []  # (who asked what, the refusal's text, the third parties it must not name)
    for uscc in (CHENGDU_FIRM, MIANYANG_FIRM):  # the consent's own enterprise, and another
        query, _ = build_query(other_bank, uscc=uscc, categories=CATEGORIES, purpose=PURPOSE, consent_id=consent,
                               now_ms=now_ms())
        _, failure = await caller.call((Role.BANK, OTHER_BANK), NODE, "/xinyi.v1.NodeService/Query",
                                       query_pb2.QueryRequest(query=query).SerializeToString())
        assert failure is not None and failure.code == "PERMISSION_DENIED", failure
        assert_clean(failure, f"another bank's consent, {uscc}")
        third = [BANK] + ([CHENGDU_FIRM] if uscc != CHENGDU_FIRM else [])
        said.append((f"another bank asking node {NODE} about {uscc} under the consent", failure_text(failure), third))
    query, _ = build_query(other_bank, uscc=CHENGDU_FIRM, categories=CATEGORIES, purpose=PURPOSE, consent_id=consent,
                           now_ms=now_ms())
    response, failure = await caller.call((Role.BANK, OTHER_BANK), "registry", "/xinyi.v1.RegistryService/RouteQuery",
                                          registry_pb2.RouteQueryRequest(query=query).SerializeToString())
    if failure is None:
        for result in query_pb2.QueryResponse.FromString(response).results:
            assert not result.sealed_answer, "another bank's consent was answered"
            said.append((f"another bank through the registry, node {result.node_id}",
                         f"{result.error_message}\n{result.error_reason}", [BANK]))
    else:
        assert_clean(failure, "another bank's consent through the registry")
        said.append(("another bank through the registry", failure_text(failure), [BANK]))

    shanghai = net.identity(Role.ENTERPRISE, SHANGHAI_FIRM)
    change = sign(shanghai, consent_pb2.ConsentChangeBody(consent_id=consent, uscc=SHANGHAI_FIRM,
                                                          action=consent_pb2.CONSENT_ACTION_REVOKE, at_ms=now_ms(),
                                                          nonce=os.urandom(16)))
    _, failure = await caller.call((Role.ENTERPRISE, SHANGHAI_FIRM), "registry", "/xinyi.v1.ConsentService/ChangeConsent",
                                   consent_pb2.ChangeConsentRequest(change=change).SerializeToString())
    assert failure is not None, "an enterprise revoked another enterprise's consent"
    assert_clean(failure, "another enterprise revoking the consent")
    said.append(("another enterprise revoking the consent", failure_text(failure), [CHENGDU_FIRM, BANK]))
    _, failure = await caller.call((Role.ENTERPRISE, SHANGHAI_FIRM), "registry",
                                   "/xinyi.v1.ConsentService/GetConsentStatus",
                                   consent_pb2.GetConsentStatusRequest(consent_id=consent).SerializeToString())
    assert failure is not None, "an enterprise read another enterprise's consent"
    assert_clean(failure, "another enterprise reading the consent's status")
    said.append(("another enterprise reading the consent's status", failure_text(failure), [CHENGDU_FIRM, BANK]))

    named = [f"{what}: names {', '.join(p for p in third if p in text)}: {text[:200]!r}"
             for what, text, third in said if any(p in text for p in third)]
    assert not named, "denials name a third party:\n" + "\n".join(named)
    record = await net.enterprise().status(consent)
    assert record.status == consent_pb2.CONSENT_STATUS_ACTIVE
    await verify_logs(net)


@pytest.mark.parametrize("grantee", ["enterprise", "never-issued"])
async def test_a_consent_for_a_grantee_that_is_no_institution_is_refused(grantee, network_of_processes) -> None:
    """Item 10: the grantee must be a licensed institution known to the network."""
    from xinyi.client import ClientError

    net = network_of_processes
    uscc = SHANGHAI_FIRM if grantee == "enterprise" else uscc_codes.with_check_character("91440300MA5G0Q7R1")
    if grantee == "enterprise":
        net.identity(Role.ENTERPRISE, uscc)  # an enterprise with a certificate: still no institution
    with pytest.raises(ClientError) as info:
        await net.enterprise().grant(uscc, PURPOSE, ["tax"], 30)
    failure = info.value.failure
    assert failure.code == "FAILED_PRECONDITION", f"a consent for {grantee} {uscc}: {failure}"
    assert_clean(failure, f"a consent for {grantee}")
