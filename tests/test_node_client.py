"""The Node.js client (clients/node) against a real local network: the registry and two nodes on
loopback with real certificates, the Node.js client run as a bank would run it (a separate
`node` process with an identity bundle on disk). Its output for a query must be what
`xinyi query --json` prints for the same query, and its audit proof of the query's entry must
check out against the node's signed checkpoint.

Skipped only when `node` is not installed; node_modules is installed from the lock file
(`npm ci`) when missing.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from harness import BANK, CHENGDU_FIRM, start_network
from testdb import Databases

from xinyi.crypto.identity import Role
from xinyi.v1 import audit_pb2

CLIENT = Path(__file__).resolve().parent.parent / "clients" / "node"
NODE = shutil.which("node")
ASK = ["--purpose", "credit_assessment", "--categories", "registration,tax,judicial"]

pytestmark = pytest.mark.skipif(NODE is None, reason="`node` (Node.js 20 or later) is not on PATH: the tests of "
                                                     "the Node.js client (clients/node) need it")


def install_node_modules() -> None:
    """`npm ci`: exactly the lock file's packages, from the npm registry, no install scripts."""
    if (CLIENT / "node_modules" / ".package-lock.json").exists():
        return
    npm = shutil.which("npm")
    if npm is None:
        pytest.fail("node is installed but npm is not: install npm, or run `npm ci` in clients/node")
    subprocess.run([npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund"], cwd=CLIENT, check=True, timeout=600,
                   stdout=subprocess.DEVNULL)


async def run(*args: object, timeout: float = 60) -> tuple[int, str, str]:
    """A command as a separate process, started with asyncio so that the in-process servers serve
    meanwhile; (exit status, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(*map(str, args), stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    return proc.returncode, out.decode(), err.decode()


@pytest.fixture
async def net(tmp_path):
    """Registry, Chengdu (510100) and Sichuan (510000), both routing the Chengdu firm; SQLite
    stores (this is about the client: the stores have tests of their own on both back ends)."""
    await asyncio.to_thread(install_node_modules)
    network = await start_network(tmp_path, Databases("sqlite", tmp_path), nodes=("510100", "510000"))
    yield network
    await network.stop()


async def test_node_client_passes_the_conformance_vectors():
    """clients/node/test: conformance/*.json, each good vector accepted, each bad one refused."""
    await asyncio.to_thread(install_node_modules)
    code, out, err = await run(NODE, "--test", CLIENT / "test", timeout=120)
    assert code == 0, out + err
    assert "# fail 0" in out and "# pass 0" not in out, out


def bundles(net, tmp_path: Path) -> tuple[Path, Path]:
    ids = tmp_path / "ids"
    return net.identity(Role.BANK, BANK).save(ids), net.identity(Role.AUDITOR, "audit-office").save(ids)


def without_request_hash(text: str, request_hash: str) -> str:
    assert text.count(request_hash) == 1, text
    return text.replace(request_hash, "REQUEST_HASH")


async def test_node_client_prints_what_xinyi_query_prints_and_proves_the_audit_entry(net, tmp_path):
    bank, auditor = bundles(net, tmp_path)
    python_consent, node_consent = await net.grant(), await net.grant()  # once-consents: one query each
    common = ["--identity", bank, "--registry", net.registry_addr, "--uscc", CHENGDU_FIRM, *ASK, "--json"]

    code, python_out, err = await run(sys.executable, "-m", "xinyi.cli", "query", *common, "--consent", python_consent)
    assert code == 0, err
    code, node_out, err = await run(NODE, CLIENT / "query.js", *common, "--consent", node_consent)
    assert code == 0, err
    assert "Traceback" not in err and "unexpected failure" not in err, err

    expected, got = json.loads(python_out), json.loads(node_out)
    assert {n["node"] for n in got["nodes"]} == {"510100", "510000"}
    assert all(n["status"] == "ok" and n["verified"] for n in got["nodes"]), got
    # Two queries, two nonces: only the request hash must differ; every other byte is the same.
    assert got["request_hash"] != expected["request_hash"]
    assert without_request_hash(node_out, got["request_hash"]) == \
        without_request_hash(python_out, expected["request_hash"])

    for node_id in ("510100", "510000"):
        code, out, err = await run(NODE, CLIENT / "audit.js", "--identity", auditor, "--node", net.node_addr(node_id),
                                   "--node-id", node_id, "--request-hash", got["request_hash"], "--json")
        assert code == 0, err
        proof = json.loads(out)
        assert proof["included"] is True and proof["origin"] == f"xinyi/{node_id}"
        assert proof["request_hash"] == got["request_hash"]
        assert 0 <= proof["leaf_index"] < proof["tree_size"]
        # The Python auditor finds the Node client's query at that index, in a tree at least that big.
        python_auditor = net.auditor(net.node_addr(node_id), net.identity(Role.NODE, node_id).principal)
        (entry,) = await python_auditor.entries(proof["leaf_index"], proof["leaf_index"])
        record = audit_pb2.AuditRecord.FromString(entry.leaf_input)
        assert (record.action, record.request_hash) == ("query", got["request_hash"])
        assert int((await python_auditor.checkpoint()).checkpoint.split("\n")[1]) >= proof["tree_size"]

async def test_node_client_refusals_match_xinyi_query(net, tmp_path):
    """A query under a consent nobody gave: every node refuses it, both clients print the same
    refusals and fail with exit status 1; the audit check finds no entry of an unknown request."""
    bank, auditor = bundles(net, tmp_path)
    common = ["--identity", bank, "--registry", net.registry_addr, "--uscc", CHENGDU_FIRM, *ASK, "--consent", "0" * 32,
              "--json"]
    (py_code, python_out, _), (node_code, node_out, node_err) = await asyncio.gather(
        run(sys.executable, "-m", "xinyi.cli", "query", *common), run(NODE, CLIENT / "query.js", *common))
    assert (py_code, node_code) == (1, 1), node_err
    assert "no node answered" in node_err
    expected, got = json.loads(python_out), json.loads(node_out)
    assert all(n["status"] == "denied" and not n["verified"] and n["error"] for n in got["nodes"]), got
    assert without_request_hash(node_out, got["request_hash"]) == \
        without_request_hash(python_out, expected["request_hash"])

    code, out, err = await run(NODE, CLIENT / "audit.js", "--identity", auditor, "--node", net.node_addr("510100"),
                               "--node-id", "510100", "--request-hash", "ab" * 32)
    assert code == 1
    assert "holds no query entry with request hash" in err, err

    # A bank is not an auditor: the node refuses it the log, and the client says so.
    code, out, err = await run(NODE, CLIENT / "audit.js", "--identity", bank, "--node", net.node_addr("510100"),
                               "--node-id", "510100", "--request-hash", "ab" * 32, "--json")
    assert code == 1
    assert json.loads(out)["error"]["code"] == "PERMISSION_DENIED", out
