"""A node the registry will never accept stops and says why, instead of serving unregistered
forever; a registry that is merely down is waited for as before. Real processes."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging

import pytest
from harness import BANK, CHENGDU_FIRM, Network
from processes import Proc, free_port
from test_cli import xinyi
from test_membership import last_registry_entry, registry_stub
from test_refusals import Stored, refused

from xinyi.clock import MINUTE_MS, now_ms
from xinyi.crypto.identity import Principal, Role
from xinyi.crypto.pki import RootCA
from xinyi.registration import build_registration
from xinyi.v1 import audit_pb2, registry_pb2

EXIT_TIMEOUT = 90.0


def _registry(tmp_path, root: RootCA) -> tuple[Proc, str]:
    addr = f"127.0.0.1:{free_port()}"
    ids = root.issue(Principal(Role.REGISTRY, "national")).save(tmp_path / "ids")
    proc = Proc("registry", ["registry", "serve", "--identity", str(ids), "--listen", addr,
                             "--db", f"sqlite:///{tmp_path / 'registry.db'}"], tmp_path)
    return proc, addr


def _node(tmp_path, bundle, registry: str, name: str = "node") -> Proc:
    return Proc(name, ["node", "serve", "--identity", str(bundle), "--listen", "127.0.0.1:0", "--registry", registry,
                       "--db", f"sqlite:///{tmp_path / (name + '.db')}"], tmp_path)


async def _exit_status(proc: Proc) -> int:
    return await asyncio.wait_for(asyncio.to_thread(proc.proc.wait), EXIT_TIMEOUT)


@pytest.mark.slow
async def test_a_node_of_another_root_stops_after_five_refusals_and_says_why(tmp_path):
    registry, addr = _registry(tmp_path, RootCA.create())
    registry.start()
    # A node of another network: it refuses the registry's certificate (not under its root).
    stranger = _node(tmp_path, RootCA.create().issue(Principal(Role.NODE, "510100")).save(tmp_path / "other"), addr)
    try:
        await registry.wait_for_log("serving on port", timeout=20)
        stranger.start()
        assert await _exit_status(stranger) == 1
        [line] = [x for x in stranger.log().splitlines() if "ERROR" in x and "cannot register" in x]
        assert "ERROR" in line and "refused 5 times in a row" in line and "national root" in line, stranger.log()
        assert "xinyi: node 510100 cannot register" in stranger.log()  # the command's own last word, on stderr
    finally:
        stranger.kill()
        registry.kill()


@pytest.mark.slow
async def test_a_node_the_registry_hangs_up_on_stops_and_says_why(tmp_path):
    """Its certificate is from another root but it trusts the registry's: the registry closes
    every connection after the handshake (gRPC says only "Socket closed")."""
    root = RootCA.create()
    registry, addr = _registry(tmp_path, root)
    registry.start()
    forged = RootCA.create().issue(Principal(Role.NODE, "510100"))
    bundle = dataclasses.replace(forged, ca_cert=root.cert).save(tmp_path / "forged")
    node = _node(tmp_path, bundle, addr)
    try:
        await registry.wait_for_log("serving on port", timeout=20)
        node.start()
        assert await _exit_status(node) == 1
        [line] = [x for x in node.log().splitlines() if "ERROR" in x and "cannot register" in x]
        assert "does not trust this node's certificate" in line, node.log()
    finally:
        node.kill()
        registry.kill()


@pytest.mark.slow
async def test_a_node_keeps_waiting_for_a_registry_that_is_down(tmp_path):
    root = RootCA.create()
    root.save(tmp_path / "ids")
    bundle = root.issue(Principal(Role.NODE, "510100")).save(tmp_path / "ids")
    node = _node(tmp_path, bundle, f"127.0.0.1:{free_port()}")  # nobody listens there
    node.start()
    try:
        await node.wait_for_log("registering with", count=7, timeout=EXIT_TIMEOUT)
        node.check_alive()
        assert "cannot register" not in node.log()
    finally:
        node.kill()


# --- signed registrations (in-process network, real servers) -------------------------------------


@pytest.fixture
def stored(network: Network) -> Stored:
    return Stored(network)


def _register(network: Network, node_id: str, endpoint: str, held=(), *, at: int | None = None,
              registration=None) -> object:
    identity = network.identity(Role.NODE, node_id)
    registration = registration or build_registration(identity, endpoint, list(held), at or now_ms())
    return registry_stub(network, Role.NODE, node_id).RegisterNode(
        registry_pb2.RegisterNodeRequest(held_usccs=list(held), registration=registration))


@pytest.mark.parametrize("case, reason, field", [
    ("stale", "STALE_TIMESTAMP", "registration.issued_at_ms"),
    ("ahead", "STALE_TIMESTAMP", "registration.issued_at_ms"),
    ("holdings-altered", "HOLDINGS_NOT_SIGNED", "held_usccs"),
    ("body-altered", "BAD_SIGNATURE", "registration.signature"),
])
async def test_a_registration_that_is_not_fresh_or_not_as_signed_is_refused(network: Network, stored: Stored,
                                                                             case, reason, field):
    chengdu = network.node_addr("510100")
    identity = network.identity(Role.NODE, "510100")
    at = {"stale": now_ms() - 6 * MINUTE_MS, "ahead": now_ms() + 6 * MINUTE_MS}.get(case, now_ms())
    registration = build_registration(identity, "127.0.0.1:7999", [], at)
    held = []
    if case == "holdings-altered":
        held = [CHENGDU_FIRM]  # the node signed an empty list
    if case == "body-altered":  # moved to another address after signing
        body = registry_pb2.RegistrationBody.FromString(registration.body)
        body.endpoint = "127.0.0.1:7998"
        registration.body = body.SerializeToString(deterministic=True)
    before = await stored.snapshot()
    f = await refused(registry_stub(network, Role.NODE, "510100").RegisterNode(
        registry_pb2.RegisterNodeRequest(held_usccs=held, registration=registration)))
    assert (f.reason, f.fields[0][0]) == (reason, field), f
    await stored.assert_only_audit(before, "registry", reason)
    assert (await network.bank().directory(refresh=True)).nodes["510100"].endpoint == chengdu


async def test_a_recorded_registration_cannot_be_replayed_to_move_the_node_back(network: Network, stored: Stored):
    chengdu = network.node_addr("510100")
    recorded = build_registration(network.identity(Role.NODE, "510100"), chengdu, [], now_ms())
    await _register(network, "510100", chengdu, registration=recorded)
    before = await stored.snapshot()
    f = await refused(_register(network, "510100", chengdu, registration=recorded))
    assert (f.code, f.reason, f.fields[0][0]) == ("INVALID_ARGUMENT", "REPLAYED_NONCE", "registration.nonce")
    await stored.assert_only_audit(before, "registry", "REPLAYED_NONCE")


async def test_a_second_process_with_a_nodes_certificate_is_detected_logged_and_reported(network: Network, tmp_path,
                                                                                        caplog):
    """Another process holding node 510100's keys registers another address; the real node
    re-registers (every 30 s): the address flips back. Both are told, the registry logs and
    audits it, and the operator's list shows it."""
    caplog.set_level(logging.INFO)
    node = network.nodes["510100"]
    chengdu = network.node_addr("510100")
    # The impostor: the move is recorded and reported to it (the node's key signed it).
    moved = await _register(network, "510100", "127.0.0.1:7999")
    assert (moved.previous_endpoint, moved.conflict) == (chengdu, "") and moved.endpoint_changed_at_ms > 0
    entry = await last_registry_entry(network)
    assert entry.action == "register_node" and entry.decision == audit_pb2.DECISION_ALLOW
    assert f"endpoint changed from {chengdu} to 127.0.0.1:7999" in entry.detail
    # The real node re-registers: the endpoint flips back within minutes: a conflict, in its reply ...
    await node.register_once()
    conflict = [r.getMessage() for r in caplog.records
                if r.name == "xinyi.node" and "reports a conflict for node 510100" in r.getMessage()]
    assert conflict and "127.0.0.1:7999" in conflict[0] and chengdu in conflict[0]
    # ... in the registry's log and audit log ...
    assert any(r.name == "xinyi.registry" and r.levelno == logging.WARNING and "CONFLICT" in r.getMessage()
               for r in caplog.records)
    entry = await last_registry_entry(network)
    assert f"endpoint changed from 127.0.0.1:7999 to {chengdu}" in entry.detail and "CONFLICT" in entry.detail
    # ... and in the impostor's next reply ...
    again = await _register(network, "510100", "127.0.0.1:7999")
    assert "127.0.0.1:7999" in again.conflict and chengdu in again.conflict
    # ... and in the platform operator's list.
    await node.register_once()
    operator = ["--identity", network.identity(Role.REGISTRY, "national").save(tmp_path / "ids"),
                "--registry", network.registry_addr]
    code, out, err = await xinyi("registry", "nodes", *operator, "--json")
    assert code == 0, err
    rows = {r["node"]: r for r in json.loads(out)}
    assert rows["510100"]["endpoint"] == chengdu and rows["510100"]["previous_endpoint"] == "127.0.0.1:7999"
    assert "two processes hold this node's certificate" in rows["510100"]["conflict"]
    assert rows["510000"]["conflict"] == "" and rows["510000"]["endpoint_changed"] == ""
    assert len(rows["510100"]["signing_key_sha256"]) == 64
    code, out, err = await xinyi("registry", "nodes", *operator)
    assert code == 0 and "CONFLICT:" in out and "moved from 127.0.0.1:7999" in out, err


async def test_a_node_that_moves_once_is_recorded_not_flagged(network: Network):
    chengdu = network.node_addr("510100")
    moved = await _register(network, "510100", "127.0.0.1:7999")
    assert moved.previous_endpoint == chengdu and moved.conflict == ""
    still = await _register(network, "510100", "127.0.0.1:7999")  # re-registering where it now is
    assert still.previous_endpoint == chengdu and still.conflict == ""
    [listed] = [n for n in await network.operator().nodes() if n.node_id == "510100"]
    assert listed.endpoint == "127.0.0.1:7999" and listed.conflict == ""


async def test_only_the_platform_operator_lists_nodes(network: Network):
    from xinyi.client import ClientError, OperatorHoldings

    for role, principal_id in ((Role.NODE, "510100"), (Role.BANK, BANK)):
        async with OperatorHoldings(network.identity(role, principal_id), network.registry_addr) as client:
            with pytest.raises(ClientError) as info:
                await client.nodes()
        assert info.value.failure.code == "PERMISSION_DENIED"


@pytest.mark.slow
async def test_a_node_with_workers_the_registry_will_not_accept_stops_every_process(tmp_path):
    registry, addr = _registry(tmp_path, RootCA.create())
    registry.start()
    bundle = RootCA.create().issue(Principal(Role.NODE, "510100")).save(tmp_path / "other")
    stranger = Proc("node", ["node", "serve", "--identity", str(bundle), "--listen", f"127.0.0.1:{free_port()}",
                             "--registry", addr, "--db", f"sqlite:///{tmp_path / 'node.db'}", "--workers", "2"], tmp_path)
    try:
        await registry.wait_for_log("serving on port", timeout=20)
        stranger.start()
        assert await _exit_status(stranger) == 1
        assert "xinyi: node 510100 cannot register" in stranger.log()
    finally:
        stranger.kill()
        registry.kill()
