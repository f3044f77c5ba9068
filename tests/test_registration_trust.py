"""A node the registry will never accept stops and says why, instead of serving unregistered
forever; a registry that is merely down is waited for as before. Real processes."""

from __future__ import annotations

import asyncio
import dataclasses

from processes import Proc, free_port

from xinyi.crypto.identity import Principal, Role
from xinyi.crypto.pki import RootCA

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
