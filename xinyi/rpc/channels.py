"""Mutual-TLS channels between members of the network.

Servers are addressed by host:port, but authenticated by identity: the client checks that the
server's certificate, issued by the national root, carries the expected name (e.g.
"node-510100.xinyi" or "registry.xinyi"). So a registry that moves to another address is still
recognized, and an impostor with a certificate from another CA fails the handshake.

A client that cannot pin by identity (a load balancer's health probe, a tool that knows only
the host name) passes `tls_name`: the server's certificate must then carry that host name or IP
address, as the operator put it there with `pki issue --dns/--ip` - ordinary verification.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import tempfile
from pathlib import Path

import grpc
from cryptography import x509
from opentelemetry.instrumentation.grpc import aio_client_interceptors

from xinyi.crypto.identity import Principal, Role
from xinyi.crypto.pki import Identity, check_own_validity, tls_role_name, tls_server_name

MAX_MESSAGE_BYTES = 4 * 1024 * 1024
# A peer that is down is tried again within this long (gRPC's default backoff grows to 120 s).
INITIAL_RECONNECT_BACKOFF_MS = 250
MAX_RECONNECT_BACKOFF_MS = 2000
# What a server may send and an auditor's channel receive: a page of audit entries holds at least
# one entry, and an entry written before entries were bounded may exceed MAX_MESSAGE_BYTES.
MAX_RESPONSE_BYTES = 64 * 1024 * 1024


def server_credentials(identity: Identity) -> grpc.ServerCredentials:
    """Mutual TLS with the identity's current certificate: after a renewed bundle was adopted
    (Identity.adopt, on SIGHUP) new handshakes present the new one; open connections go on."""
    check_own_validity(identity)

    def configuration():
        return grpc.ssl_server_certificate_configuration([(identity.tls_key_pem, identity.tls_cert_pem)],
                                                         root_certificates=identity.ca_pem)

    served = [identity.generation]

    def fetch():  # asked by gRPC before a new handshake; None keeps the configuration
        if identity.generation == served[0]:
            return None
        served[0] = identity.generation
        return configuration()

    return grpc.dynamic_ssl_server_credentials(configuration(), fetch, require_client_authentication=True)


def channel_credentials(identity: Identity) -> grpc.ChannelCredentials:
    # A peer that refuses an expired certificate just closes the connection ("Socket closed");
    # saying so here, before connecting, is the only way a person learns why.
    check_own_validity(identity)
    return grpc.ssl_channel_credentials(
        root_certificates=identity.ca_pem,
        private_key=identity.tls_key_pem,
        certificate_chain=identity.tls_cert_pem,
    )


def secure_channel(identity: Identity, target: str, expect: Principal | Role, *,
                   own_connection: bool = False, max_receive_bytes: int = MAX_MESSAGE_BYTES,
                   tls_name: str | None = None) -> grpc.aio.Channel:
    """A channel to `target` that only completes the handshake with the expected server.

    `tls_name`: check the server's certificate for this host name (or IP address) instead of
    the `<role>-<id>.xinyi` name of `expect`; `host_name(target)` is ordinary verification.

    `own_connection`: never share a TCP connection with another channel to the same target, so
    that several channels reach several of a node's worker processes (SO_REUSEPORT spreads
    connections, not calls). `max_receive_bytes`: an auditor's channel takes MAX_RESPONSE_BYTES."""
    if tls_name is not None:
        name = tls_name
    else:
        name = tls_server_name(expect) if isinstance(expect, Principal) else tls_role_name(expect)
    options = [
        ("grpc.ssl_target_name_override", name),
        ("grpc.default_authority", name),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", max_receive_bytes),
        ("grpc.initial_reconnect_backoff_ms", INITIAL_RECONNECT_BACKOFF_MS),
        ("grpc.max_reconnect_backoff_ms", MAX_RECONNECT_BACKOFF_MS),
    ]
    if own_connection:
        options.append(("grpc.use_local_subchannel_pool", 1))
    return grpc.aio.secure_channel(
        target, channel_credentials(identity), options=options, interceptors=aio_client_interceptors()
    )


def host_name(target: str) -> str:
    """The host of HOST:PORT (an IPv6 address without its brackets): the name ordinary TLS
    verification checks."""
    host = target.rsplit(":", 1)[0] if ":" in target else target
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


@contextlib.contextmanager
def _tls_handshake(identity: Identity, bundle: Path, target: str, tls_name: str, timeout: float):
    """A plain TLS connection verified as a channel's would be (the national root, `tls_name`),
    presenting this identity's certificate, for what gRPC does not show: the peer's certificate,
    and whether the peer hangs up on this identity."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cadata=identity.ca_pem.decode())
    context.set_alpn_protocols(["h2"])
    # ssl reads a certificate chain only from a file: the public chain goes to a temporary file,
    # the private key is read where it is, in the bundle.
    with tempfile.NamedTemporaryFile(suffix=".crt") as chain:
        chain.write(identity.tls_cert_pem)
        chain.flush()
        context.load_cert_chain(chain.name, Path(bundle) / "tls.key")
    with socket.create_connection((host_name(target), int(target.rsplit(":", 1)[1])), timeout=timeout) as sock:
        with context.wrap_socket(sock, server_hostname=tls_name) as tls:
            yield tls


def peer_certificate(identity: Identity, bundle: Path, target: str, tls_name: str,
                     timeout: float = 5.0) -> x509.Certificate:
    """The certificate the server at `target` presents. Raises OSError (ssl.SSLError) when the
    handshake fails."""
    with _tls_handshake(identity, bundle, target, tls_name, timeout) as tls:
        return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))


_HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def hangs_up_on(identity: Identity, bundle: Path, target: str, tls_name: str, timeout: float = 5.0) -> bool:
    """True when the server completes the TLS handshake from this side and then closes the
    connection without a word: it refused this identity's certificate (gRPC servers send no
    alert under TLS 1.3; the client only sees "Socket closed"). A server that accepts it answers
    the HTTP/2 preface with its settings."""
    try:
        with _tls_handshake(identity, bundle, target, tls_name, timeout) as tls:
            tls.sendall(_HTTP2_PREFACE)
            return tls.recv(9) == b""
    except ssl.SSLError as e:
        return "alert" in str(e)  # a peer that does send an alert refused us as well
    except OSError:
        return False  # not reachable: not a verdict on the certificate
