"""Rotation without downtime (issue 12 item 3), with real processes: `xinyi pki renew` and
SIGHUP. A node's signing key is replaced under a steady query load and no query fails; what
the old key signed (answers, checkpoints) still verifies, because the signed directory keeps
each identity's replaced keys with the time they were in use; the same for the registry's key
(the directory and the witness's cosignatures); a broken bundle on SIGHUP is refused and the
service goes on with the old identity."""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from harness import BANK, CHENGDU_FIRM, LOAD_TEST_CONSENT, SEED, load_test_policies
from processes import NODE, Proc, free_port, network_identities, wait_registered
from test_cli import xinyi

from node.store import NodeStore
from xinyi.audit.checkpoint import NoteError, verify_cosignature, verify_note
from xinyi.client import AuditClient, BankClient, EnterpriseClient
from xinyi.clock import now_ms
from xinyi.crypto.envelope import body_hash
from xinyi.crypto.identity import Principal, Role
from xinyi.crypto.pki import Identity, PKIError, RootCA
from xinyi.directory import ROTATION_GRACE_MS, listed_key
from xinyi.query import AnswerError, build_query, open_answer
from xinyi.v1 import directory_pb2, registry_pb2

# Real processes started and stopped again and again: run by `make test-slow` and CI, not `make test`.
pytestmark = pytest.mark.slow

CATEGORIES = ["registration", "tax"]
PURPOSE = "credit_assessment"


class Net:
    """A registry and one node as real processes, the node holding the Chengdu firm's records."""

    def __init__(self, tmp_path: Path, workers: int = 1) -> None:
        self.certs = tmp_path / "certs"
        self.ids, self.dirs = network_identities(self.certs)
        self.logs = tmp_path / "logs"
        self.logs.mkdir()
        node_db, registry_db = f"sqlite:///{tmp_path}/node.db", f"sqlite:///{tmp_path}/registry.db"
        store = NodeStore(node_db)
        try:
            store.create_schema()
            store.add_records([r for r in SEED["510100"] + SEED["510000"] if r.uscc == CHENGDU_FIRM], now_ms())
        finally:
            store.close()
        self.registry, self.node_addr = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
        self.node_processes = 1 if workers == 1 else workers + 1  # with --workers: a sequencer and N workers
        policies = str(load_test_policies(tmp_path))
        self.reg = Proc("registry", ["registry", "serve", "--identity", str(self.dirs["registry"]), "--listen",
                                     self.registry, "--db", registry_db, "--policies", policies], self.logs)
        self.node = Proc("node", ["node", "serve", "--identity", str(self.dirs["node"]), "--listen", self.node_addr,
                                  "--registry", self.registry, "--db", node_db, "--policies", policies,
                                  "--workers", str(workers)], self.logs)
        self.procs = [self.reg, self.node]
        self.auditor_dir = str(self.dirs["auditor"])

    async def start(self) -> str:
        for p in self.procs:
            p.start()
        await wait_registered(self.ids["bank"], self.ids["auditor"], self.registry, self.node_addr, self.procs, timeout=60)
        async with EnterpriseClient(self.ids["enterprise"], self.registry) as enterprise:
            return (await enterprise.grant(BANK, PURPOSE, CATEGORIES, 30, **LOAD_TEST_CONSENT)).consent_id

    async def directory(self):
        async with BankClient(self.ids["bank"], self.registry) as bank:
            return await bank.directory(refresh=True)

    async def wait_directory(self, check, what: str, timeout: float = 20.0):
        deadline = time.monotonic() + timeout
        while True:
            directory = await self.directory()
            if check(directory):
                return directory
            if time.monotonic() > deadline:
                raise AssertionError(f"the signed directory did not show {what} within {timeout:.0f} s")
            await asyncio.sleep(0.2)

    async def renew(self, role_id: str) -> bytes:
        code, out, err = await xinyi("pki", "renew", "--dir", self.certs, "--id", role_id)
        assert code == 0, err
        return Identity.load(self.certs / role_id).signing_cert_der

    async def audit_verify(self, *target: str, state: Path) -> tuple[int, str, str]:
        return await xinyi("audit", "verify", "--identity", self.auditor_dir, *target, "--state", state)

    async def keep_checkpoint(self, *target: str, out: Path) -> None:
        code, _, err = await xinyi("audit", "checkpoint", "--identity", self.auditor_dir, *target, "--out", out)
        assert code == 0, err

    async def extends_kept_checkpoint(self, *target: str, kept: Path) -> None:
        """The log now extends a checkpoint kept from before the rotation, signed by the old key."""
        code, out, err = await xinyi("audit", "consistency", "--identity", self.auditor_dir, *target, "--checkpoint", kept)
        assert code == 0 and "verified" in out, err

    def close(self, failed: bool) -> None:
        if failed:
            for p in self.procs:
                print(p.dump_logs())
        for p in self.procs:
            p.kill()


async def sealed_answer(bank: BankClient, consent_id: str):
    """One answer through the registry, kept sealed: (node result, answer key, request hash)."""
    envelope, key = build_query(bank.identity, uscc=CHENGDU_FIRM, categories=CATEGORIES, purpose=PURPOSE,
                                consent_id=consent_id, now_ms=now_ms())
    response = await bank.registry.RouteQuery(registry_pb2.RouteQueryRequest(query=envelope), timeout=30)
    (result,) = [r for r in response.results if r.node_id == NODE]
    assert result.sealed_answer, result.error_message
    return result, key, body_hash(envelope.body)


def open_with(entry: directory_pb2.NodeEntry, kept, trust, *, history: bool = True):
    result, key, request_hash = kept
    return open_answer(result.sealed_answer, key, expected_node=NODE, node_signing_cert=entry.signing_cert,
                       request_hash=request_hash, uscc=CHENGDU_FIRM, trust=trust,
                       previous_keys=entry.previous_keys if history else ())


@pytest.mark.timeout(180)
@pytest.mark.parametrize("workers", [1, 2])
async def test_a_nodes_key_is_rotated_under_query_load_and_everything_it_signed_still_verifies(tmp_path: Path,
                                                                                              workers: int) -> None:
    net = Net(tmp_path, workers)
    failed = True
    try:
        consent_id = await net.start()
        old_cert = (await net.directory()).nodes[NODE].signing_cert
        bank_identity = net.ids["bank"]
        state = tmp_path / "auditor-node.json"
        async with BankClient(bank_identity, net.registry) as bank:
            first = (await bank.query(CHENGDU_FIRM, CATEGORIES, PURPOSE, consent_id)).nodes[0]
            assert first.status == "ok", first.error
            before = await sealed_answer(bank, consent_id)
        code, out, err = await net.audit_verify("--node", net.node_addr, state=state)  # the auditor looks, and remembers
        assert code == 0, err
        await net.keep_checkpoint("--node", net.node_addr, out=tmp_path / "early.txt")

        # A broken bundle first: refused, logged, and the node goes on with its identity.
        signing_key = net.dirs["node"] / "signing.key"
        good = signing_key.read_bytes()
        signing_key.write_bytes((net.dirs["bank"] / "signing.key").read_bytes())
        net.node.hup()
        lines = await net.node.wait_for_log("identity NOT reloaded", count=net.node_processes)
        assert all("signing.key does not match signing.crt" in line for line in lines)
        signing_key.write_bytes(good)

        # A steady load: a bank querying all along, on one kept client (its cached directory
        # goes stale during the rotation), and a fresh client each time.
        outcomes: list[str] = []
        stop = asyncio.Event()

        async def load() -> None:
            async with BankClient(bank_identity, net.registry) as kept:
                while not stop.is_set():
                    for client in (kept, None):
                        if client is None:
                            async with BankClient(bank_identity, net.registry) as fresh:
                                result = await fresh.query(CHENGDU_FIRM, CATEGORIES, PURPOSE, consent_id)
                        else:
                            result = await client.query(CHENGDU_FIRM, CATEGORIES, PURPOSE, consent_id)
                        (view,) = [v for v in result.nodes if v.node == NODE]
                        outcomes.append(view.status if view.verified else f"{view.status}: {view.error}")

        loader = asyncio.create_task(load())
        await asyncio.sleep(1.0)
        served_before = len(outcomes)
        new_cert = await net.renew(f"node-{NODE}")
        assert new_cert != old_cert
        net.node.hup()
        await net.node.wait_for_log("took over the renewed identity", count=net.node_processes, timeout=20)
        directory = await net.wait_directory(lambda d: d.nodes[NODE].signing_cert == new_cert, "the node's new key")
        (period,) = directory.nodes[NODE].previous_keys
        assert period.signing_cert == old_cert and period.valid_until_ms > 0
        await asyncio.sleep(1.5)  # and on, with the new key
        stop.set()
        await loader
        assert served_before > 0 and len(outcomes) > served_before + 2
        assert all(o == "ok" for o in outcomes), [o for o in outcomes if o != "ok"]
        assert "identity NOT reloaded" not in net.node.log().split("took over the renewed identity")[1]

        # The answer signed with the old key before the rotation still opens with the directory
        # of after it, by its listed history, and not by the current key alone.
        trust = bank_identity.trust()
        assert open_with(directory.nodes[NODE], before, trust).records
        with pytest.raises(AnswerError, match="key the directory does not list"):
            open_with(directory.nodes[NODE], before, trust, history=False)
        async with BankClient(bank_identity, net.registry) as bank:
            after = await sealed_answer(bank, consent_id)
        assert open_with(directory.nodes[NODE], after, trust).records

        # New connections get the new TLS certificate (the node keeps serving on its port).
        served = await asyncio.to_thread(served_tls_cert, net.node_addr, net.dirs["auditor"], "node-510100.xinyi")
        assert served == Identity.load(net.dirs["node"]).tls_cert.public_bytes(serialization.Encoding.DER)
        async with AuditClient(net.ids["auditor"], net.node_addr, Principal(Role.NODE, NODE)) as audit:
            checkpoint = await audit.checkpoint()
        new_key = x509.load_der_x509_certificate(new_cert).public_key()
        verify_note(checkpoint.checkpoint, f"xinyi/{NODE}", new_key)  # checkpoints are signed with the new key
        # The auditor who looked before the rotation: the log still verifies, old and new checkpoints.
        code, out, err = await net.audit_verify("--node", net.node_addr, state=state)
        assert code == 0, err
        assert out.startswith(f"xinyi/{NODE}: OK")
        await net.extends_kept_checkpoint("--node", net.node_addr, kept=tmp_path / "early.txt")
        failed = False
    finally:
        net.close(failed)


@pytest.mark.timeout(180)
async def test_the_registrys_key_is_rotated_and_an_auditor_from_before_still_verifies(tmp_path: Path) -> None:
    net = Net(tmp_path)
    failed = True
    try:
        consent_id = await net.start()
        node_state, registry_state = tmp_path / "node.json", tmp_path / "registry.json"
        async with BankClient(net.ids["bank"], net.registry) as bank:
            await bank.query(CHENGDU_FIRM, CATEGORIES, PURPOSE, consent_id)
        old_directory = await net.directory()
        old_cert = old_directory.envelope.signer_cert
        witness = f"xinyi/{old_directory.registry_id}"
        old_note = await cosigned_note(net, lambda note: True)
        for target, state in ((["--node", net.node_addr], node_state), (["--registry", net.registry], registry_state)):
            code, _, err = await net.audit_verify(*target, state=state)
            assert code == 0, err
        await net.keep_checkpoint("--registry", net.registry, out=tmp_path / "early.txt")

        new_cert = await net.renew("registry-national")
        net.reg.hup()
        await net.reg.wait_for_log("took over the renewed identity")
        directory = await net.wait_directory(lambda d: d.envelope.signer_cert == new_cert, "the registry's new key")
        (period,) = directory.registry_keys
        assert period.signing_cert == old_cert
        # More traffic, so the node's next checkpoint is cosigned with the witness's new key.
        async with BankClient(net.ids["bank"], net.registry) as bank:
            assert (await bank.query(CHENGDU_FIRM, CATEGORIES, PURPOSE, consent_id)).nodes[0].status == "ok"
        new_key = x509.load_der_x509_certificate(new_cert).public_key()

        def by_new_key(note: str) -> bool:
            try:
                verify_cosignature(note, witness, new_key)
                return True
            except NoteError:
                return False

        await cosigned_note(net, by_new_key)
        # The cosignature from before the rotation verifies with the directory's history only.
        keys = [x509.load_der_x509_certificate(c).public_key() for c in directory.registry_certs()]
        verify_cosignature(old_note, witness, keys)
        with pytest.raises(NoteError):
            verify_cosignature(old_note, witness, new_key)
        # The auditor who last looked before the rotation: both logs verify.
        for target, state in ((["--node", net.node_addr], node_state), (["--registry", net.registry], registry_state)):
            code, out, err = await net.audit_verify(*target, state=state)
            assert code == 0, (target, err)
        await net.extends_kept_checkpoint("--registry", net.registry, kept=tmp_path / "early.txt")
        failed = False
    finally:
        net.close(failed)


def served_tls_cert(addr: str, client: Path, name: str) -> bytes:
    """The certificate a server presents to a new mutual-TLS handshake now."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(client / "ca.crt")
    context.load_cert_chain(client / "tls.crt", client / "tls.key")
    context.set_alpn_protocols(["h2"])
    host, port = addr.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=name) as tls:
            return tls.getpeercert(binary_form=True)


async def cosigned_note(net: Net, wanted, timeout: float = 20.0) -> str:
    """The node's latest cosigned checkpoint, once `wanted(note)` holds."""
    deadline = time.monotonic() + timeout
    while True:
        async with AuditClient(net.ids["auditor"], net.node_addr, Principal(Role.NODE, NODE)) as audit:
            note = (await audit.checkpoint()).cosigned_checkpoint
        if note and wanted(note):
            return note
        if time.monotonic() > deadline:
            raise AssertionError(f"no cosigned checkpoint as wanted within {timeout:.0f} s")
        await asyncio.sleep(0.3)


def test_a_replaced_key_is_accepted_only_for_what_it_signed_while_in_use() -> None:
    period = directory_pb2.KeyPeriod(signing_cert=b"old", valid_from_ms=1_000_000, valid_until_ms=2_000_000)
    assert listed_key(b"new", [period], b"new", 0)
    assert listed_key(b"new", [period], b"old", 1_500_000)
    assert listed_key(b"new", [period], b"old", 2_000_000 + ROTATION_GRACE_MS)  # in flight during the rotation
    assert not listed_key(b"new", [period], b"old", 2_000_001 + ROTATION_GRACE_MS)
    assert not listed_key(b"new", [period], b"other", 1_500_000)


def test_an_identity_takes_over_only_a_renewed_bundle_of_itself(tmp_path: Path) -> None:
    root = RootCA.create()
    node = root.issue(Principal(Role.NODE, NODE))
    renewed = root.issue(Principal(Role.NODE, NODE))
    with pytest.raises(PKIError, match="not node/510100"):
        node.adopt(root.issue(Principal(Role.NODE, "510000")))
    with pytest.raises(PKIError, match="another national root"):
        node.adopt(RootCA.create().issue(Principal(Role.NODE, NODE)))
    assert node.generation == 0
    node.adopt(renewed)
    assert node.generation == 1 and node.signing_cert_der == renewed.signing_cert_der
    assert node.tls_key_pem == renewed.tls_key_pem


def test_the_registry_store_keeps_replaced_keys_with_their_time_in_use(databases) -> None:
    from registry.store import NodeRow, RegistryStore

    store = RegistryStore(databases.new("keys"))
    try:
        store.create_schema()
        store.upsert_node(NodeRow(NODE, "127.0.0.1:1", b"first", 1_000))
        store.upsert_node(NodeRow(NODE, "127.0.0.1:1", b"first", 2_000))  # the same key again: nothing replaced
        assert store.key_histories() == {}
        store.upsert_node(NodeRow(NODE, "127.0.0.1:1", b"second", 3_000))
        store.upsert_node(NodeRow(NODE, "127.0.0.1:1", b"third", 5_000))
        assert store.key_histories() == {f"node/{NODE}": [(b"first", 0, 3_000), (b"second", 3_000, 5_000)]}
        assert store.note_own_key("registry/national", b"r1", 1_000) is False  # the first key replaces nothing
        assert store.note_own_key("registry/national", b"r1", 2_000) is False
        version = store.list_nodes()[0]
        assert store.note_own_key("registry/national", b"r2", 4_000) is True
        assert store.list_nodes()[0] == version + 1  # the directory is re-signed
        assert store.key_histories()["registry/national"] == [(b"r1", 0, 4_000)]
    finally:
        store.close()
