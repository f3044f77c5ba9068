"""The auditor's and the enterprise's audit commands as a person runs them (real processes)."""

from __future__ import annotations

import base64
import json
import re

from harness import CHENGDU_FIRM, Network
from sqlalchemy import select, update
from test_cli import one_line, xinyi

from xinyi.audit import merkle
from xinyi.crypto.identity import Role
from xinyi.v1 import audit_pb2


async def _traffic(net: Network) -> None:
    consent = await net.grant()
    for _ in range(2):
        await net.bank().query(CHENGDU_FIRM, ["registration", "tax"], "credit_assessment", consent)


def _bundles(net: Network, tmp_path) -> tuple[str, str]:
    auditor = net.identity(Role.AUDITOR, "audit-office").save(tmp_path / "ids")
    enterprise = net.identity(Role.ENTERPRISE, CHENGDU_FIRM).save(tmp_path / "ids")
    return str(auditor), str(enterprise)


async def test_rfc6962_shapes_for_checkpoint_entries_and_proofs(network: Network, tmp_path):
    await _traffic(network)
    auditor, _ = _bundles(network, tmp_path)
    node = ["--identity", auditor, "--node", network.node_addr("510100"), "--json"]

    code, out, _ = await xinyi("audit", "checkpoint", *node)
    sth = json.loads(out)
    assert code == 0 and set(sth) >= {"tree_size", "timestamp", "sha256_root_hash", "tree_head_signature", "checkpoint"}
    size, root = sth["tree_size"], base64.b64decode(sth["sha256_root_hash"])
    assert sth["checkpoint"].startswith(f"xinyi/510100\n{size}\n{sth['sha256_root_hash']}\n\n— xinyi/510100 ")

    code, out, _ = await xinyi("audit", "entries", *node, "--start", 0, "--end", size - 1)
    leaves = [base64.b64decode(e["leaf_input"]) for e in json.loads(out)["entries"]]
    assert code == 0 and len(leaves) == size and merkle.root_of([merkle.leaf_hash(l) for l in leaves]) == root

    leaf = merkle.leaf_hash(leaves[1])
    code, out, _ = await xinyi("audit", "proof", *node, "--hash", base64.b64encode(leaf).decode(), "--size", size)
    proof = json.loads(out)
    assert code == 0 and proof["leaf_index"] == 1
    assert merkle.verify_inclusion(leaf, 1, size, [base64.b64decode(h) for h in proof["audit_path"]], root)

    code, out, _ = await xinyi("audit", "consistency", *node, "--first", 2, "--second", size)
    path = [base64.b64decode(h) for h in json.loads(out)["consistency"]]
    first_root = merkle.root_of([merkle.leaf_hash(l) for l in leaves[:2]])
    assert code == 0 and merkle.verify_consistency(2, size, first_root, root, path)

    code, _, err = await xinyi("audit", "proof", *node, "--index", 0, "--size", size + 1000)
    assert code == 1 and "OUT_OF_RANGE" in one_line(err)


async def test_verify_passes_then_names_the_edited_entry(network: Network, tmp_path):
    await _traffic(network)
    auditor, _ = _bundles(network, tmp_path)
    state = ["--state", str(tmp_path / "state.json")]
    code, out, err = await xinyi("audit", "verify", "--identity", auditor, "--node", network.node_addr("510100"), *state)
    assert code == 0, err
    assert out.startswith("xinyi/510100: OK")
    code, out, _ = await xinyi("audit", "verify", "--identity", auditor, "--registry", network.registry_addr, "--json",
                               "--state", str(tmp_path / "registry.json"))
    assert code == 0 and json.loads(out)["ok"] is True and json.loads(out)["origin"] == "xinyi/national"

    store = network.nodes["510100"].store
    with store.engine.begin() as conn:
        raw = conn.execute(select(store.audit.c.leaf_input).where(store.audit.c.idx == 1)).scalar_one()
        record = audit_pb2.AuditRecord.FromString(raw)
        record.purpose = "loan_monitoring"
        conn.execute(update(store.audit).where(store.audit.c.idx == 1).values(leaf_input=record.SerializeToString()))
    code, _, err = await xinyi("audit", "verify", "--identity", auditor, "--node", network.node_addr("510100"), *state)
    assert code == 1 and "first bad index 1" in one_line(err)


async def test_reconcile_and_the_enterprises_access_list(network: Network, tmp_path):
    await _traffic(network)
    auditor, enterprise = _bundles(network, tmp_path)
    code, out, err = await xinyi("audit", "reconcile", "--identity", auditor, "--registry", network.registry_addr, "--json")
    report = json.loads(out)
    assert code == 0, err
    assert report["routings_checked"] == 4 and report["missing_on_nodes"] == report["missing_on_registry"] == []

    code, out, err = await xinyi("access", "list", "--identity", enterprise, "--registry", network.registry_addr, "--json")
    assert code == 0, err
    listing = json.loads(out)
    queries = [a for a in listing["accesses"] if a["action"] == "query"]
    assert len(queries) == 4 and all(a["proven"] and a["institution"] == "bank/914403001922038216" for a in queries)
    assert listing["unverified_nodes"] == {}


async def test_verify_usage_errors(tmp_path, network: Network):
    auditor, _ = _bundles(network, tmp_path)
    code, _, err = await xinyi("audit", "verify", "--identity", auditor)
    assert code == 2 and "--offline" in one_line(err)
    code, _, err = await xinyi("audit", "verify", "--identity", auditor, "--offline", tmp_path / "nothing")
    assert code == 1 and "audit export" in one_line(err)


async def _cosigned(net: Network) -> None:
    """Wait until the witness has cosigned a checkpoint of the Chengdu node (it does every second)."""
    import asyncio

    from xinyi.crypto.identity import Principal

    client = net.auditor(net.node_addr("510100"), Principal(Role.NODE, "510100"))
    for _ in range(100):
        if (await client.checkpoint()).cosigned_checkpoint:
            return
        await asyncio.sleep(0.1)
    raise AssertionError("the witness cosigned nothing in 10 s")


async def test_compare_takes_what_checkpoint_prints_in_every_form(network: Network, tmp_path):
    await _traffic(network)
    await _cosigned(network)
    auditor, _ = _bundles(network, tmp_path)
    node = ["--identity", auditor, "--node", network.node_addr("510100")]
    code, text_out, err = await xinyi("audit", "checkpoint", *node, "--out", tmp_path / "note.txt")
    assert code == 0, err
    assert "newest cosigned checkpoint:" in text_out  # the text form carries both notes
    (tmp_path / "printed.txt").write_text(text_out)
    await _traffic(network)  # the log grows
    code, json_out, err = await xinyi("audit", "checkpoint", *node, "--json")
    assert code == 0, err
    (tmp_path / "printed.json").write_text(json_out)
    for first, second in (("printed.txt", "printed.json"), ("note.txt", "printed.json"), ("printed.txt", "note.txt")):
        code, out, err = await xinyi("audit", "compare", *node, tmp_path / first, tmp_path / second)
        assert code == 0, (first, second, err)
        assert "are consistent" in out or "sizes" in out
    # Something that is not a checkpoint is still refused, naming the file.
    (tmp_path / "junk.txt").write_text("not a checkpoint\n")
    code, _, err = await xinyi("audit", "compare", *node, tmp_path / "note.txt", tmp_path / "junk.txt")
    assert code == 1 and "junk.txt: not a checkpoint signed by its log" in one_line(err)


async def test_proof_and_consistency_say_what_they_verified_against_which_signed_root(network: Network, tmp_path):
    await _traffic(network)
    auditor, _ = _bundles(network, tmp_path)
    node = ["--identity", auditor, "--node", network.node_addr("510100")]
    code, _, err = await xinyi("audit", "checkpoint", *node, "--out", tmp_path / "early.txt")
    assert code == 0, err
    early_size = int((tmp_path / "early.txt").read_text().splitlines()[1])
    await _traffic(network)

    code, out, err = await xinyi("audit", "proof", *node, "--index", 1)
    assert code == 0, err
    assert re.fullmatch(r"entry 1 is in the tree of size \d+ whose root \S+ is signed by xinyi/510100 at "
                        r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2} UTC: verified\n", out), out
    code, out, err = await xinyi("audit", "proof", *node, "--index", 1, "--size", early_size, "--json")
    proof = json.loads(out)
    assert code == 0 and proof["verified"] is True and proof["leaf_index"] == 1 and proof["tree_size"] == early_size
    signed = proof["signed_checkpoint"]
    assert signed["signed_by"] == "xinyi/510100" and signed["tree_size"] > early_size and signed["timestamp"] > 0
    assert f"a prefix of the tree of size {signed['tree_size']}" in proof["statement"]

    code, out, err = await xinyi("audit", "consistency", *node, "--checkpoint", tmp_path / "early.txt", "--json")
    consistency = json.loads(out)
    assert code == 0 and consistency["verified"] is True and consistency["first"] == early_size, err
    assert consistency["first_root"] == (tmp_path / "early.txt").read_text().splitlines()[2]
    assert "early.txt (size" in consistency["statement"] and "signed by xinyi/510100 at" in consistency["statement"]
    code, out, err = await xinyi("audit", "consistency", *node, "--first", 2)
    assert code == 0 and out.startswith("the tree of size 2 (root ") and out.strip().endswith(": verified"), err

    # An entry edited in the node's database: its proof no longer leads to the signed root.
    store = network.nodes["510100"].store
    with store.engine.begin() as conn:
        raw = conn.execute(select(store.audit.c.leaf_input).where(store.audit.c.idx == 1)).scalar_one()
        record = audit_pb2.AuditRecord.FromString(raw)
        record.purpose = "loan_monitoring"
        conn.execute(update(store.audit).where(store.audit.c.idx == 1).values(leaf_input=record.SerializeToString()))
    code, out, err = await xinyi("audit", "proof", *node, "--index", 1, "--json")
    assert code == 1 and json.loads(out)["verified"] is False
    assert "entry 1: FAILED" in json.loads(out)["statement"]
