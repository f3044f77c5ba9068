"""Revocation reaching the whole network: `pki revoke` + `pki publish`, the registry checking and
publishing the lists in the signed directory, every server refusing a revoked certificate on
its next call, and what was signed before staying verifiable. Real servers on loopback, the
real CLI in a subprocess, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from harness import BANK, CHENGDU_FIRM, INSTITUTIONS, LICENCE, OTHER_BANK, SEED, Network

from node.server import NodeConfig, NodeServer
from xinyi.client import ClientError, RevocationPublisher
from xinyi.clock import now_ms
from xinyi.crypto.envelope import body_hash
from xinyi.crypto.identity import Principal, Role
from xinyi.crypto.pki import Identity, IssuingCA, RootCA, create_issuing_ca, issue_identity
from xinyi.crypto.revocation import revoke
from xinyi.directory import Directory
from xinyi.query import build_query
from xinyi.v1 import registry_pb2

ROOT = Path(__file__).resolve().parent.parent
CATEGORIES = ["registration", "tax", "judicial"]
PUBLISHER = Principal(Role.AUDITOR, "audit-office")


@dataclasses.dataclass
class Setup:
    net: Network
    pki: Path  # the CA operator's directory: the network's root, issuing CA "sichuan"

    @property
    def bank(self):
        return self.net.bank()

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "xinyi.cli", *args], cwd=ROOT, capture_output=True, text=True,
                              timeout=60)

    async def publish_with_cli(self) -> subprocess.CompletedProcess:
        return await asyncio.to_thread(self.cli, "pki", "publish", "--dir", str(self.pki), "--identity",
                                       str(self.pki / "auditor-audit-office"), "--registry", self.net.registry_addr)


@pytest.fixture
async def setup(databases, tmp_path: Path):
    """The network of the harness, whose root lives in an operator's PKI directory; the bank
    is issued by the provincial issuing CA "sichuan"."""
    pki = tmp_path / "pki"
    root = RootCA.create()
    root.save(pki)
    create_issuing_ca(pki, "sichuan")
    net = Network(root, tmp_path, databases)
    net._ids[Principal(Role.BANK, BANK)] = Identity.load(
        issue_identity(pki, Role.BANK, BANK, licence=LICENCE, ca="sichuan"))
    issue_identity(pki, PUBLISHER.role, PUBLISHER.id)  # the operator connects with some identity
    await net.start_registry()
    for node_id in ("510100", "510000"):
        await net.start_node(node_id, SEED.get(node_id, []))
    for institution_id, role in INSTITUTIONS:
        await net.register_institution(institution_id, role)
    yield Setup(net, pki)
    await net.stop()


async def _refused(call, deadline_s: float = 5.0) -> ClientError:
    """Call until the call is refused for a revoked certificate, for at most `deadline_s` (what
    the issue allows). Other answers (served, or refused for a spent consent) do not count."""
    end = time.monotonic() + deadline_s
    while True:
        last = "served"
        try:
            await call()
        except ClientError as e:
            if e.failure.reason == "CERTIFICATE_REVOKED":
                return e
            last = e.failure.reason
        assert time.monotonic() < end, f"not refused as revoked {deadline_s} s after publishing (last: {last})"
        await asyncio.sleep(0.2)


def _registry_audit_reasons(net: Network) -> list[str]:
    store = net.registry.store
    size = store.audit_log_size()
    return [e.record().reason for e in store.audit_entries(0, size)]


async def test_a_bank_of_a_revoked_issuing_ca_is_refused_network_wide_and_its_old_answer_still_verifies(setup):
    net = setup.net
    consent = await net.grant()
    bank = setup.bank
    # The bank queries (what BankClient.query does), and keeps the sealed answers to verify later.
    envelope, key = build_query(bank.identity, uscc=CHENGDU_FIRM, categories=CATEGORIES, purpose="credit_assessment",
                                consent_id=consent, now_ms=now_ms())
    kept = await bank.registry.RouteQuery(registry_pb2.RouteQueryRequest(query=envelope), timeout=30)
    kept_directory = await bank.directory(refresh=True)

    def reopen():
        return [bank._open(r, key, body_hash(envelope.body), CHENGDU_FIRM, kept_directory) for r in kept.results]

    assert [(v.node, v.verified) for v in reopen()] == [("510100", True), ("510000", True)]

    revoked = await asyncio.to_thread(setup.cli, "pki", "revoke", "--dir", str(setup.pki), "--ca", "sichuan",
                                      "--reason", "key_compromise")
    assert revoked.returncode == 0, revoked.stderr
    published = await setup.publish_with_cli()
    assert published.returncode == 0, published.stderr
    assert "published" in published.stdout and "CRL number 1, 1 revoked" in published.stdout

    # At the registry, at once: the interceptor refuses the bank's next call on its open connection.
    refused = await _refused(lambda: bank.query(CHENGDU_FIRM, CATEGORIES, "credit_assessment", consent), 0)
    f = refused.failure
    assert f.code == "UNAUTHENTICATED" and f.reason == "CERTIFICATE_REVOKED", f
    assert f"issuing CA of bank/{BANK} was revoked" in f.message and "UTC (key_compromise)" in f.message, f.message
    assert any(r.startswith("CERTIFICATE_REVOKED") for r in _registry_audit_reasons(net))

    # Directly at a node, within 5 s (it learns the list from the next signed directory).
    refused = await _refused(lambda: bank.query_node(net.node_addr("510100"), "510100", CHENGDU_FIRM, CATEGORIES,
                                                     "credit_assessment", consent))
    assert refused.failure.reason == "CERTIFICATE_REVOKED" and "revoked at" in refused.failure.message

    # What the bank received before still opens and verifies, with a trust anchor that knows the
    # revocation (learned from the directory now published).
    current = await net.bank(OTHER_BANK).directory(refresh=True)
    Directory.verify(current.envelope, bank.identity.trust())
    assert bank.identity.trust().revocations.revoked(bank.identity.chain[0], at=dt.datetime.now(dt.timezone.utc))
    assert [(v.node, v.verified) for v in reopen()] == [("510100", True), ("510000", True)]


async def test_a_list_signed_by_a_stranger_is_refused_with_the_reason_and_changes_nothing(setup):
    net = setup.net
    before = net.registry.directory.current.version
    stranger = RootCA.create()  # same name as the national root, another key
    forged = revoke(stranger.cert, stranger.key, None, [123], "key_compromise")
    unknown_ca = stranger.certify_ca("evil")
    unknown = revoke(unknown_ca.cert, unknown_ca.key, None, [456], "key_compromise")
    async with RevocationPublisher(net.identity(Role.AUDITOR, "audit-office"), net.registry_addr) as publisher:
        for crl, why in ((forged, "is not signed by that CA"), (unknown, "a CA the national root did not certify")):
            with pytest.raises(ClientError) as e:
                await publisher.publish([], [crl.public_bytes(Encoding.DER)])
            f = e.value.failure
            assert f.code == "UNAUTHENTICATED" and f.reason == "UNTRUSTED_REVOCATION_LIST", f
            assert f.fields[0][0] == "revocation_lists[0]" and why in f.message, f.message
        with pytest.raises(ClientError) as e:
            await publisher.publish([unknown_ca.cert.public_bytes(Encoding.DER)], [])
        assert e.value.failure.reason == "UNTRUSTED_AUTHORITY"
        with pytest.raises(ClientError) as e:
            await publisher.publish([], [b"not a list"])
        assert e.value.failure.code == "INVALID_ARGUMENT" and e.value.failure.fields[0][0] == "revocation_lists[0]"
        with pytest.raises(ClientError) as e:
            await publisher.publish([b"not a certificate"], [])
        assert e.value.failure.code == "INVALID_ARGUMENT" and e.value.failure.fields[0][0] == "authorities[0]"
        # Bounded like every request: at most 257 lists, each at most 1 MiB.
        with pytest.raises(ClientError) as e:
            await publisher.publish([], [b"x"] * 258)
        f = e.value.failure
        assert f.code == "INVALID_ARGUMENT" and f.reason == "TOO_LARGE" and "revocation_lists" in f.message
    assert net.registry.directory.current.version == before
    assert len(net.registry.directory.trust.revocations) == 0
    reasons = _registry_audit_reasons(net)
    assert sum(r.startswith("UNTRUSTED_REVOCATION_LIST") for r in reasons) == 2


async def test_an_older_list_does_not_undo_a_revocation(setup):
    net = setup.net
    ca = IssuingCA.load(setup.pki, "sichuan")
    bank_identity = net.identity(Role.BANK, BANK)
    first = revoke(ca.cert, ca.key, None, [], "unspecified")  # CRL number 1: nothing revoked
    second = revoke(ca.cert, ca.key, first, [bank_identity.tls_cert.serial_number], "affiliation_changed")
    der = [c.public_bytes(Encoding.DER) for c in (second, first)]
    async with RevocationPublisher(net.identity(Role.AUDITOR, "audit-office"), net.registry_addr) as publisher:
        response = await publisher.publish([ca.cert.public_bytes(Encoding.DER)], [der[0]])
        assert len(response.accepted) == 1 and "CRL number 2" in response.accepted[0]
        version = response.directory_version
        replayed = await publisher.publish([], [der[1]])
    assert not replayed.accepted and "CRL number 1" in replayed.unchanged[0]
    assert replayed.directory_version == version  # nothing changed
    # The nodes' poll: nothing is sent while the directory has not changed.
    bank = net.bank(OTHER_BANK)
    unchanged = await bank.registry.GetDirectory(registry_pb2.GetDirectoryRequest(if_newer_than=version), timeout=10)
    newer = await bank.registry.GetDirectory(registry_pb2.GetDirectoryRequest(if_newer_than=version - 1), timeout=10)
    assert not unchanged.HasField("directory") and newer.HasField("directory")
    # What nodes and clients learn from the directory: still list number 2.
    learner = dataclasses.replace(net.identity(Role.AUDITOR, "audit-office")).trust()
    Directory.verify((await net.bank(OTHER_BANK).directory(refresh=True)).envelope, learner)
    assert learner.revocations.number(ca.cert.subject) == 2
    consent = await net.grant()
    with pytest.raises(ClientError) as e:
        await setup.bank.query(CHENGDU_FIRM, CATEGORIES, "credit_assessment", consent)
    assert e.value.failure.reason == "CERTIFICATE_REVOKED" and "(affiliation_changed)" in e.value.failure.message


async def test_a_node_restarted_after_the_revocation_refuses_the_bank(setup):
    net = setup.net
    consent = await net.grant()
    bank = setup.bank
    await bank.query(CHENGDU_FIRM, CATEGORIES, "credit_assessment", consent)
    old = net.nodes.pop("510100")
    await old.stop(0)
    revoked = await asyncio.to_thread(setup.cli, "pki", "revoke", "--dir", str(setup.pki), "--id", f"bank-{BANK}",
                                      "--reason", "privilege_withdrawn")
    assert revoked.returncode == 0, revoked.stderr
    assert (await setup.publish_with_cli()).returncode == 0
    # A new process: its identity loaded afresh, knowing nothing of the revocation until it registers.
    fresh = dataclasses.replace(old.identity)
    assert len(fresh.trust().revocations) == 0
    node = NodeServer(NodeConfig(fresh, "127.0.0.1:0", old.config.db, registry=net.registry_addr))
    await node.start()
    net.nodes["510100"] = node
    await asyncio.wait_for(node.registered.wait(), 10)
    with pytest.raises(ClientError) as e:
        await bank.query_node(net.node_addr("510100"), "510100", CHENGDU_FIRM, CATEGORIES, "credit_assessment", consent)
    f = e.value.failure
    assert f.code == "UNAUTHENTICATED" and f.reason == "CERTIFICATE_REVOKED", f
    assert f"certificate of bank/{BANK} was revoked" in f.message and "(privilege_withdrawn)" in f.message


async def test_a_consent_signed_before_its_enterprise_was_revoked_still_counts_at_a_node_that_syncs_later(setup):
    net = setup.net
    consent = await net.grant()
    await asyncio.sleep(1.1)  # a CRL's revocation time has whole seconds: revoke in a later one
    enterprise = net.identity(Role.ENTERPRISE, CHENGDU_FIRM)
    crl = revoke(net.root.cert, net.root.key, None,
                 [enterprise.tls_cert.serial_number, enterprise.signing_cert.serial_number], "key_compromise")
    async with RevocationPublisher(net.identity(Role.AUDITOR, "audit-office"), net.registry_addr) as publisher:
        await publisher.publish([], [crl.public_bytes(Encoding.DER)])
    # The enterprise can sign nothing new ...
    with pytest.raises(ClientError) as e:
        await net.grant()
    assert e.value.failure.reason == "CERTIFICATE_REVOKED"
    # ... but a node that learns the consent only now (a new database, syncing from the start)
    # takes it as of its signing, and answers under it.
    old = net.nodes.pop("510100")
    await old.stop(0)
    fresh = dataclasses.replace(old.identity)  # a new process: it learns the lists when it registers
    node = NodeServer(NodeConfig(fresh, "127.0.0.1:0", net.databases.new("node510100-new"), registry=net.registry_addr))
    await asyncio.to_thread(node.store.create_schema)
    await asyncio.to_thread(node.store.add_records, list(SEED["510100"]), now_ms())
    await node.start()
    net.nodes["510100"] = node
    await asyncio.wait_for(node.registered.wait(), 10)
    assert len(fresh.trust().revocations) == 2
    answer = await setup.bank.query_node(net.node_addr("510100"), "510100", CHENGDU_FIRM, CATEGORIES,
                                         "credit_assessment", consent)
    assert answer.verified and answer.status == "ok", answer


async def test_an_exported_audit_archive_verifies_after_the_registry_key_that_signed_its_directory_is_revoked(setup,
                                                                                                          tmp_path):
    from xinyi.cli.audit import cmd_export, verify_offline
    from xinyi.crypto.revocation import RevocationSet

    net = setup.net
    consent = await net.grant()
    await setup.bank.query(CHENGDU_FIRM, CATEGORIES, "credit_assessment", consent)

    class Args:
        out = offline = str(tmp_path / "archive")
        json = False

    await cmd_export(net.auditor(net.node_addr("510100"), Principal(Role.NODE, "510100")), Args)
    await asyncio.sleep(1.1)  # a CRL's revocation time has whole seconds: revoke in a later one
    registry = net.identity(Role.REGISTRY, "national")
    crl = revoke(net.root.cert, net.root.key, None, [registry.signing_cert.serial_number], "key_compromise")
    auditor = dataclasses.replace(net.identity(Role.AUDITOR, "audit-office"))
    auditor.trust().set_revocations(RevocationSet.verified([crl], auditor.trust().issuer_cert_by_name))
    # The directory in the archive was signed before the revocation: it still verifies as of then.
    verify_offline(auditor, Args)
    # A directory signed now by that key does not.
    from xinyi.crypto.envelope import sign
    from xinyi.errors import Refusal
    from xinyi.v1 import directory_pb2

    fresh = sign(registry, directory_pb2.DirectoryBody(version=99, issued_at_ms=now_ms(), registry_id="national"))
    with pytest.raises(Refusal, match="was revoked"):
        Directory.verify(fresh, auditor.trust())


@pytest.mark.slow  # a minute of make test's budget between these; CI runs them in make test-slow
async def test_audit_verify_refuses_a_checkpoint_signed_after_the_nodes_key_was_revoked_and_keeps_what_was_cosigned_before(
        setup, tmp_path):
    """A node's signing key leaks and is revoked; the node (as whoever holds the key would) goes on
    signing checkpoints with it. `xinyi audit verify` refuses them, saying which key was revoked and
    when; the witness no longer cosigns them; the checkpoint it cosigned before still verifies."""
    import grpc

    from xinyi.audit.verify import verify_checkpoint
    from xinyi.auditing import fetch_log, log_key, verify_fetched
    from xinyi.v1 import directory_pb2

    net = setup.net
    consent = await net.grant()
    await setup.bank.query(CHENGDU_FIRM, CATEGORIES, "credit_assessment", consent)
    node = net.nodes["510100"]
    await node.cosign_once()
    auditor = lambda: net.auditor(net.node_addr("510100"), Principal(Role.NODE, "510100"))  # noqa: E731
    async with auditor() as client:
        before, directory, entries = await fetch_log(client)
        report, state = await verify_fetched(client, before, directory, entries, None)
    assert report.ok and state is not None, report.problems
    assert before.cosigned_checkpoint
    state_path = tmp_path / "auditor-510100.json"
    state.save(state_path)

    await asyncio.sleep(1.1)  # a CRL's revocation time has whole seconds: revoke in a later one
    signing_cert = net.identity(Role.NODE, "510100").signing_cert
    crl = revoke(net.root.cert, net.root.key, None, [signing_cert.serial_number], "key_compromise")
    (setup.pki / "ca" / "crl.pem").write_bytes(crl.public_bytes(Encoding.PEM))
    published = await setup.publish_with_cli()
    assert published.returncode == 0, published.stderr

    # The node serves auditors the directory it holds: wait until that one carries the list.
    end = time.monotonic() + 10
    while True:
        async with auditor() as client:
            response = await client.checkpoint()
        if directory_pb2.DirectoryBody.FromString(response.directory.body).revocation_lists:
            break
        assert time.monotonic() < end, "the node never took the directory with the revocation list"
        await asyncio.sleep(0.3)

    done = await asyncio.to_thread(setup.cli, "audit", "verify", "--identity", str(setup.pki / "auditor-audit-office"),
                                   "--node", net.node_addr("510100"), "--state", str(state_path))
    assert done.returncode == 1, done.stdout + done.stderr
    expected = (f"of xinyi/510100, whose certificate (serial {signing_cert.serial_number:x}) was revoked at "
                f"{crl[0].revocation_date_utc:%Y-%m-%d %H:%M:%S} UTC (key_compromise); only checkpoints a witness "
                "cosigned before then are accepted")
    assert "verification FAILED" in done.stderr and expected in done.stderr, done.stderr
    assert "Traceback" not in done.stderr

    # The witness cosigns nothing signed with that key any more.
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await node.cosign_once()
    assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED and "was revoked at" in refused.value.details()

    # What the witness cosigned before the revocation still verifies with the directory of now.
    async with auditor() as client:
        _, now_directory, _ = await fetch_log(client)
    origin = "xinyi/510100"
    assert verify_checkpoint(before.cosigned_checkpoint, origin, log_key(now_directory, origin)).size > 0


@pytest.mark.slow  # a minute of make test's budget between these; CI runs them in make test-slow
@pytest.mark.timeout(120)
async def test_every_worker_of_a_node_run_with_workers_refuses_the_revoked_bank_within_seconds(databases, tmp_path):
    """Real processes: the node's sequencer polls the directory, its workers take it from the
    sequencer; each fresh connection (spread over both workers) is refused."""
    from processes import NODE, Proc, free_port, network_identities, seed_node, wait_registered
    from test_workers import a_query, ask_on_fresh_channel

    from xinyi.client import EnterpriseClient

    logs = tmp_path / "logs"
    logs.mkdir()
    ids, dirs = network_identities(tmp_path / "certs")
    node_db, registry_db = databases.new(f"node{NODE}"), databases.new("registry")
    seed_node(node_db)
    registry, port = f"127.0.0.1:{free_port()}", free_port()
    node_addr = f"127.0.0.1:{port}"
    reg = Proc("registry", ["registry", "serve", "--identity", str(dirs["registry"]), "--listen", registry,
                            "--db", registry_db], logs)
    node = Proc("node", ["node", "serve", "--identity", str(dirs["node"]), "--listen", node_addr, "--registry", registry,
                         "--db", node_db, "--workers", "2"], logs)
    bank = ids["bank"]
    try:
        reg.start()
        node.start()
        await wait_registered(bank, ids["auditor"], registry, node_addr, [reg, node])
        async with EnterpriseClient(ids["enterprise"], registry) as enterprise:
            consent = (await enterprise.grant(BANK, "credit_assessment", ["registration", "tax"], 30)).consent_id
        # A consent the registry could not hand over within its delivery timeout (a busy machine)
        # reaches the node by its consent sync a moment later.
        deadline = time.monotonic() + 30
        while (first := await ask_on_fresh_channel(bank, node_addr, a_query(bank, consent))) != "ok":
            assert first == "CONSENT_STATUS_UNCONFIRMED" and time.monotonic() < deadline, first
            await asyncio.sleep(0.5)

        root = RootCA.load(tmp_path / "certs")
        crl = revoke(root.cert, root.key, None, [bank.tls_cert.serial_number, bank.signing_cert.serial_number],
                     "key_compromise")
        async with RevocationPublisher(ids["auditor"], registry) as publisher:
            await publisher.publish([], [crl.public_bytes(Encoding.DER)])
        end = time.monotonic() + 5
        while True:
            outcomes = await asyncio.gather(*(ask_on_fresh_channel(bank, node_addr, a_query(bank, consent))
                                              for _ in range(8)))
            if set(outcomes) == {"CERTIFICATE_REVOKED"}:
                break
            assert time.monotonic() < end, f"5 s after publishing, the node's workers answered: {outcomes}"
            await asyncio.sleep(0.2)
    finally:
        node.kill()
        reg.kill()


def test_publish_says_what_is_wrong_with_its_arguments(tmp_path):
    setup = Setup(None, tmp_path / "empty")  # type: ignore[arg-type]
    RootCA.create().save(setup.pki)
    run = setup.cli("pki", "publish", "--dir", str(setup.pki), "--identity", str(tmp_path / "none"), "--registry",
                    "127.0.0.1:1")
    assert run.returncode == 2 and "holds no issuing CA and no revocation list" in run.stderr, run.stderr
    run = setup.cli("pki", "publish", "--dir", str(tmp_path / "nowhere"), "--identity", str(tmp_path / "none"),
                    "--registry", "127.0.0.1:1")
    assert run.returncode == 2 and "--dir" in run.stderr, run.stderr


def test_a_signer_certificate_with_a_damaged_extension_is_refused_not_an_internal_error(tmp_path):
    from xinyi.crypto.envelope import sign, verify
    from xinyi.crypto.pki import TrustAnchor
    from xinyi.errors import Refusal
    from xinyi.v1 import query_pb2

    root = RootCA.create()
    bank = root.issue(Principal(Role.BANK, BANK), licence=LICENCE)
    envelope = sign(bank, query_pb2.QueryBody(uscc=CHENGDU_FIRM))
    at = envelope.signer_cert.index(b"xinyi://")
    envelope.signer_cert = envelope.signer_cert[:at] + b"\xb9" + envelope.signer_cert[at + 1:]  # not IA5 text
    with pytest.raises(Refusal) as e:
        verify(envelope, query_pb2.QueryBody, TrustAnchor(root.cert))
    assert e.value.reason == "BAD_CERTIFICATE"


def test_a_signer_certificate_with_a_damaged_issuer_name_is_refused_not_an_internal_error():
    """Found by the fuzz suite: names are parsed lazily, and a damaged issuer failed mid-check."""
    from cryptography.x509.oid import NameOID

    from xinyi.crypto.envelope import sign, verify
    from xinyi.crypto.pki import TrustAnchor
    from xinyi.errors import Refusal
    from xinyi.v1 import query_pb2

    root = RootCA.create()
    bank = root.issue(Principal(Role.BANK, BANK), licence=LICENCE)
    envelope = sign(bank, query_pb2.QueryBody(uscc=CHENGDU_FIRM))
    issuer_cn = root.cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value.encode()
    at = envelope.signer_cert.index(issuer_cn)  # the issuer comes before the subject in the certificate
    envelope.signer_cert = envelope.signer_cert[:at] + b"\xff" + envelope.signer_cert[at + 1:]  # not UTF-8
    with pytest.raises(Refusal) as e:
        verify(envelope, query_pb2.QueryBody, TrustAnchor(root.cert))
    assert e.value.reason == "BAD_CERTIFICATE"
