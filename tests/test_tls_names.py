"""Which name a client expects of a server: the `<role>-<id>.xinyi` name (pinning by identity, as
xinyi's own clients do) or, with `tls_name`, the host name or IP address the operator issued the
certificate with (`pki issue --dns/--ip`) - ordinary verification. And `xinyi health` says when
the server's certificate expires."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from processes import free_port
from test_cli import xinyi

from xinyi.crypto.identity import Principal, Role
from xinyi.crypto.pki import Identity, RootCA, init_root, issue_identity
from xinyi.rpc.channels import host_name, secure_channel
from xinyi.rpc.server import start_server
from xinyi.rpc.status import RpcFailure

NOW = dt.datetime.now(dt.timezone.utc)


async def _check(client: Identity, port: int, **options) -> int:
    channel = secure_channel(client, f"127.0.0.1:{port}", Role.REGISTRY, **options)
    try:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        return reply.status
    finally:
        await channel.close()


async def test_a_server_is_reached_by_the_host_name_its_certificate_was_issued_with(tmp_path):
    init_root(tmp_path)
    named = Identity.load(issue_identity(tmp_path, Role.REGISTRY, "national",
                                         dns_names=("registry.example.cn",), ip_addresses=("127.0.0.1",)))
    client = Identity.load(issue_identity(tmp_path, Role.AUDITOR, "audit-office"))
    server, port, _ = await start_server(named, "127.0.0.1:0", lambda s: None, [])
    try:
        serving = health_pb2.HealthCheckResponse.SERVING
        assert await _check(client, port) == serving  # pinned by identity: registry.xinyi
        # Ordinary verification: the address dialled, an IP address in the certificate ...
        assert await _check(client, port, tls_name=host_name(f"127.0.0.1:{port}")) == serving
        # ... or the DNS name the operator gave (dialled through another address here).
        assert await _check(client, port, tls_name="registry.example.cn") == serving
        # A name the certificate does not carry: refused at the handshake, and said so.
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await _check(client, port, tls_name="elsewhere.example.cn")
        assert RpcFailure.from_error(refused.value).reason == "TLS_PEER_WRONG_NAME"
    finally:
        await server.stop(None)


async def test_an_address_the_certificate_was_not_issued_for_fails_ordinary_verification(tmp_path):
    init_root(tmp_path)
    unnamed = Identity.load(issue_identity(tmp_path, Role.REGISTRY, "national", dns_names=("registry.example.cn",)))
    client = Identity.load(issue_identity(tmp_path, Role.AUDITOR, "audit-office"))
    server, port, _ = await start_server(unnamed, "127.0.0.1:0", lambda s: None, [])
    try:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await _check(client, port, tls_name="127.0.0.1")
        assert RpcFailure.from_error(refused.value).reason == "TLS_PEER_WRONG_NAME"
    finally:
        await server.stop(None)


def test_host_name_of_a_target():
    assert host_name("registry.example.cn:7000") == "registry.example.cn"
    assert host_name("[::1]:7000") == "::1"
    assert host_name("127.0.0.1:7000") == "127.0.0.1"


async def test_health_reports_the_server_certificates_expiry_and_warns_within_30_days(tmp_path):
    root = RootCA.create()
    auditor = root.issue(Principal(Role.AUDITOR, "audit-office")).save(tmp_path / "ids")
    soon = root.issue(Principal(Role.REGISTRY, "national"), not_before=NOW - dt.timedelta(days=300),
                      not_after=NOW + dt.timedelta(days=12, hours=1), dns_names=("registry.example.cn",))
    server, port, _ = await start_server(soon, "127.0.0.1:0", lambda s: None, [])
    try:
        target = f"127.0.0.1:{port}"
        code, out, err = await xinyi("health", "--identity", auditor, "--registry", target)
        first, last = out.strip().splitlines()
        assert code == 0 and last.endswith("SERVING"), err
        assert first.startswith("server certificate expires on ") and "(in 12 days)" in first and "WARNING" in first
        code, out, err = await xinyi("health", "--identity", auditor, "--registry", target, "--json")
        cert = json.loads(out)["certificate"]
        assert code == 0 and cert["days_left"] == 12 and cert["expiring"] is True
        assert cert["not_after"].startswith(soon.tls_cert.not_valid_after_utc.date().isoformat())
        # By the host name instead of the role: the same answer; a name it lacks: refused, exit 1.
        code, out, err = await xinyi("health", "--identity", auditor, "--registry", target,
                                     "--tls-name", "registry.example.cn")
        assert code == 0 and out.strip().endswith("SERVING"), err
        code, out, err = await xinyi("health", "--identity", auditor, "--registry", target, "--tls-name", "other.cn")
        assert code == 1 and "does not name the server" in err
    finally:
        await server.stop(None)


async def test_health_does_not_warn_for_a_certificate_with_time_left(tmp_path):
    root = RootCA.create()
    auditor = root.issue(Principal(Role.AUDITOR, "audit-office")).save(tmp_path / "ids")
    server, port, _ = await start_server(root.issue(Principal(Role.NODE, "510100")), "127.0.0.1:0", lambda s: None, [])
    try:
        code, out, err = await xinyi("health", "--identity", auditor, "--node", f"127.0.0.1:{port}")
        assert code == 0 and "server certificate expires on" in out and "WARNING" not in out, err
    finally:
        await server.stop(None)


def test_a_certificate_with_a_malformed_name_is_refused_not_a_crash(tmp_path):
    """A signer certificate whose subjectAltName bytes were altered (as a fuzzer flips them) is a
    PKIError, which every verifier turns into UNAUTHENTICATED, not an internal error."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from xinyi.crypto.pki import PKIError, principal_of

    der = RootCA.create().issue(Principal(Role.AUDITOR, "audit-office")).signing_cert.public_bytes(
        serialization.Encoding.DER)
    at = der.index(b"xinyi://")
    bad = x509.load_der_x509_certificate(der[:at] + b"\xb9" + der[at + 1:])
    with pytest.raises(PKIError, match="extensions do not parse"):
        principal_of(bad)


async def test_a_command_whose_identity_the_server_does_not_trust_is_told_so_not_asked_if_the_server_runs(tmp_path):
    """A bundle whose certificate comes from another root but which trusts the network's root:
    the handshake completes on the client's side and the server closes the connection (gRPC says
    only "Socket closed"). The command names the identity the server refused."""
    root = RootCA.create()
    server, port, _ = await start_server(root.issue(Principal(Role.REGISTRY, "national")), "127.0.0.1:0",
                                         lambda s: None, [])
    forged = dataclasses.replace(RootCA.create().issue(Principal(Role.AUDITOR, "audit-office")), ca_cert=root.cert)
    bundle = forged.save(tmp_path / "forged")
    genuine = root.issue(Principal(Role.AUDITOR, "audit-office")).save(tmp_path / "genuine")
    try:
        code, out, err = await xinyi("health", "--identity", bundle, "--registry", f"127.0.0.1:{port}", "--timeout", "5")
        line = err.strip().splitlines()[-1]
        assert code == 1 and "is the server running" not in line, err
        assert f"the server at 127.0.0.1:{port} closes every connection right after the handshake" in line, err
        assert f"does not trust the certificate of --identity {bundle}" in line
        code, out, _ = await xinyi("health", "--identity", bundle, "--registry", f"127.0.0.1:{port}", "--json")
        assert code == 1 and json.loads(out)["error"]["reason"] == "TLS_HANDSHAKE_FAILED"
        # The same server answers an identity it trusts.
        assert (await xinyi("health", "--identity", genuine, "--registry", f"127.0.0.1:{port}"))[0] == 0
    finally:
        await server.stop(None)
    # A server that is not there is still asked after, not blamed on the certificate.
    code, _, err = await xinyi("health", "--identity", bundle, "--registry", f"127.0.0.1:{free_port()}", "--timeout", "3")
    assert code == 1 and "does not trust" not in err and "is the server running" in err, err
