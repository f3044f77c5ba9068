"""Identity and mutual TLS: the bundles `xinyi pki` writes, the trust anchor that verifies
signing certificates, and real TLS handshakes against grpc.aio servers on loopback.

Pure PKI tests need only tmp_path. The handshake, health and reflection tests share one small
network (a registry and the Chengdu node, SQLite) started once for the module: the handshake
does not depend on the store's back end, and the suite must stay fast.
"""

from __future__ import annotations

import datetime as dt
import shutil
import stat
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from harness import BANK, CHENGDU_FIRM, GUARANTOR, Network, expired_identity

from xinyi.crypto.identity import IdentityError, Principal, Role
from xinyi.crypto.pki import (
    Identity,
    PKIError,
    RootCA,
    TrustAnchor,
    init_root,
    issue_identity,
    principal_of,
    tls_role_name,
    tls_server_name,
)
from xinyi.rpc.channels import secure_channel
from xinyi.rpc.server import ServerStartError, start_server
from xinyi.rpc.status import RpcFailure

ONE_OF_EACH_ROLE = [
    (Role.REGISTRY, "national"),
    (Role.NODE, "510100"),
    (Role.BANK, BANK),
    (Role.GUARANTOR, GUARANTOR),
    (Role.AUDITOR, "audit-office"),
    (Role.ENTERPRISE, CHENGDU_FIRM),
]
BUNDLE_FILES = {"ca.crt", "tls.crt", "tls.key", "signing.crt", "signing.key"}


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _san_uris(cert: x509.Certificate) -> list[str]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return san.get_values_for_type(x509.UniformResourceIdentifier)


@pytest.fixture(scope="module")
def pki_dir(tmp_path_factory) -> Path:
    """A root made once for the module's file tests (key generation is cheap, but not free)."""
    directory = tmp_path_factory.mktemp("pki")
    init_root(directory)
    return directory


@pytest.fixture
def own_pki(pki_dir, tmp_path) -> Path:
    """The module's root in a directory of this test's own: identities issued here are new
    (`issue_identity` refuses to issue over a bundle that exists)."""
    shutil.copytree(pki_dir / "ca", tmp_path / "pki" / "ca")
    return tmp_path / "pki"


# --- pki init / issue ------------------------------------------------------------------------


def test_init_writes_a_self_signed_root_with_a_private_key(tmp_path):
    root = init_root(tmp_path)
    ca_dir = tmp_path / "ca"
    assert {p.name for p in ca_dir.iterdir()} == {"ca.crt", "ca.key"}
    assert _mode(ca_dir / "ca.key") == 0o600
    loaded = RootCA.load(tmp_path)
    assert loaded.cert == root.cert
    loaded.cert.verify_directly_issued_by(loaded.cert)  # self-signed
    assert loaded.cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    # The key on disk is the key of the certificate.
    assert loaded.key.public_key().public_numbers() == root.cert.public_key().public_numbers()


@pytest.mark.parametrize(("role", "principal_id"), ONE_OF_EACH_ROLE, ids=[r.value for r, _ in ONE_OF_EACH_ROLE])
def test_issue_writes_a_bundle_certified_by_the_root(pki_dir, role, principal_id):
    out = issue_identity(pki_dir, role, principal_id)
    principal = Principal(role, principal_id)
    assert out == pki_dir / f"{role}-{principal_id}"
    assert {p.name for p in out.iterdir()} == BUNDLE_FILES
    assert _mode(out / "tls.key") == 0o600
    assert _mode(out / "signing.key") == 0o600

    root = RootCA.load(pki_dir, with_key=False).cert
    assert x509.load_pem_x509_certificate((out / "ca.crt").read_bytes()) == root

    identity = Identity.load(out)
    assert identity.principal == principal
    assert isinstance(identity.tls_key, ec.EllipticCurvePrivateKey)
    assert isinstance(identity.tls_key.curve, ec.SECP256R1)
    assert isinstance(identity.signing_key, ed25519.Ed25519PrivateKey)

    for cert in (identity.tls_cert, identity.signing_cert):
        cert.verify_directly_issued_by(root)  # raises if another key signed it
        assert cert.issuer == root.subject
        assert _san_uris(cert) == [f"xinyi://{role}/{principal_id}"]
        assert principal_of(cert) == principal
        assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False

    # The TLS certificate answers to the names clients expect, and serves both ends of mTLS.
    dns = identity.tls_cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {tls_server_name(principal), tls_role_name(role)} <= set(dns.get_values_for_type(x509.DNSName))
    eku = identity.tls_cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH} <= set(eku)
    # The signing certificate cannot stand in for a TLS certificate.
    with pytest.raises(x509.ExtensionNotFound):
        identity.signing_cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage)


def test_load_rejects_a_tls_key_that_does_not_match_the_certificate(own_pki, tmp_path):
    bundle = shutil.copytree(issue_identity(own_pki, Role.NODE, "510000"), tmp_path / "node-510000")
    other = issue_identity(own_pki, Role.NODE, "310000")
    shutil.copy(other / "tls.key", bundle / "tls.key")
    with pytest.raises(PKIError) as err:
        Identity.load(bundle)
    assert "tls.key" in str(err.value)
    assert "tls.crt" in str(err.value)
    assert str(bundle) in str(err.value)


def test_load_rejects_a_signing_key_that_does_not_match_the_certificate(own_pki, tmp_path):
    bundle = shutil.copytree(issue_identity(own_pki, Role.NODE, "510000"), tmp_path / "node-510000")
    other = issue_identity(own_pki, Role.NODE, "310000")
    shutil.copy(other / "signing.key", bundle / "signing.key")
    with pytest.raises(PKIError, match=r"signing\.key does not match signing\.crt"):
        Identity.load(bundle)


def test_load_names_a_missing_file(own_pki, tmp_path):
    bundle = shutil.copytree(issue_identity(own_pki, Role.NODE, "510000"), tmp_path / "node-510000")
    (bundle / "signing.crt").unlink()
    with pytest.raises(PKIError, match=r"signing\.crt is missing"):
        Identity.load(bundle)


@pytest.mark.parametrize(
    ("role", "principal_id", "reason"),
    [
        (Role.NODE, "5101", "6-digit GB/T 2260 area code"),
        (Role.NODE, "51010A", "6-digit GB/T 2260 area code"),
        (Role.NODE, "010100", "6-digit GB/T 2260 area code"),
        (Role.NODE, "national", "6-digit GB/T 2260 area code"),
        (Role.BANK, BANK[:-1] + ("0" if BANK[-1] != "0" else "1"), "check character"),
        (Role.BANK, "9144030019220382", "USCC"),
        (Role.ENTERPRISE, "510100", "USCC"),
        (Role.REGISTRY, "National", "lower-case"),
        (Role.REGISTRY, "510100", "a node.s area code"),  # its log would share node 510100.s key name
    ],
)
def test_issue_refuses_an_id_that_does_not_fit_the_role(pki_dir, role, principal_id, reason):
    with pytest.raises(IdentityError, match=reason) as err:
        issue_identity(pki_dir, role, principal_id)
    assert str(role) in str(err.value)
    assert not (pki_dir / f"{role}-{principal_id}").exists()


def test_init_refuses_to_overwrite_an_existing_root(tmp_path):
    init_root(tmp_path)
    before = (tmp_path / "ca" / "ca.key").read_bytes(), (tmp_path / "ca" / "ca.crt").read_bytes()
    with pytest.raises(PKIError, match="refusing to overwrite"):
        init_root(tmp_path)
    after = (tmp_path / "ca" / "ca.key").read_bytes(), (tmp_path / "ca" / "ca.crt").read_bytes()
    assert after == before


def test_issue_without_the_root_key_is_refused(pki_dir):
    root = RootCA.load(pki_dir, with_key=False)
    with pytest.raises(PKIError, match="root CA key"):
        root.issue(Principal(Role.NODE, "510100"))


# --- TrustAnchor.verify_signing_cert ---------------------------------------------------------


@pytest.fixture(scope="module")
def root() -> RootCA:
    return RootCA.create()


def test_trust_anchor_accepts_a_root_issued_signing_cert(root):
    identity = root.issue(Principal(Role.BANK, BANK))
    principal, cert = TrustAnchor(root.cert).verify_signing_cert(identity.signing_cert_der)
    assert principal == Principal(Role.BANK, BANK)
    assert cert == identity.signing_cert


@pytest.mark.parametrize(
    ("impostor_root_name", "reason"),
    [
        # A look-alike root with the national root's very name: only the signature gives it away.
        ("Xinyi National Root CA", "signature does not verify against the national root"),
        ("Some Other Root CA", "not issued by the national root"),
    ],
    ids=["same-name", "other-name"],
)
def test_trust_anchor_rejects_another_roots_cert(root, impostor_root_name, reason):
    impostor = RootCA.create(name=impostor_root_name).issue(Principal(Role.BANK, BANK))
    with pytest.raises(PKIError, match=reason):
        TrustAnchor(root.cert).verify_signing_cert(impostor.signing_cert_der)


def test_trust_anchor_rejects_an_expired_cert_also_once_cached(root):
    anchor = TrustAnchor(root.cert)
    expired = expired_identity(root, Principal(Role.BANK, BANK))
    for _ in range(2):  # the second call takes the cached path; the validity check must still run
        with pytest.raises(PKIError, match="outside its validity"):
            anchor.verify_signing_cert(expired.signing_cert_der)
    # A valid certificate checked at a time outside its window is refused too.
    valid = root.issue(Principal(Role.BANK, BANK))
    anchor.verify_signing_cert(valid.signing_cert_der)
    later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=400)
    with pytest.raises(PKIError, match="outside its validity"):
        anchor.verify_signing_cert(valid.signing_cert_der, at=later)


def test_trust_anchor_rejects_a_tls_cert_used_as_signing_cert(root):
    identity = root.issue(Principal(Role.BANK, BANK))
    tls_der = identity.tls_cert.public_bytes(serialization.Encoding.DER)
    with pytest.raises(PKIError, match="Ed25519"):
        TrustAnchor(root.cert).verify_signing_cert(tls_der)


def test_trust_anchor_rejects_bytes_that_are_not_a_certificate(root):
    with pytest.raises(PKIError, match="not a DER X.509 certificate"):
        TrustAnchor(root.cert).verify_signing_cert(b"\x30\x03not a certificate")


# --- mutual TLS against real servers ---------------------------------------------------------


class _SqliteOnly:
    """The `new(name)` part of conftest.Databases, for a network shared by the module."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def new(self, name: str = "test") -> str:
        return f"sqlite:///{self.directory / (name + '.db')}"


@pytest.fixture(scope="module")
async def net(tmp_path_factory):
    """A registry and the Chengdu node (registered), started once for the handshake tests."""
    tmp = tmp_path_factory.mktemp("tls")
    network = Network(RootCA.create(), tmp, _SqliteOnly(tmp))
    await network.start_registry()
    await network.start_node("510100")
    yield network
    await network.stop()


async def health_check(channel: grpc.aio.Channel, service: str = "") -> int:
    """One Health.Check over `channel` (closed afterwards); returns the serving status."""
    try:
        response = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=5
        )
        return response.status
    finally:
        await channel.close()


def raw_channel(target: str, root_pem: bytes, client: Identity | None, server_name: str) -> grpc.aio.Channel:
    """A TLS channel built by hand: trusts `root_pem`, presents `client`'s certificate if any."""
    if client is None:
        credentials = grpc.ssl_channel_credentials(root_certificates=root_pem)
    else:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=root_pem, private_key=client.tls_key_pem, certificate_chain=client.tls_cert_pem
        )
    return grpc.aio.secure_channel(target, credentials, options=[("grpc.ssl_target_name_override", server_name)])


def bank(net: Network) -> Identity:
    return net.identity(Role.BANK, BANK)


async def assert_refused(channel: grpc.aio.Channel) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await health_check(channel)
    # A failed handshake surfaces as UNAVAILABLE ("failed to connect to all addresses").
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value.details()
    return err.value


@pytest.mark.parametrize(
    "expect", [Role.REGISTRY, Principal(Role.REGISTRY, "national")], ids=["by-role", "by-principal"]
)
async def test_client_with_a_valid_identity_is_served(net, expect):
    status = await health_check(secure_channel(bank(net), net.registry_addr, expect))
    assert status == health_pb2.HealthCheckResponse.SERVING


async def test_client_with_an_expired_certificate_is_refused(net):
    expired = expired_identity(net.root, Principal(Role.BANK, BANK))
    # The server refuses it (a client built by hand skips any check of ours) ...
    await assert_refused(raw_channel(net.registry_addr, expired.ca_pem, expired, tls_role_name(Role.REGISTRY)))
    # ... and our own client says why before connecting: the server only closes the socket.
    with pytest.raises(PKIError, match=r"bank/914403001922038216: tls.crt expired on .*xinyi pki renew"):
        secure_channel(expired, net.registry_addr, Role.REGISTRY)
    # The server is up: the same call with a valid certificate succeeds.
    assert await health_check(secure_channel(bank(net), net.registry_addr, Role.REGISTRY)) == health_pb2.HealthCheckResponse.SERVING


async def test_client_certificate_from_another_root_is_refused_by_the_server(net):
    impostor = RootCA.create().issue(Principal(Role.BANK, BANK))
    # The impostor trusts the national root, so only the server's check of its certificate stops it.
    await assert_refused(raw_channel(net.registry_addr, bank(net).ca_pem, impostor, tls_role_name(Role.REGISTRY)))
    assert await health_check(secure_channel(bank(net), net.registry_addr, Role.REGISTRY)) == health_pb2.HealthCheckResponse.SERVING


async def test_identity_from_another_root_cannot_talk_to_the_network(net):
    impostor = RootCA.create().issue(Principal(Role.BANK, BANK))
    await assert_refused(secure_channel(impostor, net.registry_addr, Role.REGISTRY))


async def test_client_without_a_certificate_is_refused(net):
    await assert_refused(raw_channel(net.registry_addr, bank(net).ca_pem, None, tls_role_name(Role.REGISTRY)))
    # Same channel settings plus the client certificate: served.
    ok = raw_channel(net.registry_addr, bank(net).ca_pem, bank(net), tls_role_name(Role.REGISTRY))
    assert await health_check(ok) == health_pb2.HealthCheckResponse.SERVING


async def test_client_expecting_another_server_refuses_the_registry(net):
    # The registry's certificate is genuine, but it is not node-510100.xinyi.
    await assert_refused(secure_channel(bank(net), net.registry_addr, Principal(Role.NODE, "510100")))
    await assert_refused(secure_channel(bank(net), net.registry_addr, Role.NODE))
    await assert_refused(secure_channel(bank(net), net.node_addr("510100"), Principal(Role.NODE, "510000")))
    await assert_refused(secure_channel(bank(net), net.node_addr("510100"), Role.REGISTRY))
    # And the node is reachable under its own name.
    status = await health_check(secure_channel(bank(net), net.node_addr("510100"), Principal(Role.NODE, "510100")))
    assert status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize(("server_kind", "reason", "says"), [
    ("expired", "TLS_PEER_CERT_EXPIRED", "the server's certificate has expired"),
    ("other-root", "TLS_PEER_CERT_UNTRUSTED", "not issued under the national root"),
])
async def test_client_refuses_a_server_with_a_bad_certificate_and_says_why(net, server_kind, reason, says):
    principal = Principal(Role.REGISTRY, "national")
    if server_kind == "expired":
        server_identity = expired_identity(net.root, principal)
    else:
        server_identity = RootCA.create().issue(principal)
    # Served by hand: our own start_server refuses an expired identity (tested below).
    server = grpc.aio.server()
    port = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials(
        [(server_identity.tls_key_pem, server_identity.tls_cert_pem)], root_certificates=server_identity.ca_pem,
        require_client_auth=True))
    await server.start()
    try:
        error = await assert_refused(secure_channel(bank(net), f"127.0.0.1:{port}", Role.REGISTRY))
        failure = RpcFailure.from_error(error)
        assert failure.reason == reason and says in failure.message
        assert "is the server running" not in failure.message
    finally:
        await server.stop(0)


async def test_a_server_with_an_expired_certificate_does_not_start():
    expired = expired_identity(RootCA.create(), Principal(Role.REGISTRY, "national"))
    with pytest.raises(ServerStartError, match=r"registry/national: tls.crt expired on"):
        await start_server(expired, "127.0.0.1:0", lambda s: None, [])


# --- health and reflection -------------------------------------------------------------------


@pytest.mark.parametrize("service", ["", "xinyi.v1.RegistryService", "xinyi.v1.ConsentService", "xinyi.v1.AuditService"])
async def test_registry_health_reports_serving(net, service):
    status = await health_check(secure_channel(bank(net), net.registry_addr, Role.REGISTRY), service)
    assert status == health_pb2.HealthCheckResponse.SERVING


async def test_node_health_reports_serving_and_unknown_services_are_not_found(net):
    node = net.node_addr("510100")
    status = await health_check(secure_channel(bank(net), node, Role.NODE), "xinyi.v1.NodeService")
    assert status == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await health_check(secure_channel(bank(net), node, Role.NODE), "xinyi.v1.RegistryService")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def _reflect(channel: grpc.aio.Channel, request: reflection_pb2.ServerReflectionRequest):
    try:
        call = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(iter([request]), timeout=5)
        async for response in call:
            return response
        raise AssertionError("the reflection service sent no response")
    finally:
        await channel.close()


async def list_services(channel: grpc.aio.Channel) -> set[str]:
    response = await _reflect(channel, reflection_pb2.ServerReflectionRequest(list_services=""))
    return {s.name for s in response.list_services_response.service}


async def test_registry_reflection_lists_its_services(net):
    names = await list_services(secure_channel(bank(net), net.registry_addr, Role.REGISTRY))
    assert {
        "xinyi.v1.RegistryService",
        "xinyi.v1.ConsentService",
        "xinyi.v1.AuditService",
        "grpc.health.v1.Health",
    } <= names
    assert "xinyi.v1.NodeService" not in names


async def test_node_reflection_lists_its_services(net):
    names = await list_services(secure_channel(bank(net), net.node_addr("510100"), Role.NODE))
    assert {"xinyi.v1.NodeService", "xinyi.v1.AuditService", "grpc.health.v1.Health"} <= names
    assert "xinyi.v1.RegistryService" not in names
    assert "xinyi.v1.ConsentService" not in names


async def test_reflection_serves_the_registry_schema(net):
    response = await _reflect(
        secure_channel(bank(net), net.registry_addr, Role.REGISTRY),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="xinyi.v1.RegistryService"),
    )
    files = [descriptor_pb2.FileDescriptorProto.FromString(b) for b in response.file_descriptor_response.file_descriptor_proto]
    registry = next(f for f in files if f.name == "xinyi/v1/registry.proto")
    methods = {m.name for s in registry.service for m in s.method}
    assert {"RegisterNode", "GetDirectory", "RouteQuery"} <= methods


async def test_reflection_needs_mutual_tls_too(net):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await list_services(raw_channel(net.registry_addr, bank(net).ca_pem, None, tls_role_name(Role.REGISTRY)))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
