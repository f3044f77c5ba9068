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

import asyncio
import contextlib
import logging
import socket
import ssl
import tempfile
from pathlib import Path
from typing import Awaitable, Callable, Sequence, TypeVar

import grpc
from cryptography import x509
from opentelemetry.instrumentation.grpc import aio_client_interceptors

from xinyi.crypto.identity import Principal, Role
from xinyi.crypto.pki import Identity, check_own_validity, tls_role_name, tls_server_name
from xinyi.rpc.status import explain_tls_failure

MAX_MESSAGE_BYTES = 4 * 1024 * 1024
# A peer that is down is tried again within this long (gRPC's default backoff grows to 120 s).
INITIAL_RECONNECT_BACKOFF_MS = 250
MAX_RECONNECT_BACKOFF_MS = 2000
# What a server may send and an auditor's channel receive: a page of audit entries holds at least
# one entry, and an entry written before entries were bounded may exceed MAX_MESSAGE_BYTES.
MAX_RESPONSE_BYTES = 64 * 1024 * 1024
# A replica that has not completed a connection within this long is passed over for the next:
# a call that never left cannot have been processed, so moving on is safe.
CONNECT_TIMEOUT_S = 2.0
# How many times every address is tried before a call fails, with the reconnect backoff above
# between rounds (0.25 + 0.5 + 1 s): bounded, and long enough to outlast a replica's restart by
# a supervisor or a connection refused while a load balancer moves.
FAILOVER_ROUNDS = 4

log = logging.getLogger("xinyi.rpc")
T = TypeVar("T")


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
    options = channel_options(expect, own_connection=own_connection, max_receive_bytes=max_receive_bytes,
                              tls_name=tls_name)
    return grpc.aio.secure_channel(
        target, channel_credentials(identity), options=options, interceptors=aio_client_interceptors()
    )


def channel_options(expect: Principal | Role, *, own_connection: bool = False,
                    max_receive_bytes: int = MAX_MESSAGE_BYTES, tls_name: str | None = None) -> list[tuple]:
    """secure_channel's gRPC options (also the benchmark's bare baseline's, bench/echo.py)."""
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
    return options


class FailoverChannel:
    """Channels to the addresses of one replicated service (the registry's replicas), used one
    at a time: a call goes to the replica that answered last, and moves to the next one only
    when the call cannot have been processed or its fate is unknown - the replica is not
    reachable (UNAVAILABLE, or no connection within CONNECT_TIMEOUT_S) - never on a refusal
    (PERMISSION_DENIED and the like) nor on a deadline that passed after the call was sent.

    A retried call sends the same request again, so a signed statement keeps its nonce: the
    registry accepts a nonce once network-wide, and tells a query it already received so
    (QUERY_ALREADY_RECEIVED) instead of answering it twice. One address may also be a DNS name
    (or `ipv4:A:P,B:P`) that gRPC's resolver expands to several addresses: its pick-first
    policy then tries them in turn at connect time, under the same bounded rounds.
    """

    def __init__(self, identity: Identity, targets: str | Sequence[str], expect: Principal | Role, *,
                 connect_timeout: float = CONNECT_TIMEOUT_S, rounds: int = FAILOVER_ROUNDS, **options) -> None:
        targets = [targets] if isinstance(targets, str) else list(dict.fromkeys(targets))
        if not targets:
            raise ValueError("at least one address is needed")
        self.identity, self.targets, self.expect, self.options = identity, targets, expect, options
        self.connect_timeout, self.rounds = connect_timeout, rounds
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._current = 0
        self.failovers = 0  # how many times a call moved to another address (for the caller and the benchmark)

    @property
    def target(self) -> str:
        """The address calls go to now: the one that answered last."""
        return self.targets[self._current]

    @property
    def channel(self) -> grpc.aio.Channel:
        """The current address's channel (for a call that is not retried: a stream)."""
        return self._channel(self.target)

    def _channel(self, target: str) -> grpc.aio.Channel:
        if target not in self._channels:
            self._channels[target] = secure_channel(self.identity, target, self.expect, **self.options)
        return self._channels[target]

    def stub(self, stub_class: type) -> "FailoverStub":
        """A stub whose unary calls fail over (each returns an awaitable, as a gRPC stub's do)."""
        return FailoverStub(self, stub_class)

    async def call(self, invoke: Callable[[grpc.aio.Channel], Awaitable[T]]) -> T:
        """`invoke(channel)`, on the current address and then on the others in turn, for at most
        `rounds` rounds with backoff. Raises the last grpc.aio.AioRpcError when none answered."""
        last: grpc.aio.AioRpcError | None = None
        refused_tls: set[str] = set()  # a certificate verdict: the same on every later try of that address
        delay = INITIAL_RECONNECT_BACKOFF_MS / 1000
        for round_ in range(self.rounds):
            start = self._current
            for step in range(len(self.targets)):
                i = (start + step) % len(self.targets)
                target = self.targets[i]
                if target in refused_tls:
                    continue
                channel = self._channel(target)
                try:
                    if not await self._connected(channel):
                        raise _unreachable(target, self.connect_timeout)
                    result = await invoke(channel)
                except grpc.aio.AioRpcError as e:
                    if e.code() != grpc.StatusCode.UNAVAILABLE:
                        raise  # processed (a refusal, an answer's deadline): never sent again
                    last = e
                    if explain_tls_failure(e) is not None:
                        refused_tls.add(target)
                    log.debug("%s at %s: %s; trying %s", self.expect, target, (e.details() or "")[:200],
                                "the next address" if len(self.targets) > 1 else "again")
                    continue
                if i != self._current:
                    self.failovers += 1
                    log.warning("%s: now using %s (%s was unreachable)", self.expect, target, self.target)
                self._current = i
                return result
            if len(refused_tls) == len(self.targets):
                break
            if round_ + 1 < self.rounds:
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_RECONNECT_BACKOFF_MS / 1000)
        assert last is not None
        raise last

    async def _connected(self, channel: grpc.aio.Channel) -> bool:
        """Whether the channel is connected, or has just failed to (a call then fails at once
        with the real cause, a refused certificate say): False only when it is still trying
        after CONNECT_TIMEOUT_S (a host that does not answer at all)."""
        state = channel.get_state(try_to_connect=True)
        try:
            async with asyncio.timeout(self.connect_timeout):
                while state in (grpc.ChannelConnectivity.IDLE, grpc.ChannelConnectivity.CONNECTING):
                    await channel.wait_for_state_change(state)
                    state = channel.get_state(try_to_connect=True)
        except TimeoutError:
            return False
        return True

    async def close(self, grace: float | None = None) -> None:
        channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            await channel.close(grace)


class FailoverStub:
    """A generated stub's methods over a FailoverChannel: `stub.Method(request, timeout=...)`
    is awaited as with a plain stub; unary calls fail over, streams go to the current address."""

    def __init__(self, failover: FailoverChannel, stub_class: type) -> None:
        self._failover, self._class = failover, stub_class
        self._stubs: dict[int, object] = {}

    def _on(self, channel: grpc.aio.Channel):
        stub = self._stubs.get(id(channel))
        if stub is None:
            stub = self._stubs[id(channel)] = self._class(channel)
        return stub

    def __getattr__(self, name: str):
        method = getattr(self._on(self._failover.channel), name)
        if not isinstance(method, grpc.aio.UnaryUnaryMultiCallable):
            return method

        def call(request, **kwargs):
            return self._failover.call(lambda channel: getattr(self._on(channel), name)(request, **kwargs))

        return call


def _unreachable(target: str, timeout: float) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(),
                                details=f"no connection to {target} within {timeout:g} s")


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
