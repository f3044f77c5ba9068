"""Who may be on an enterprise's route, and whom a consent may name, through the real servers.

A node is routed for its own area's enterprises (by USCC area code) and for the out-of-area
holdings the platform operator approved, all of it published in the signed directory; what a
node merely claims is pending and reaches nothing. Only institutions that registered with their
own certificate (banks, guarantors, government departments) can be named in a consent.
"""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
from harness import BANK, CHENGDU_FIRM, GUARANTOR, LICENCE, SHANGHAI_FIRM, Network, _ChannelCloser, tax
from processes import free_port
from test_cli import xinyi
from test_refusals import Stored, refused

from node.store import Record
from registry.server import RegistryConfig, RegistryServer
from xinyi.client import BankClient, ClientError
from xinyi.crypto.identity import Principal, Role
from xinyi.crypto.pki import RootCA
from xinyi.clock import now_ms
from xinyi.records import uscc as uscc_codes
from xinyi.registration import build_registration
from xinyi.rpc.channels import secure_channel
from xinyi.v1 import audit_pb2, registry_pb2, registry_pb2_grpc

ROGUE = "440300"  # Shenzhen: Chengdu's firms are none of its business
GOV = "11510000000000019E"  # a Sichuan government department
NEVER_ISSUED = uscc_codes.with_check_character("91440300MA5FUTURE")  # a valid code no institution holds


@pytest.fixture
def stored(network: Network) -> Stored:
    return Stored(network)


def registry_stub(net: Network, role: Role, principal_id: str) -> registry_pb2_grpc.RegistryServiceStub:
    return registry_pb2_grpc.RegistryServiceStub(net.channel(role, principal_id, net.registry_addr, Role.REGISTRY).channel)


async def last_registry_entry(net: Network) -> audit_pb2.AuditRecord:
    store = net.registry.store
    size = await asyncio.to_thread(store.audit_log_size)
    return (await asyncio.to_thread(store.audit_entries, size - 1, size))[0].record()


async def synced_usccs(net: Network, node_id: str) -> set[str]:
    """What SyncConsents gives a node: the enterprises of every consent it is sent."""
    response = await registry_stub(net, Role.NODE, node_id).SyncConsents(registry_pb2.SyncConsentsRequest(after=0))
    return {c.uscc for c in response.consents}


# --- item 4: a node's route -----------------------------------------------------------------------
async def test_a_node_claiming_another_areas_enterprise_gets_neither_its_queries_nor_its_consents(network: Network):
    net = network
    # Shenzhen's node holds (or says it holds) a record of a Chengdu firm, and so claims the firm.
    rogue = await net.start_node(ROGUE, [Record(CHENGDU_FIRM, "tax", "2026-06-15", "深圳市税务局", tax("2026-05"))])
    [claim] = await net.operator().claims(ROGUE)
    assert (claim.uscc, claim.state) == (CHENGDU_FIRM, registry_pb2.HOLDING_CLAIM_STATE_PENDING)

    bank = net.bank()
    directory = await bank.directory(refresh=True)
    assert ROGUE in directory.nodes and ROGUE not in directory.route(CHENGDU_FIRM)
    assert CHENGDU_FIRM not in directory.holdings

    # The consent goes to the firm's own nodes only, now and when the rogue node pulls.
    grant = await net.enterprise().grant(BANK, "credit_assessment", ["tax"], 30)
    assert sorted(grant.delivered_to) == ["510000", "510100"]
    assert await asyncio.to_thread(rogue.store.get_consent, grant.consent_id) is None
    assert CHENGDU_FIRM not in await synced_usccs(net, ROGUE)
    assert CHENGDU_FIRM in await synced_usccs(net, "510100")

    # The bank's query is not sent to it.
    result = await bank.query(CHENGDU_FIRM, ["tax"], "credit_assessment", grant.consent_id)
    assert [n.node for n in result.nodes] == ["510100", "510000"]


async def test_an_approved_claim_is_published_routed_and_given_the_firms_consents_then_a_rejection_ends_it(
        network: Network):
    net = network
    holder = await net.start_node(ROGUE, [Record(CHENGDU_FIRM, "tax", "2026-06-15", "深圳市税务局", tax("2026-05"))])
    before = await net.enterprise().grant(BANK, "credit_assessment", ["tax"], 30)  # granted while pending

    reviewed = await net.operator().review(ROGUE, CHENGDU_FIRM, approve=True)
    assert reviewed.claim.state == registry_pb2.HOLDING_CLAIM_STATE_APPROVED
    directory = await net.bank().directory(refresh=True)
    assert directory.version == reviewed.directory_version
    assert directory.holdings[CHENGDU_FIRM] == frozenset({ROGUE})
    assert directory.route(CHENGDU_FIRM) == ["510100", "510000", ROGUE]
    # The firm's consents reach the node that joined its route, without a new grant.
    assert (await asyncio.to_thread(holder.store.get_consent, before.consent_id)) is not None
    assert CHENGDU_FIRM in await synced_usccs(net, ROGUE)
    entry = await last_registry_entry(net)
    assert (entry.action, entry.caller_id, entry.uscc, entry.decision) == (
        "approve_holding", "national", CHENGDU_FIRM, audit_pb2.DECISION_ALLOW)
    assert f"node {ROGUE} on the route" in entry.detail

    result = await net.bank().query(CHENGDU_FIRM, ["tax"], "credit_assessment", before.consent_id)
    by_node = {n.node: n for n in result.nodes}
    assert by_node[ROGUE].verified and [r["source"] for r in by_node[ROGUE].records] == ["深圳市税务局"]

    rejected = await net.operator().review(ROGUE, CHENGDU_FIRM, approve=False)
    assert rejected.claim.state == registry_pb2.HOLDING_CLAIM_STATE_REJECTED
    directory = await net.bank().directory(refresh=True)
    assert ROGUE not in directory.route(CHENGDU_FIRM) and CHENGDU_FIRM not in directory.holdings
    after = await net.enterprise().grant(BANK, "credit_assessment", ["tax"], 30)
    assert ROGUE not in after.delivered_to
    assert (await asyncio.to_thread(holder.store.get_consent, after.consent_id)) is None


@pytest.mark.parametrize("role, principal_id", [(Role.NODE, ROGUE), (Role.BANK, BANK), (Role.REGISTRY, "impostor")],
                         ids=["node", "bank", "another-registry-identity"])
async def test_only_the_platform_operator_reviews_claims(network: Network, stored: Stored, role: Role, principal_id: str):
    await network.start_node(ROGUE, [Record(CHENGDU_FIRM, "tax", "2026-06-15", "深圳市税务局", tax("2026-05"))])
    stub = registry_stub(network, role, principal_id)
    before = await stored.snapshot()
    f = await refused(stub.ReviewHoldingClaim(registry_pb2.ReviewHoldingClaimRequest(node_id=ROGUE, uscc=CHENGDU_FIRM,
                                                                                    approve=True)))
    assert f.code == "PERMISSION_DENIED"
    await stored.assert_only_audit(before, "registry", f.reason)
    f = await refused(stub.ListHoldingClaims(registry_pb2.ListHoldingClaimsRequest()))
    assert f.code == "PERMISSION_DENIED"
    assert ROGUE not in (await network.bank().directory(refresh=True)).route(CHENGDU_FIRM)


@pytest.mark.parametrize("node_id, uscc, code, field", [
    ("440300", SHANGHAI_FIRM, "NOT_FOUND", None),  # no such claim
    ("44030", CHENGDU_FIRM, "INVALID_ARGUMENT", "node_id"),
    ("440300", CHENGDU_FIRM[:17], "INVALID_ARGUMENT", "uscc"),
], ids=["no-such-claim", "bad-node-id", "bad-uscc"])
async def test_reviewing_what_is_not_claimed_is_refused(network: Network, node_id, uscc, code, field):
    with pytest.raises(ClientError) as info:
        await network.operator().review(node_id, uscc, approve=True)
    f = info.value.failure
    assert f.code == code and (field is None or f.fields[0][0] == field)
    entry = await last_registry_entry(network)
    assert entry.action == "approve_holding" and entry.decision == audit_pb2.DECISION_DENY


async def test_a_node_may_not_register_another_nodes_endpoint(network: Network, stored: Stored):
    rogue = network.identity(Role.NODE, ROGUE)
    stub = registry_stub(network, Role.NODE, ROGUE)
    chengdu = network.node_addr("510100")
    before = await stored.snapshot()
    f = await refused(stub.RegisterNode(registry_pb2.RegisterNodeRequest(
        registration=build_registration(rogue, chengdu, [], now_ms()))))
    assert (f.code, f.reason) == ("PERMISSION_DENIED", "ENDPOINT_TAKEN")
    assert "510100" not in f.message  # a refusal never names a third party
    await stored.assert_only_audit(before, "registry", "ENDPOINT_TAKEN")
    entry = await last_registry_entry(network)
    assert (entry.action, entry.caller_id) == ("register_node", ROGUE)
    directory = await network.bank().directory(refresh=True)
    assert ROGUE not in directory.nodes and directory.nodes["510100"].endpoint == chengdu


@pytest.mark.parametrize("endpoint, held, code, field", [
    ("127.0.0.1:7999", [CHENGDU_FIRM[:17] + "I"], "INVALID_ARGUMENT", "held_usccs[0]"),
    ("127.0.0.1:7999", [CHENGDU_FIRM] * 50_001, "RESOURCE_EXHAUSTED", None),
    ("h" * 300 + ":7999", [], "INVALID_ARGUMENT", "endpoint"),
    ("127.0.0.1", [], "INVALID_ARGUMENT", "endpoint"),
], ids=["bad-uscc", "too-many-claims", "long-endpoint", "no-port"])
async def test_a_registration_with_bad_fields_is_refused_and_stores_nothing(network: Network, stored: Stored,
                                                                           endpoint, held, code, field):
    rogue = network.identity(Role.NODE, ROGUE)
    before = await stored.snapshot()
    f = await refused(registry_stub(network, Role.NODE, ROGUE).RegisterNode(registry_pb2.RegisterNodeRequest(
        held_usccs=held, registration=build_registration(rogue, endpoint, held, now_ms()))))
    assert f.code == code and (field is None or f.fields[0][0] == field)
    assert len(f.message) < 200  # nothing of the request is echoed at length
    await stored.assert_only_audit(before, "registry", f.reason)
    assert await network.operator().claims(ROGUE) == []


async def test_the_platform_operator_reviews_claims_on_the_command_line(network: Network, tmp_path):
    await network.start_node(ROGUE, [Record(CHENGDU_FIRM, "tax", "2026-06-15", "深圳市税务局", tax("2026-05"))])
    operator = ["--identity", network.identity(Role.REGISTRY, "national").save(tmp_path / "ids"),
                "--registry", network.registry_addr]
    code, out, err = await xinyi("registry", "claims", "list", *operator, "--state", "pending", "--json")
    assert code == 0, err
    assert [(c["node"], c["uscc"], c["state"]) for c in json.loads(out)] == [(ROGUE, CHENGDU_FIRM, "pending")]
    code, out, err = await xinyi("registry", "claims", "approve", *operator, "--node", ROGUE, "--uscc", CHENGDU_FIRM)
    assert code == 0, err
    assert out.startswith(f"approved: node {ROGUE} holds records of {CHENGDU_FIRM}; routed to it")
    code, out, err = await xinyi("registry", "claims", "reject", *operator, "--node", ROGUE, "--uscc", SHANGHAI_FIRM)
    assert code == 1 and "NOT_FOUND" in err
    bank = ["--identity", network.identity(Role.BANK, BANK).save(tmp_path / "ids"), "--registry", network.registry_addr]
    code, out, err = await xinyi("registry", "claims", "list", *bank)
    assert code == 2 and "needs a registry identity" in err


# --- item 10: whom a consent may name --------------------------------------------------------------
@pytest.mark.parametrize("grantee", [NEVER_ISSUED, SHANGHAI_FIRM], ids=["never-issued", "an-enterprise"])
async def test_a_consent_for_a_grantee_that_is_no_institution_is_refused(network: Network, stored: Stored, grantee):
    # The Shanghai firm is a real party on the network, with a certificate, and has connected: still no institution.
    await network.enterprise(SHANGHAI_FIRM).list()
    before = await stored.snapshot()
    with pytest.raises(ClientError) as info:
        await network.enterprise().grant(grantee, "credit_assessment", ["tax"], 30)
    f = info.value.failure
    assert (f.code, f.reason, f.fields[0][0]) == ("FAILED_PRECONDITION", "GRANTEE_NOT_AN_INSTITUTION", "consent.grantee")
    await stored.assert_only_audit(before, "registry", "GRANTEE_NOT_AN_INSTITUTION")


async def test_a_co_grantee_and_a_representatives_grant_are_checked_alike(network: Network, stored: Stored):
    before = await stored.snapshot()
    with pytest.raises(ClientError) as info:
        await network.enterprise().grant(GUARANTOR, "guarantee", ["tax"], 60, co_grantee=NEVER_ISSUED)
    assert (info.value.failure.reason, info.value.failure.fields[0][0]) == ("GRANTEE_NOT_AN_INSTITUTION",
                                                                            "consent.co_grantee")
    await stored.assert_only_audit(before, "registry", "GRANTEE_NOT_AN_INSTITUTION")

    await network.enterprise().delegate("zhang-wei", 30)
    rep = network.enterprise_as(Role.REPRESENTATIVE, "zhang-wei")
    before = await stored.snapshot()
    with pytest.raises(ClientError) as info:
        await rep.grant(NEVER_ISSUED, "credit_assessment", ["tax"], 30, uscc=CHENGDU_FIRM)
    assert info.value.failure.reason == "GRANTEE_NOT_AN_INSTITUTION"
    await stored.assert_only_audit(before, "registry", "GRANTEE_NOT_AN_INSTITUTION")
    assert (await rep.grant(BANK, "credit_assessment", ["tax"], 30, uscc=CHENGDU_FIRM)).consent_id


async def test_an_institution_becomes_known_by_connecting_with_its_own_certificate(network: Network):
    new_bank = uscc_codes.with_check_character("91440300MA5EXAMPL")
    with pytest.raises(ClientError):
        await network.enterprise().grant(new_bank, "credit_assessment", ["tax"], 30)

    async with BankClient(network.identity(Role.BANK, new_bank), network.registry_addr) as bank:  # opening registers
        directory = await bank.directory(refresh=True)
    [entry] = directory.institutions[new_bank]
    assert (entry.role, entry.licence) == ("bank", LICENCE) and entry.registered_at_ms > 0
    assert (await network.enterprise().grant(new_bank, "credit_assessment", ["tax"], 30)).consent_id
    entry = await last_registry_entry(network)
    assert entry.action == "grant_consent" and entry.decision == audit_pb2.DECISION_ALLOW

    # Opening again changes nothing: the directory keeps its version.
    async with BankClient(network.identity(Role.BANK, new_bank), network.registry_addr) as bank:
        again = await bank.register_institution()
    assert again.directory_version == directory.version

    # A government department registers without a licence and may be named for eligibility checks.
    await network.register_institution(GOV, Role.GOVERNMENT)
    [gov] = (await network.bank().directory(refresh=True)).institutions[GOV]
    assert (gov.role, gov.licence) == ("government", "")
    consent = await network.enterprise().grant(GOV, "policy_matching", ["tax", "social_security", "dishonesty_list"], 30,
                                               detail_level="summary")
    assert consent.grantee == GOV


async def test_a_bank_that_opened_before_the_registry_listened_registers_with_its_next_call(databases, tmp_path,
                                                                                            caplog):
    """Its registration at opening found no registry (UNAVAILABLE: it was starting); the bank's
    next call, once the registry is up, registers it first, so an enterprise may name it."""
    net = Network(RootCA.create(), tmp_path, databases)
    address = f"127.0.0.1:{free_port()}"
    bank_identity = net.identity(Role.BANK, BANK)
    try:
        with caplog.at_level(logging.DEBUG, logger="xinyi.client"):
            async with BankClient(bank_identity, address) as bank:  # nothing listens there yet
                [note] = [r for r in caplog.records if r.name == "xinyi.client"]
                assert "UNAVAILABLE" in note.getMessage() and BANK in note.getMessage()
                net.registry = RegistryServer(RegistryConfig(net.identity(Role.REGISTRY, "national"), address,
                                                             databases.new("registry")))
                await net.registry.start()
                directory = await bank.directory(refresh=True)
                # On PostgreSQL the signed directory is rebuilt from the shared state a moment later.
                for _ in range(50):
                    if BANK in directory.institutions:
                        break
                    await asyncio.sleep(0.1)
                    directory = await bank.directory(refresh=True)
        [entry] = directory.institutions[BANK]
        assert (entry.role, entry.licence) == ("bank", LICENCE)
        assert (await net.enterprise().grant(BANK, "credit_assessment", ["tax"], 30)).consent_id
    finally:
        await net.stop()


async def test_parties_that_are_no_licensed_institution_cannot_register_as_one(network: Network, stored: Stored,
                                                                               caplog):
    unlicensed = network.root.issue(Principal(Role.BANK, NEVER_ISSUED))  # a bank certificate without a licence
    for identity in (unlicensed, network.identity(Role.ENTERPRISE, SHANGHAI_FIRM), network.identity(Role.NODE, "510100")):
        channel = network._track(_ChannelCloser(secure_channel(identity, network.registry_addr, Role.REGISTRY))).channel
        stub = registry_pb2_grpc.RegistryServiceStub(channel)
        before = await stored.snapshot()
        f = await refused(stub.RegisterInstitution(registry_pb2.RegisterInstitutionRequest()))
        assert f.code == "PERMISSION_DENIED", identity.principal
        await stored.assert_only_audit(before, "registry", "POLICY_DENIED")
        if identity is unlicensed:
            assert "institutions-need-a-licence" in f.policy_ids
    directory = await network.bank().directory(refresh=True)
    assert NEVER_ISSUED not in directory.institutions and SHANGHAI_FIRM not in directory.institutions
    # The unlicensed bank's own client opens without failing, nor warning of a refusal by policy;
    # its queries are refused as before.
    with caplog.at_level(logging.WARNING, logger="xinyi.client"):
        async with BankClient(unlicensed, network.registry_addr):
            pass
    assert not [r for r in caplog.records if r.name == "xinyi.client"]
    with pytest.raises(ClientError):
        await network.enterprise().grant(NEVER_ISSUED, "credit_assessment", ["tax"], 30)


async def test_a_directory_whose_holdings_were_altered_is_refused(network: Network):
    """Routes are signed: a relay that adds a node to a firm's route breaks the registry's signature."""
    from xinyi.directory import Directory
    from xinyi.errors import Refusal
    from xinyi.v1 import directory_pb2

    envelope = network.registry.directory.current.envelope
    body = directory_pb2.DirectoryBody.FromString(envelope.body)
    body.holdings.add(uscc=CHENGDU_FIRM, node_id="310000")
    forged = type(envelope)()
    forged.CopyFrom(envelope)
    forged.body = body.SerializeToString(deterministic=True)
    with pytest.raises(Refusal):
        Directory.verify(forged, network.identity(Role.BANK, BANK).trust())
    assert Directory.verify(envelope, network.identity(Role.BANK, BANK).trust()).route(CHENGDU_FIRM) == ["510100", "510000"]


async def test_the_bank_uses_no_answer_from_a_node_off_the_signed_route(network: Network, monkeypatch):
    """A registry that sends a query to a node the signed directory does not route to (a hostile
    or broken relay) gets nothing used: the bank marks that node's result invalid."""
    consent = await network.grant(categories=("tax",))
    signed_route = network.registry.directory.route
    monkeypatch.setattr(network.registry.directory, "route", lambda uscc: [*signed_route(uscc), "310000"])
    result = await network.bank().query(CHENGDU_FIRM, ["tax"], "credit_assessment", consent)
    by_node = {n.node: n for n in result.nodes}
    assert by_node["510000"].verified
    assert by_node["310000"].status == "invalid" and not by_node["310000"].verified
    assert "not on this enterprise's route" in by_node["310000"].error
