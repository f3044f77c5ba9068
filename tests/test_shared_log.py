"""One audit log, several writers: AuditLog objects on separate engines (as separate processes or
hosts would have) appending to one PostgreSQL store, and real writer processes killed with -9
mid-append. The log must verify (every prev_root, the signed root, every stored checkpoint) and
hold every committed entry exactly once."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from harness import BANK, CHENGDU_FIRM
from sqlalchemy import func, select

from node.store import NodeStore
from xinyi.audit import merkle
from xinyi.audit.entry import AuditEntry
from xinyi.audit.log import AuditLog
from xinyi.audit.verify import verify_log
from xinyi.clock import now_ms
from xinyi.crypto.identity import Principal, Role
from xinyi.crypto.pki import Identity, RootCA

ROOT = Path(__file__).resolve().parent.parent


def entry(name: str) -> AuditEntry:
    return AuditEntry(at_ms=now_ms(), caller_role="bank", caller_id=BANK, action="query", decision="allow",
                      uscc=CHENGDU_FIRM, categories=("tax",), request_hash=name)


def assert_log_verifies(store: NodeStore, identity: Identity) -> list[str]:
    """The whole stored log verifies against its latest stored checkpoint, and every stored
    checkpoint is a prefix of it; returns the entries' request hashes in log order."""
    size, root, note, _ = store.latest_checkpoint()
    entries = store.audit_entries(0, store.audit_log_size())
    assert len(entries) == store.audit_log_size()
    report, _ = verify_log(note, f"xinyi/{identity.principal.id}", identity.signing_key.public_key(),
                           ((e.index, e.leaf_input) for e in entries))
    assert report.ok, report.problems
    tree = merkle.MerkleTree(merkle.leaf_hash(e.leaf_input) for e in entries)
    c = store.checkpoints.c
    with store.engine.connect() as conn:
        stored = conn.execute(select(c.size, c.root)).all()
    assert stored and all(tree.root(s) == bytes(r) for s, r in stored), "a stored checkpoint is not a prefix of the log"
    assert size <= tree.size and tree.root(size) == root
    return [e.record().request_hash for e in entries]


@pytest.fixture
def pg_url(databases):
    if databases.backend != "postgresql":
        pytest.skip("several writers share a log on PostgreSQL; a SQLite node keeps one writer (the sequencer)")
    return databases.new()


@pytest.fixture
def identity() -> Identity:
    return RootCA.create().issue(Principal(Role.NODE, "510100"))


async def test_writers_on_separate_engines_make_one_verifiable_log(pg_url: str, identity: Identity):
    stores = [NodeStore(pg_url) for _ in range(3)]
    stores[0].create_schema()
    logs = [AuditLog(store, identity, now_ms) for store in stores]
    for log in logs:
        await log.open()

    async def write(w: int) -> list[int]:
        indexes = []
        for i in range(40):  # batches of several entries, interleaved with the other writers'
            indexes += await asyncio.gather(*(logs[w].append(entry(f"w{w}-{i}-{j}")) for j in range(3)))
        return indexes

    indexes = [i for part in await asyncio.gather(*(write(w) for w in range(3))) for i in part]
    assert sorted(indexes) == list(range(360)), "every append got its own index, and no index is missing"
    for log in logs:
        await log.close()
    names = assert_log_verifies(stores[0], identity)
    assert sorted(names) == sorted(f"w{w}-{i}-{j}" for w in range(3) for i in range(40) for j in range(3))
    # Each writer answers for the whole log, whoever wrote the entries: proofs and checkpoints.
    latest, _ = await logs[1].checkpoints()
    assert latest.checkpoint.size == 360 and latest.checkpoint.root == merkle.MerkleTree(
        merkle.leaf_hash(e.leaf_input) for e in stores[2].audit_entries(0, 360)).root()
    written_by_0 = stores[0].find_audit(request_hash="w0-0-0")[0]
    proof = await logs[2].inclusion_proof(written_by_0.index, 360)
    assert merkle.verify_inclusion(merkle.leaf_hash(written_by_0.leaf_input), written_by_0.index, 360, proof,
                                   latest.checkpoint.root)
    for store in stores:
        store.close()


async def test_a_log_of_another_schema_is_not_held_up(pg_url: str, databases, identity: Identity):
    """The lock is the log's, in its schema: a transaction holding one log's lock does not stop
    the same origin's log in another schema (tests and services share one server)."""
    first, other = NodeStore(pg_url), NodeStore(databases.new())
    for store in (first, other):
        store.create_schema()
    held = first.engine.connect()
    held.begin()
    held.execute(select(func.pg_advisory_xact_lock(first.advisory_key("xinyi/510100"))))
    try:
        log = AuditLog(other, identity, now_ms)
        await log.open()
        assert await asyncio.wait_for(log.append(entry("elsewhere")), 10) == 0
        await log.close()
    finally:
        held.rollback()
        held.close()
        first.close()
        other.close()


WRITER = """
import asyncio, sys
from pathlib import Path
from node.store import NodeStore
from xinyi.audit.entry import AuditEntry
from xinyi.audit.log import AuditLog
from xinyi.clock import now_ms
from xinyi.crypto.pki import Identity

async def main(url, bundle, name, count):
    log = AuditLog(NodeStore(url), Identity.load(Path(bundle)), now_ms)
    await log.open()
    for i in range(count):
        await asyncio.gather(*(log.append(AuditEntry(at_ms=now_ms(), caller_role="bank", caller_id="b",
                                                     action="query", decision="allow", request_hash=f"{name}-{i}-{j}"))
                               for j in range(4)))
        print(i, flush=True)  # batch i is committed
    await log.close()

asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])))
"""


def test_a_writer_killed_mid_append_leaves_a_log_that_verifies(pg_url: str, identity: Identity, tmp_path: Path):
    bundle = identity.save(tmp_path / "node")
    NodeStore(pg_url).create_schema()
    count = 150

    def start(name: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-c", WRITER, pg_url, str(bundle), name, str(count)], cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    victim, survivors = start("victim"), [start("a"), start("b")]
    committed = -1
    deadline = time.monotonic() + 60
    while committed < 20:  # killed well inside its stream of appends, while the others write too
        line = victim.stdout.readline()
        assert line, f"the victim writer stopped: {victim.stderr.read()[-3000:]}"
        committed = int(line)
        assert time.monotonic() < deadline
    victim.send_signal(signal.SIGKILL)
    victim.wait(10)
    for proc in survivors:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-3000:]
    store = NodeStore(pg_url)
    names = assert_log_verifies(store, identity)
    assert len(names) == len(set(names)), "an entry is in the log twice"
    for name in ("a", "b"):
        assert {n for n in names if n.startswith(f"{name}-")} == {f"{name}-{i}-{j}" for i in range(count) for j in range(4)}
    victims = {n for n in names if n.startswith("victim-")}
    assert {f"victim-{i}-{j}" for i in range(committed + 1) for j in range(4)} <= victims, "a committed entry was lost"
    store.close()


async def test_a_writer_opened_later_appends_after_everyone(pg_url: str, identity: Identity):
    stores = [NodeStore(pg_url), NodeStore(pg_url)]
    stores[0].create_schema()
    early = AuditLog(stores[0], identity, now_ms)
    await early.open()
    await asyncio.gather(*(early.append(entry(f"e{i}")) for i in range(5)))
    late = AuditLog(stores[1], identity, now_ms)
    await late.open()
    assert await early.append(entry("e5")) == 5
    assert await late.append(entry("l0")) == 6  # it had not seen e5: it was read in the commit
    assert (await late.checkpoints())[0].checkpoint.size == 7
    for log in (early, late):
        await log.close()
    assert assert_log_verifies(stores[0], identity) == [f"e{i}" for i in range(6)] + ["l0"]
    for store in stores:
        store.close()


async def test_two_witness_replicas_asked_to_cosign_forks_of_one_size_cosign_one(network):
    """Two registry replicas (witnesses on their own engines, one database) are asked at the same
    instant to cosign two different trees of one size, each a valid extension of what was
    cosigned: one cosignature, and the other replica refuses the fork."""
    from registry.store import RegistryStore
    from registry.witness import Witness
    from xinyi.audit.checkpoint import Checkpoint, sign_note
    from xinyi.errors import Refusal

    node, registry = network.nodes["510100"], network.registry
    for task in node._tasks:  # the node's own cosigning would move the witness state under the test
        task.cancel()
    replica = Witness(registry.identity, registry.directory, RegistryStore(registry.store.url), registry.authorizer,
                      registry.audit_log, registry.config.clock)
    signer = network.identity(Role.NODE, "510100").signing_key
    caller = Principal(Role.NODE, "510100")
    last = await asyncio.to_thread(registry.store.witnessed, "xinyi/510100")
    base = [node.audit_log.tree.leaf(i) for i in range(last[0])] if last else []
    forks = [merkle.MerkleTree(base + [bytes([k]) * 32 for _ in range(4)]) for k in (1, 2)]
    size = len(base) + 4
    notes = [sign_note(Checkpoint("xinyi/510100", size, t.root()), "xinyi/510100", signer) for t in forks]
    proofs = [t.consistency_proof(len(base), size) if base else [] for t in forks]
    outcomes = await asyncio.gather(registry.witness.add_checkpoint(caller, notes[0], len(base), proofs[0]),
                                    replica.add_checkpoint(caller, notes[1], len(base), proofs[1]),
                                    return_exceptions=True)
    cosigned = [o for o in outcomes if isinstance(o, str)]
    refused = [o for o in outcomes if isinstance(o, Refusal)]
    assert len(cosigned) == 1 and len(refused) == 1, outcomes
    assert refused[0].reason == "CONFLICTING_CHECKPOINT"
    stored = await asyncio.to_thread(registry.store.witnessed, "xinyi/510100")
    assert stored[0] == size and stored[1] == forks[outcomes.index(cosigned[0])].root()
    replica.store.close()
