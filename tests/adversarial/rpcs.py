"""Every RPC of the network, found in the generated descriptors (xinyi/v1/*_pb2.py) and in what
each server says it serves (gRPC server reflection), so that an RPC added later is attacked too.

Calls go through a generic `channel.unary_unary` with identity serializers: the attacker sends
bytes, well-formed or not, and reads the status.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
from dataclasses import dataclass
from functools import cached_property

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from harness import BANK, CHENGDU_FIRM, GUARANTOR, OTHER_BANK, SHANGHAI_FIRM

import xinyi.v1
from xinyi.crypto.identity import Principal, Role
from xinyi.records import uscc as uscc_codes
from xinyi.rpc.channels import secure_channel
from xinyi.rpc.status import RpcFailure
from xinyi.v1 import envelope_pb2

GOVERNMENT = uscc_codes.with_check_character("11100000000013127")  # a government department
ENVELOPE = envelope_pb2.SignedEnvelope.DESCRIPTOR.full_name
CALL_TIMEOUT = 30.0


def _modules():
    return [importlib.import_module(f"xinyi.v1.{m.name}") for m in pkgutil.iter_modules(xinyi.v1.__path__)
            if m.name.endswith("_pb2")]


@dataclass(frozen=True)
class Method:
    service: str   # full name, e.g. xinyi.v1.RegistryService
    name: str
    input: Descriptor

    @property
    def path(self) -> str:
        return f"/{self.service}/{self.name}"

    @property
    def short(self) -> str:
        return f"{self.service.rsplit('.', 1)[1]}/{self.name}"

    def request_class(self):
        return message_factory.GetMessageClass(self.input)

    def envelope_paths(self) -> list[tuple[str, ...]]:
        """Paths (field names) to every SignedEnvelope in the request, nested ones too."""
        return list(_envelope_paths(self.input, (), 0))


def _envelope_paths(desc: Descriptor, prefix: tuple[str, ...], depth: int):
    for f in desc.fields:
        if f.type != FieldDescriptor.TYPE_MESSAGE:
            continue
        if f.message_type.full_name == ENVELOPE:
            yield prefix + (f.name,)
        elif depth < 3:
            yield from _envelope_paths(f.message_type, prefix + (f.name,), depth + 1)


def all_methods() -> list[Method]:
    """Every method of every xinyi.v1 service."""
    out = []
    for module in _modules():
        for service in module.DESCRIPTOR.services_by_name.values():
            out.extend(Method(service.full_name, m.name, m.input_type) for m in service.methods)
    return sorted(out, key=lambda m: m.path)


def body_types() -> list[str]:
    """Every signed statement type (xinyi.v1.*Body)."""
    return sorted(d.full_name for m in _modules() for d in m.DESCRIPTOR.message_types_by_name.values()
                  if d.name.endswith("Body"))


def field_at(message, path: tuple[str, ...]):
    """The (sub)message at `path`, created on the way; a repeated field gets one element."""
    for name in path:
        f = message.DESCRIPTOR.fields_by_name[name]
        if f.is_repeated:
            container = getattr(message, name)
            message = container[0] if len(container) else container.add()
        else:
            message = getattr(message, name)
    return message


def with_envelope(method: Method, path: tuple[str, ...], envelope: envelope_pb2.SignedEnvelope) -> bytes:
    request = method.request_class()()
    field_at(request, path).CopyFrom(envelope)
    return request.SerializeToString()


# Who would call each RPC in a working network: a hostile caller of that kind gets past the
# "who may call" check, so the bad field itself is what the server must handle. An RPC added
# later falls back to its service's caller, then to a bank.
NATURAL = {
    "RegistryService/RegisterNode": (Role.NODE, "510100"),
    "RegistryService/SyncConsents": (Role.NODE, "510100"),
    "RegistryService": (Role.BANK, BANK),
    "WitnessService": (Role.NODE, "510100"),
    "ConsentService": (Role.ENTERPRISE, CHENGDU_FIRM),
    "AccessService": (Role.ENTERPRISE, CHENGDU_FIRM),
    "DisputeService": (Role.ENTERPRISE, CHENGDU_FIRM),
    "ModelService/ApproveModel": (Role.REGISTRY, "national"),
    "ModelService": (Role.BANK, BANK),
    "StatisticsService": (Role.GOVERNMENT, GOVERNMENT),
    "AlertService": (Role.BANK, BANK),
    "AuditService": (Role.AUDITOR, "audit-office"),
    "NodeService/Query": (Role.BANK, BANK),
    "NodeService/ListDisputes": (Role.NODE, "510100"),
    "NodeService/ResolveDispute": (Role.NODE, "510100"),
    "NodeService/GetNodeReport": (Role.NODE, "510100"),
    "NodeService": (Role.REGISTRY, "national"),
    "NodeEvaluationService": (Role.REGISTRY, "national"),
    "NodeStatisticsService": (Role.REGISTRY, "national"),
    "NodeAlertService": (Role.REGISTRY, "national"),
}

# Every kind of party with a certificate from the national root.
PARTIES = [
    (Role.REGISTRY, "national"),
    (Role.NODE, "510100"),
    (Role.NODE, "310000"),             # another node (not running)
    (Role.BANK, BANK),
    (Role.BANK, OTHER_BANK),
    (Role.GUARANTOR, GUARANTOR),
    (Role.GOVERNMENT, GOVERNMENT),
    (Role.ENTERPRISE, CHENGDU_FIRM),
    (Role.ENTERPRISE, SHANGHAI_FIRM),
    (Role.REPRESENTATIVE, "zhang-san"),
    (Role.AUDITOR, "audit-office"),
]


def natural_caller(method: Method) -> tuple[Role, str]:
    service = method.service.rsplit(".", 1)[1]
    return NATURAL.get(method.short) or NATURAL.get(service) or (Role.BANK, BANK)


class Caller:
    """Raw calls as any party, to the registry or a node; channels kept per (party, server)."""

    def __init__(self, net) -> None:
        self.net = net
        self._channels: dict[tuple, grpc.aio.Channel] = {}

    def target(self, server: str) -> tuple[str, Principal | Role]:
        if server == "registry":
            return self.net.registry_addr, Role.REGISTRY
        return self.net.node_addrs[server], Principal(Role.NODE, server)

    def channel(self, party: tuple[Role, str], server: str) -> grpc.aio.Channel:
        key = (party, server)
        if key not in self._channels:
            addr, expect = self.target(server)
            self._channels[key] = secure_channel(self.net.identity(*party), addr, expect)
        return self._channels[key]

    async def call(self, party: tuple[Role, str], server: str, method: Method | str, payload: bytes):
        """(response bytes, None) or (None, RpcFailure)."""
        path = method.path if isinstance(method, Method) else method
        rpc = self.channel(party, server).unary_unary(path, request_serializer=None, response_deserializer=None)
        try:
            return await rpc(payload, timeout=CALL_TIMEOUT), None
        except grpc.aio.AioRpcError as e:
            return None, RpcFailure.from_error(e)

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()

    async def served(self, server: str) -> set[str]:
        """The xinyi.v1 services a server says it serves (server reflection)."""
        stub = reflection_pb2_grpc.ServerReflectionStub(self.channel((Role.AUDITOR, "audit-office"), server))
        call = stub.ServerReflectionInfo()
        await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
        response = await call.read()
        await call.done_writing()
        return {s.name for s in response.list_services_response.service if s.name.startswith("xinyi.v1.")}


class Surface:
    """The methods each server of a network serves."""

    def __init__(self, caller: Caller, served: dict[str, set[str]]) -> None:
        self.caller = caller
        self.served = served

    @classmethod
    async def of(cls, caller: Caller, servers) -> "Surface":
        return cls(caller, {s: await caller.served(s) for s in servers})

    @cached_property
    def targets(self) -> list[tuple[str, Method]]:
        """(server, method) for every method a server serves."""
        return [(server, m) for server, services in self.served.items() for m in all_methods() if m.service in services]

    def unserved(self) -> list[str]:
        """Services in the descriptors that no server of the network serves."""
        served = set().union(*self.served.values())
        return sorted({m.service for m in all_methods()} - served)


def envelope(identity, body_type: str, body: bytes = b"\x0a\x01x", signature: bytes | None = None,
             signer_cert: bytes | None = None) -> envelope_pb2.SignedEnvelope:
    """A statement as `identity` would send it, with a random signature unless one is given."""
    return envelope_pb2.SignedEnvelope(body_type=body_type, body=body,
                                       signature=os.urandom(64) if signature is None else signature,
                                       signer_cert=identity.signing_cert_der if signer_cert is None else signer_cert)


def reached_signature(failure) -> bool:
    """The server got as far as checking the signature itself (and refused it)."""
    return failure is not None and failure.code == "UNAUTHENTICATED" and (
        failure.reason == "BAD_SIGNATURE" or any(f.endswith("signature") for f, _ in failure.fields))


async def discover_signed_fields(surface: Surface, net) -> dict:
    """For every SignedEnvelope in every served request: the statement type the server expects
    there and a party whose signature it would check, found by asking with a bad signature.
    (server, method path, field path) -> (body_type, party), or None when no signature check
    was reached (the request needs more than one statement to get that far)."""
    found = {}
    for server, method in surface.targets:
        party = natural_caller(method)
        for path in method.envelope_paths():
            hit = None
            for body_type in body_types():
                for signer in [party, *(p for p in PARTIES if p != party)]:
                    payload = with_envelope(method, path, envelope(net.identity(*signer), body_type))
                    _, failure = await surface.caller.call(party, server, method, payload)
                    if reached_signature(failure):
                        hit = (body_type, signer)
                        break
                    if failure is None or not (failure.code == "UNAUTHENTICATED" and failure.reason == "WRONG_SIGNER_ROLE"):
                        break  # not this statement type (or refused before any signer matters): next type
                if hit:
                    break
            found[(server, method.path, path)] = hit
    return found
