"""Oversized fields in every RPC (item 2), on a network of their own: anyone with a certificate
sends a 3.9 MB SignedEnvelope.body_type, megabyte identifiers, certificates and signatures, and
repeated fields of tens of thousands of items.

Required: each is refused (INVALID_ARGUMENT or RESOURCE_EXHAUSTED; UNAUTHENTICATED for a
signature or certificate that does not verify) with a message of bounded length; nothing
unbounded reaches the audit log (every entry stays small); and afterwards every log still
verifies - `xinyi audit verify` reads it in pages that fit a message, however large the entries.
"""

from __future__ import annotations

import os

import pytest
from google.protobuf.descriptor import FieldDescriptor
from invariants import assert_clean, verify_logs
from rpcs import Caller, Surface, discover_signed_fields, envelope, natural_caller, with_envelope

pytestmark = [pytest.mark.adversarial, pytest.mark.timeout(240)]

NODE = "510100"
HUGE = 3_900_000             # the body_type of the report: 3.9 MB, just under the 4 MiB message limit
LARGE = 1024 * 1024
MANY = 60_000                # items in a repeated field (about 1.1 MB of 18-character strings)
MAX_ENTRY_BYTES = 64 * 1024  # what one audit entry may hold, whatever a caller sent
REFUSED_SIZE = {"INVALID_ARGUMENT", "RESOURCE_EXHAUSTED"}
REFUSED_SIGNED = REFUSED_SIZE | {"UNAUTHENTICATED"}


def oversized_requests(net, server, method, signed_fields):
    """(what, request bytes, acceptable codes) for one method."""
    cls = method.request_class()
    for path in method.envelope_paths():
        where = ".".join(path)
        # The statement type and a signer the server would accept there, so each part is judged on its own.
        body_type, signer = signed_fields.get((server, method.path, path)) or ("xinyi.v1.QueryBody", natural_caller(method))
        identity = net.identity(*signer)
        for name, env, codes in [
            ("body_type", envelope(identity, "x" * HUGE), REFUSED_SIZE),
            ("body", envelope(identity, body_type, body=os.urandom(LARGE)), REFUSED_SIZE),
            ("signature", envelope(identity, body_type, signature=os.urandom(LARGE)), REFUSED_SIGNED),
            ("signer_cert", envelope(identity, body_type, signer_cert=os.urandom(LARGE)), REFUSED_SIGNED),
        ]:
            yield f"{where}.{name} of {len(getattr(env, name))} bytes", with_envelope(method, path, env), codes
    for f in method.input.fields:
        if f.type not in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES):
            continue
        one = "x" * LARGE if f.type == FieldDescriptor.TYPE_STRING else os.urandom(LARGE)
        item = "9" * 18 if f.type == FieldDescriptor.TYPE_STRING else b"\x01" * 18
        request = cls()
        if f.is_repeated:
            getattr(request, f.name).append(one)
            yield f"{f.name}[0] of {LARGE} bytes", request.SerializeToString(), REFUSED_SIGNED | {"PERMISSION_DENIED"}
            request = cls()
            getattr(request, f.name).extend([item] * MANY)
            yield f"{f.name} with {MANY} items", request.SerializeToString(), REFUSED_SIGNED | {"PERMISSION_DENIED"}
        else:
            setattr(request, f.name, one)
            yield f"{f.name} of {LARGE} bytes", request.SerializeToString(), REFUSED_SIGNED | {"PERMISSION_DENIED"}


@pytest.fixture(scope="module")
async def surface(network_of_processes):
    caller = Caller(network_of_processes)
    surface = await Surface.of(caller, ("registry", NODE))
    yield surface
    await caller.close()


async def test_oversized_fields_to_every_rpc(surface: Surface, network_of_processes) -> None:
    net = network_of_processes
    signed_fields = await discover_signed_fields(surface, net)
    bad, sent = [], 0
    for server, method in surface.targets:
        for what, payload, codes in oversized_requests(net, server, method, signed_fields):
            sent += 1
            _, failure = await surface.caller.call(natural_caller(method), server, method, payload)
            where = f"{server} {method.short} {what}"
            if failure is None or failure.code not in codes:
                bad.append(f"{where}: {failure.code if failure else 'OK'} {failure.message[:120] if failure else ''!r}")
                continue
            if not failure.reason:
                # No google.rpc details: not the server's refusal but the transport failing, e.g. a
                # status message too large to send ("received metadata size exceeds hard limit").
                bad.append(f"{where}: {failure.code} {failure.message[:120]!r} (not a refusal by the server)")
                continue
            try:
                assert_clean(failure, where)
            except AssertionError as e:
                bad.append(str(e)[:300])
    print(f"\n[{net.backend}] {sent} oversized requests sent")
    assert not bad, f"{len(bad)} of {sent} oversized requests answered wrongly:\n" + "\n".join(bad[:25])


async def test_after_oversized_requests_every_log_verifies_and_holds_small_entries(network_of_processes) -> None:
    net = network_of_processes
    logs = await verify_logs(net)
    for name, records in logs.items():
        largest = max(records, key=lambda r: r.ByteSize())
        assert largest.ByteSize() <= MAX_ENTRY_BYTES, (
            f"{name}'s log holds an entry of {largest.ByteSize()} bytes (action {largest.action}, by "
            f"{largest.caller_role}/{largest.caller_id}): unsigned input reached the log unbounded")
