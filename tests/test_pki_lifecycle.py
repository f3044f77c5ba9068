"""Keys that live for years: issuing CAs under an offline root, revocation lists, renewal, expiry.

Pure PKI on tmp_path, plus real TLS handshakes between identities from different issuing CAs.
"""

from __future__ import annotations

import datetime as dt
import re
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from grpc_health.v1 import health_pb2, health_pb2_grpc
from harness import BANK, LICENCE

from xinyi.crypto.envelope import sign, verify
from xinyi.crypto.identity import Principal, Role
from xinyi.crypto.pki import (
    Identity,
    IssuingCA,
    PKIError,
    RootCA,
    TrustAnchor,
    create_issuing_ca,
    init_root,
    issue_identity,
    pki_status,
    renew_identity,
    revocation_lists,
    revoke_ca,
    revoke_identity,
)
from xinyi.crypto.revocation import RevocationError, RevocationSet, revoke
from xinyi.errors import Refusal
from xinyi.rpc.channels import secure_channel
from xinyi.rpc.server import start_server
from xinyi.v1 import query_pb2

ROOT = Path(__file__).resolve().parent.parent
NOW = dt.datetime.now(dt.timezone.utc)


def anchor_for(directory: Path) -> TrustAnchor:
    """What a relying party holds: the root, and the revocation lists it was handed."""
    anchor = TrustAnchor(RootCA.load(directory, with_key=False).cert)
    for ca_dir in sorted((directory / "cas").glob("*")):
        anchor.add_authorities([x509.load_pem_x509_certificate((ca_dir / "ca.crt").read_bytes())])
    anchor.set_revocations(RevocationSet.verified(revocation_lists(directory), anchor.issuer_cert_by_name))
    return anchor


@pytest.fixture
def pki(tmp_path) -> Path:
    init_root(tmp_path)
    create_issuing_ca(tmp_path, "sichuan")
    create_issuing_ca(tmp_path, "banks")
    return tmp_path


def _bank(pki: Path, ca: str = "banks") -> Identity:
    return Identity.load(issue_identity(pki, Role.BANK, BANK, licence=LICENCE, ca=ca))


# --- issuing CAs -----------------------------------------------------------------------------
def test_an_identity_from_an_issuing_ca_verifies_against_the_root_alone(pki):
    bank = _bank(pki)
    assert [c.subject for c in bank.chain] == [IssuingCA.load(pki, "banks", with_key=False).cert.subject]
    assert (pki / f"bank-{BANK}" / "chain.crt").exists()
    root_only = TrustAnchor(RootCA.load(pki, with_key=False).cert)
    # Without the chain a relying party cannot place the issuer ...
    with pytest.raises(PKIError, match="not issued by the national root or an issuing CA it certified"):
        root_only.verify_signing_cert(bank.signing_cert_der)
    # ... and with the chain the envelope carries, it verifies the whole path.
    envelope = sign(bank, query_pb2.QueryBody(uscc=BANK))
    assert list(envelope.signer_chain) == list(bank.chain_der)
    assert verify(envelope, query_pb2.QueryBody, root_only).signer == Principal(Role.BANK, BANK)


def test_a_ca_from_another_root_is_not_learned(pki, tmp_path_factory):
    other = tmp_path_factory.mktemp("other")
    init_root(other)
    create_issuing_ca(other, "banks")
    foreign = Identity.load(issue_identity(other, Role.BANK, BANK, licence=LICENCE, ca="banks"))
    anchor = anchor_for(pki)
    assert anchor.add_authorities(foreign.chain) == []
    with pytest.raises(Refusal) as refused:
        verify(sign(foreign, query_pb2.QueryBody(uscc=BANK)), query_pb2.QueryBody, anchor)
    assert refused.value.reason == "BAD_CERTIFICATE"


def test_path_length_is_enforced_an_issuing_ca_cannot_make_a_ca(pki):
    """The banks CA (path length 0) signs a CA certificate of its own and issues under it."""
    banks = IssuingCA.load(pki, "banks")
    rogue_key = ec.generate_private_key(ec.SECP256R1())
    rogue = (
        x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "rogue")]))
        .issuer_name(banks.cert.subject).public_key(rogue_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(minutes=5)).not_valid_after(NOW + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(rogue_key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(banks.cert.public_key()), critical=False)
        .sign(banks.key, hashes.SHA256())
    )
    forged = IssuingCA(rogue, rogue_key, _root=banks.root_cert, ca_id="rogue").issue(
        Principal(Role.BANK, BANK), not_after=NOW + dt.timedelta(days=10))
    anchor = anchor_for(pki)
    # The rogue CA is not certified by the root, so it is never learned as an authority ...
    assert anchor.add_authorities([rogue]) == []
    # ... and a chain through it does not validate.
    chain = (rogue.public_bytes(serialization.Encoding.DER), banks.cert.public_bytes(serialization.Encoding.DER))
    with pytest.raises(PKIError):
        anchor.verify_signing_cert(forged.signing_cert_der, chain=chain)


def test_an_end_entity_certificate_cannot_issue(pki):
    """A bank's own TLS key (not a CA) signs a certificate for another bank."""
    bank = _bank(pki)
    fake = (
        x509.CertificateBuilder().subject_name(bank.signing_cert.subject).issuer_name(bank.tls_cert.subject)
        .public_key(bank.signing_cert.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(minutes=5)).not_valid_after(NOW + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(bank.signing_cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value, critical=False)
        .sign(bank.tls_key, hashes.SHA256())
    )
    anchor = anchor_for(pki)
    assert anchor.add_authorities([bank.tls_cert]) == []
    with pytest.raises(PKIError):
        anchor.verify_signing_cert(fake.public_bytes(serialization.Encoding.DER),
                                   chain=(bank.tls_cert.public_bytes(serialization.Encoding.DER),))


def test_a_root_of_path_length_zero_certifies_no_ca(tmp_path):
    old = RootCA.create()
    object.__setattr__(old, "cert", old.cert)  # roots made before issuing CAs: rebuild one with path length 0
    from xinyi.crypto.pki import _ca_certificate, _name

    key = ec.generate_private_key(ec.SECP256R1())
    legacy = RootCA(_ca_certificate(_name("legacy root"), key.public_key(), None, key, dt.timedelta(days=30), 0), key)
    with pytest.raises(PKIError, match="path length 0"):
        legacy.certify_ca("sichuan")
    # It still issues identities directly, as before.
    identity = legacy.issue(Principal(Role.NODE, "510100"), not_after=NOW + dt.timedelta(days=10))
    assert TrustAnchor(legacy.cert).verify_signing_cert(identity.signing_cert_der)[0] == Principal(Role.NODE, "510100")


@pytest.mark.parametrize("name", ["", "Sichuan", "a b", "../x", "-x", "x" * 41])
def test_issuing_ca_names_are_checked(pki, name):
    with pytest.raises(PKIError, match="CA name"):
        create_issuing_ca(pki, name)


def test_with_the_root_key_offline_issuing_cas_work_and_what_needs_the_root_says_so(pki):
    """The root's key goes offline: issuing, renewing and revoking under an issuing CA go on; what
    only the root can sign names its key as what is missing (not "issue the identity")."""
    (pki / "ca" / "ca.key").rename(pki / "offline.key")
    node = issue_identity(pki, Role.NODE, "510100", ca="sichuan")
    renew_identity(pki, node.name)
    revoke_identity(pki, node.name, "superseded", previous_only=True)
    assert {r.what: r.state for r in pki_status(pki) if not r.previous}["node-510100: tls"] == "valid"
    for attempt in (lambda: create_issuing_ca(pki, "chongqing"), lambda: revoke_ca(pki, "sichuan", "unspecified"),
                    lambda: issue_identity(pki, Role.NODE, "310000")):
        with pytest.raises(PKIError, match=r"needs the root CA's key, and .*ca\.key is not here") as refused:
            attempt()
        assert "issue the identity" not in str(refused.value)
    done = subprocess.run([sys.executable, "-m", "xinyi.cli", "pki", "revoke", "--dir", str(pki), "--ca", "sichuan"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "needs the root CA's key" in done.stderr and "Traceback" not in done.stderr
    (pki / "cas" / "banks" / "ca.key").unlink()
    with pytest.raises(PKIError, match="needs the key of issuing CA 'banks'"):
        issue_identity(pki, Role.NODE, "310000", ca="banks")


def test_an_issuing_ca_is_not_overwritten(pki):
    before = (pki / "cas" / "banks" / "ca.key").read_bytes()
    with pytest.raises(PKIError, match="refusing to overwrite"):
        create_issuing_ca(pki, "banks")
    assert (pki / "cas" / "banks" / "ca.key").read_bytes() == before
    assert (pki / "cas" / "banks" / "ca.key").stat().st_mode & 0o777 == 0o600



def test_issuing_an_identity_that_exists_is_refused_and_its_keys_kept(pki):
    """Issuing over a bundle would lose its keys and leave its certificates valid, out of reach of
    `pki revoke` and `pki status`: the operator is sent to `pki renew` (or `pki revoke`)."""
    first = _bank(pki)
    bundle = pki / f"bank-{BANK}"
    keys = {name: (bundle / name).read_bytes() for name in ("tls.key", "signing.key")}
    with pytest.raises(PKIError, match=f"already holds the identity bank/{BANK}.*pki renew"):
        issue_identity(pki, Role.BANK, BANK, licence=LICENCE, ca="sichuan")
    done = subprocess.run([sys.executable, "-m", "xinyi.cli", "pki", "issue", "--dir", str(pki), "--role", "bank",
                           "--id", BANK, "--licence", LICENCE], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "refusing to overwrite" in done.stderr and "Traceback" not in done.stderr
    assert f"xinyi pki renew --dir {pki} --id bank-{BANK}" in done.stderr
    assert {name: (bundle / name).read_bytes() for name in keys} == keys
    assert Identity.load(bundle).signing_cert == first.signing_cert
    # What it holds can still be revoked: every certificate the bank was issued is on the list.
    assert set(revoke_identity(pki, f"bank-{BANK}", "unspecified")) == {
        first.tls_cert.serial_number, first.signing_cert.serial_number}


@pytest.mark.parametrize("name, says", [
    ("bad name!", "letters, digits and dashes"),
    ("-x.example.cn", "neither starts nor ends with a dash"),
    ("a..example.cn", "1 to 63 characters"),
    ("x" * 64 + ".cn", "1 to 63 characters"),
    ("节点.example.cn", "xn--"),
    ("10.0.0.7", "give it with --ip"),
    ("*.cn", "letters, digits and dashes"),
    ("", "1 to 253 characters"),
])
def test_a_host_name_that_is_no_host_name_is_refused(pki, name, says):
    with pytest.raises(PKIError, match="--dns: .*" + re.escape(says)):
        issue_identity(pki, Role.NODE, "510100", ca="sichuan", dns_names=("node.example.cn", name))
    assert not (pki / "node-510100").exists()


def test_host_names_as_operators_write_them_are_accepted(pki):
    names = ("Node-1.SC.example.cn", "*.nodes.example.cn", "xn--fiq228c.example.cn", "localhost2")
    node = Identity.load(issue_identity(pki, Role.NODE, "510100", ca="sichuan", dns_names=names))
    san = node.tls_cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(names) <= set(san.get_values_for_type(x509.DNSName))


# --- revocation ------------------------------------------------------------------------------
def test_a_revoked_identity_is_refused_but_what_it_signed_before_still_verifies(pki):
    bank = _bank(pki)
    signed_before = sign(bank, query_pb2.QueryBody(uscc=BANK))
    revoked_at = dt.datetime.now(dt.timezone.utc)
    revoke_identity(pki, f"bank-{BANK}", "key_compromise", now=revoked_at)
    anchor = anchor_for(pki)
    with pytest.raises(PKIError, match=r"was revoked: serial [0-9a-f]+ revoked at .* \(key_compromise\)"):
        anchor.verify_signing_cert(bank.signing_cert_der, chain=bank.chain_der)
    # Checked at its signing time (an audit entry, an old checkpoint), the statement still stands.
    before = revoked_at - dt.timedelta(seconds=2)
    assert verify(signed_before, query_pb2.QueryBody, anchor, at=before).signer == bank.principal
    with pytest.raises(Refusal, match="revoked"):
        verify(signed_before, query_pb2.QueryBody, anchor)


def test_after_a_leaked_key_the_replaced_certificates_alone_are_revoked(pki):
    """Renew, then revoke only what renew replaced: the leaked key stops verifying (what it signed
    before still does), the new one goes on; the command says which were revoked."""
    old = _bank(pki)
    signed_before = sign(old, query_pb2.QueryBody(uscc=BANK))
    with pytest.raises(PKIError, match=r"no replaced certificates .*pki renew"):
        revoke_identity(pki, f"bank-{BANK}", "key_compromise", previous_only=True)
    renew_identity(pki, f"bank-{BANK}")
    new = Identity.load(pki / f"bank-{BANK}")
    revoked_at = dt.datetime.now(dt.timezone.utc)
    done = subprocess.run([sys.executable, "-m", "xinyi.cli", "pki", "revoke", "--dir", str(pki), "--id",
                           f"bank-{BANK}", "--previous", "--reason", "key_compromise"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "2 replaced certificates (its current ones stay valid)" in done.stdout
    assert f"{old.signing_cert.serial_number:x}" in done.stdout and f"{new.signing_cert.serial_number:x}" not in done.stdout
    anchor = anchor_for(pki)
    with pytest.raises(PKIError, match="was revoked"):
        anchor.verify_signing_cert(old.signing_cert_der, chain=old.chain_der)
    assert anchor.verify_signing_cert(new.signing_cert_der, chain=new.chain_der)[0] == new.principal
    assert anchor.revocations.revoked(new.tls_cert, at=dt.datetime.now(dt.timezone.utc)) is None
    assert anchor.revocations.revoked(old.tls_cert, at=dt.datetime.now(dt.timezone.utc)) is not None
    before = revoked_at - dt.timedelta(seconds=2)
    assert verify(signed_before, query_pb2.QueryBody, anchor, at=before).signer == old.principal
    rows = {(r.what, r.previous): r.state for r in pki_status(pki)}
    assert rows[(f"bank-{BANK}: signing", True)] == "revoked" and rows[(f"bank-{BANK}: signing", False)] == "valid"
    usage = subprocess.run([sys.executable, "-m", "xinyi.cli", "pki", "revoke", "--dir", str(pki), "--ca", "banks",
                            "--previous"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert usage.returncode == 2 and "--previous: goes with --id" in usage.stderr


def test_revoking_an_issuing_ca_revokes_everything_it_issued(pki):
    bank = _bank(pki, "banks")
    node = Identity.load(issue_identity(pki, Role.NODE, "510100", ca="sichuan"))
    revoke_ca(pki, "banks", "ca_compromise")
    anchor = anchor_for(pki)
    with pytest.raises(PKIError, match="issuing CA of .* was revoked"):
        anchor.verify_signing_cert(bank.signing_cert_der, chain=bank.chain_der)
    assert anchor.verify_signing_cert(node.signing_cert_der, chain=node.chain_der)[0] == node.principal


def test_status_shows_what_a_revoked_issuing_ca_issued_as_revoked(pki):
    """`pki status` must not list a bank as valid when every party refuses it because its CA was revoked."""
    _bank(pki, "banks")
    issue_identity(pki, Role.NODE, "510100", ca="sichuan")
    revoke_ca(pki, "banks", "ca_compromise")
    rows = {r.what: r for r in pki_status(pki)}
    assert rows["ca banks"].state == "revoked" and "ca_compromise" in rows["ca banks"].revoked
    for kind in ("tls", "signing"):
        row = rows[f"bank-{BANK}: {kind}"]
        assert row.state == "revoked", row
        assert row.revoked.startswith("its issuing CA banks was revoked: serial ") and "ca_compromise" in row.revoked
        assert rows[f"node-510100: {kind}"].state == "valid"
    done = subprocess.run([sys.executable, "-m", "xinyi.cli", "pki", "status", "--dir", str(pki)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    [line] = [x for x in done.stdout.splitlines() if x.startswith(f"bank-{BANK}: tls")]
    assert "REVOKED: its issuing CA banks was revoked" in line


def test_a_revocation_list_signed_by_another_key_is_refused(pki):
    banks = IssuingCA.load(pki, "banks")
    impostor_key = ec.generate_private_key(ec.SECP256R1())
    forged = revoke(banks.cert, impostor_key, None, [1, 2, 3], "unspecified")
    anchor = anchor_for(pki)
    with pytest.raises(RevocationError, match="not signed by that CA"):
        RevocationSet.verified([forged], anchor.issuer_cert_by_name)
    stranger = RootCA.create(name="Stranger")
    with pytest.raises(RevocationError, match="did not certify"):
        RevocationSet.verified([revoke(stranger.cert, stranger.key, None, [1], "unspecified")], anchor.issuer_cert_by_name)


def test_an_older_list_cannot_undo_a_revocation(pki):
    bank = _bank(pki)
    banks = IssuingCA.load(pki, "banks")
    first = revoke(banks.cert, banks.key, None, [12345], "unspecified")
    second = revoke(banks.cert, banks.key, first, [bank.signing_cert.serial_number], "privilege_withdrawn")
    anchor = anchor_for(pki)
    newest = RevocationSet.verified([second], anchor.issuer_cert_by_name)
    replayed = newest.merged(RevocationSet.verified([first], anchor.issuer_cert_by_name))
    later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=5)  # after `second` was signed
    assert replayed.revoked(bank.signing_cert, at=later) is not None
    assert RevocationSet.verified([first, second], anchor.issuer_cert_by_name).number(banks.cert.subject) == 2


def test_revoke_names_a_missing_identity(pki):
    with pytest.raises(PKIError, match="no identity 'bank-x' .*ROLE-ID"):
        revoke_identity(pki, "bank-x", "unspecified")


# --- renewal and expiry ----------------------------------------------------------------------
def test_renew_issues_new_keys_for_the_same_identity_and_keeps_the_old(pki):
    old = Identity.load(issue_identity(pki, Role.NODE, "510100", ca="sichuan", dns_names=("node.sc.example.cn",),
                                       ip_addresses=("10.0.0.7",)))
    bank = _bank(pki)
    renew_identity(pki, f"bank-{BANK}")
    renewed_bank = Identity.load(pki / f"bank-{BANK}")
    assert renewed_bank.signing_cert.subject.get_attributes_for_oid(x509.NameOID.SERIAL_NUMBER)[0].value == LICENCE
    renew_identity(pki, "node-510100")
    new = Identity.load(pki / "node-510100")
    assert new.principal == old.principal
    assert new.signing_cert.serial_number != old.signing_cert.serial_number
    assert new.signing_key.public_key() != old.signing_key.public_key()
    kept = pki / "node-510100" / "previous" / f"{old.tls_cert.serial_number:x}"
    assert Identity.load(kept).signing_cert == old.signing_cert
    san = new.tls_cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "node.sc.example.cn" in san.get_values_for_type(x509.DNSName)
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["10.0.0.7"]
    # Both keys verify while the old one is neither expired nor revoked.
    anchor = anchor_for(pki)
    for identity in (old, new, bank, renewed_bank):
        assert anchor.verify_signing_cert(identity.signing_cert_der, chain=identity.chain_der)[0] == identity.principal


def test_status_warns_thirty_days_ahead_and_the_command_fails(pki):
    issue_identity(pki, Role.NODE, "510100", ca="sichuan", not_before=NOW - dt.timedelta(days=300),
                   not_after=NOW + dt.timedelta(days=20))
    issue_identity(pki, Role.NODE, "310000", ca="sichuan")
    rows = {r.what: r for r in pki_status(pki)}
    assert rows["node-510100: tls"].state == "expiring" and rows["node-510100: signing"].state == "expiring"
    assert rows["node-310000: tls"].state == "valid"
    assert rows["root"].state == "valid" and rows["ca sichuan"].state == "valid"
    done = subprocess.run([sys.executable, "-m", "xinyi.cli", "pki", "status", "--dir", str(pki)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "node-510100: tls" in done.stdout and "expires in 1" in done.stdout
    assert "renew them with `xinyi pki renew`" in done.stderr and "Traceback" not in done.stderr


def test_an_identity_cannot_outlive_its_ca(pki):
    with pytest.raises(PKIError, match="expires on"):
        issue_identity(pki, Role.NODE, "510100", ca="sichuan", not_after=NOW + dt.timedelta(days=4000))


def test_cli_issue_from_an_unknown_ca_says_how_to_make_it(pki):
    done = subprocess.run([sys.executable, "-m", "xinyi.cli", "pki", "issue", "--dir", str(pki), "--role", "node",
                           "--id", "510100", "--ca", "chongqing"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "no issuing CA 'chongqing'" in done.stderr and "xinyi pki ca" in done.stderr


# --- real TLS across issuing CAs -------------------------------------------------------------
async def test_mutual_tls_between_identities_of_different_issuing_cas(pki):
    server_identity = Identity.load(issue_identity(pki, Role.REGISTRY, "national", ca="sichuan",
                                                   dns_names=("registry.example.cn",), ip_addresses=("127.0.0.1",)))
    bank = _bank(pki, "banks")
    server, port, _ = await start_server(server_identity, "127.0.0.1:0", lambda s: None, [])
    try:
        channel = secure_channel(bank, f"127.0.0.1:{port}", Role.REGISTRY)
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        finally:
            await channel.close()
    finally:
        await server.stop(None)


def test_a_root_certified_ca_without_key_cert_sign_cannot_issue(pki):
    """Path validation, not just the signature chain: the root certified a CA whose key usage
    forbids signing certificates; what it signs is refused."""
    root = RootCA.load(pki)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "no-sign")])
    weak = (
        x509.CertificateBuilder().subject_name(name).issuer_name(root.cert.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(minutes=5)).not_valid_after(NOW + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(root.cert.public_key()), critical=False)
        .sign(root.key, hashes.SHA256())
    )
    leaf = IssuingCA(weak, key, _root=root.cert, ca_id="no-sign").issue(Principal(Role.BANK, BANK),
                                                                        not_after=NOW + dt.timedelta(days=10))
    with pytest.raises(PKIError, match="path to the national root does not validate"):
        TrustAnchor(root.cert).verify_signing_cert(leaf.signing_cert_der,
                                                   chain=(weak.public_bytes(serialization.Encoding.DER),))


async def test_a_service_warns_in_its_log_when_its_certificate_expires_within_30_days(tmp_path):
    from processes import Proc, free_port

    root = RootCA.create()
    root.save(tmp_path)
    registry = root.issue(Principal(Role.REGISTRY, "national"), not_before=NOW - dt.timedelta(days=300),
                          not_after=NOW + dt.timedelta(days=12)).save(tmp_path)
    proc = Proc("registry", ["registry", "serve", "--identity", str(registry), "--listen", f"127.0.0.1:{free_port()}",
                             "--db", f"sqlite:///{tmp_path / 'registry.db'}"], tmp_path)
    proc.start()
    try:
        [line] = await proc.wait_for_log("expires on", timeout=20)
        assert "WARNING" in line and "in 11 days" in line and "xinyi pki renew --id registry-national" in line
    finally:
        proc.kill()


async def test_a_certificate_that_expires_while_the_service_runs_is_logged_as_expired_not_as_due(caplog):
    """The daily check of a running service: within 30 days a warning with the days left; once
    expired an error that says so (not "expires ... in -1 days")."""
    import asyncio
    import logging

    from xinyi.cli.serve import warn_before_expiry

    root = RootCA.create()
    caplog.set_level(logging.WARNING, logger="xinyi")
    for not_after, level, says in ((NOW + dt.timedelta(days=12, hours=1), logging.WARNING, "(in 12 days)"),
                                   (NOW - dt.timedelta(hours=1), logging.ERROR, "expired on")):
        caplog.clear()
        identity = root.issue(Principal(Role.REGISTRY, "national"), not_before=NOW - dt.timedelta(days=300),
                              not_after=not_after)
        task = asyncio.create_task(warn_before_expiry(identity, every_seconds=3600))
        await asyncio.sleep(0.2)
        task.cancel()
        [record] = [r for r in caplog.records if "registry/national: a certificate of this identity" in r.getMessage()]
        assert record.levelno == level and says in record.getMessage(), record.getMessage()
        assert "-" not in record.getMessage().split("UTC")[1].split("`")[0], record.getMessage()  # no negative days
        assert "xinyi pki renew --id registry-national" in record.getMessage()
