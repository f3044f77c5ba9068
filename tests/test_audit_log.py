"""The tamper-evident audit log: group commit, chained entries, signed checkpoints, the auditor
RPCs and proofs, verification that names the first bad entry, the witness, access transparency.
Through real servers on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import base64
import os

import grpc
import pytest
from cryptography import x509
from harness import BANK, CHENGDU_FIRM, SHANGHAI_FIRM, Network
from sqlalchemy import delete, select, update

from node.store import NodeStore
from xinyi.audit import merkle
from xinyi.audit.checkpoint import Checkpoint, parse_note, sign_note, verify_cosignature, verify_note
from xinyi.audit.entry import AuditEntry
from xinyi.audit.log import LOST_REPLY, RETRACT, AuditLog
from xinyi.audit.verify import AuditorState, verify_log
from xinyi.clock import now_ms
from xinyi.crypto.identity import Principal, Role
from xinyi.crypto.pki import RootCA
from xinyi.directory import Directory
from xinyi.privacy.access import build_access_request
from xinyi.rpc.status import RpcFailure
from xinyi.v1 import access_pb2, access_pb2_grpc, audit_pb2, registry_pb2, registry_pb2_grpc


def entry(i: int) -> AuditEntry:
    return AuditEntry(at_ms=i, caller_role="bank", caller_id=BANK, action="query", decision="allow",
                      uscc=CHENGDU_FIRM, categories=("tax",), request_hash=f"{i:064x}")


async def _open_node_log(db_url: str):
    """A node's audit log, open, over a fresh store, signed by a node key a new root issued."""
    identity = RootCA.create().issue(Principal(Role.NODE, "510100"))
    store = NodeStore(db_url)
    store.create_schema()
    log = AuditLog(store, identity, now_ms)
    await log.open()
    return identity, store, log


async def test_concurrent_appends_share_commits_and_chain_every_entry(db_url: str):
    identity, store, log = await _open_node_log(db_url)
    indexes = await asyncio.gather(*(log.append(entry(i)) for i in range(300)))
    assert sorted(indexes) == list(range(300))
    assert log.batches < 300  # group commit: many appends per transaction
    rows = store.audit_entries(0, 300)
    tracker = merkle.RootTracker()
    for row in rows:
        record = row.record()
        assert record.index == row.index and record.prev_root == tracker.root()
        tracker.append(merkle.leaf_hash(row.leaf_input))
    cp = verify_note(log.latest.note, "xinyi/510100", identity.signing_key.public_key())
    assert (cp.size, cp.root) == (300, tracker.root())
    await log.close()
    # Reopened, the tree is rebuilt from the stored leaves and agrees with the checkpoint.
    reopened = AuditLog(store, identity, now_ms)
    await reopened.open()
    assert reopened.tree.root() == cp.root and reopened.latest.checkpoint.size == 300
    assert await reopened.append(entry(300)) == 300
    await reopened.close()
    store.close()


async def test_a_long_log_keeps_little_in_memory_and_still_proves_every_entry(db_url: str):
    """Memory that does not grow with the log (issue 11, item 8): the tree keeps the nodes of
    finished blocks of 256 entries only above them; an entry's index is found in the store,
    and its proof reads its block back, after a restart too."""
    identity, store, log = await _open_node_log(db_url)
    count = 3 * (1 << merkle.BLOCK_HEIGHT) + 11
    await asyncio.gather(*(log.append(entry(i)) for i in range(count)))
    everything = merkle.MerkleTree(merkle.leaf_hash(row.leaf_input) for row in store.audit_entries(0, count))
    assert log.tree.resident_bytes < everything.resident_bytes / 10
    cp = log.latest.checkpoint
    for reader in (log, None):
        if reader is None:  # reopened: the tree rebuilt from the stored leaves, as small
            await log.close()
            reader = AuditLog(store, identity, now_ms)
            await reader.open()
            assert reader.tree.resident_bytes < everything.resident_bytes / 10
        for i in (0, 5, 300, count - 1):
            leaf = merkle.leaf_hash(store.audit_entries(i, i + 1)[0].leaf_input)
            assert await reader.index_of(leaf) == i
            proof = await reader.inclusion_proof(i, cp.size)
            assert merkle.verify_inclusion(leaf, i, cp.size, proof, cp.root)
        proof = await reader.consistency_proof(100, cp.size)
        assert merkle.verify_consistency(100, cp.size, everything.root(100), cp.root, proof)
        assert await reader.index_of(merkle.leaf_hash(b"never appended")) is None
    await reader.close()
    store.close()


async def _auditor(net: Network, node: str = "510100"):
    return net.auditor(net.node_addr(node), Principal(Role.NODE, node))


async def _some_traffic(net: Network) -> str:
    consent = await net.grant()
    bank = net.bank()
    for _ in range(3):
        await bank.query(CHENGDU_FIRM, ["registration", "tax"], "credit_assessment", consent)
    return consent


async def test_auditor_reads_checkpoint_entries_and_proofs(network: Network):
    await _some_traffic(network)
    auditor = await _auditor(network)
    response = await auditor.checkpoint()
    directory = Directory.verify(response.directory, auditor.identity.trust())
    key = x509.load_der_x509_certificate(directory.nodes["510100"].signing_cert).public_key()
    cp = verify_note(response.checkpoint, "xinyi/510100", key)
    assert cp.size >= 4  # a consent delivery and three queries
    entries = await auditor.entries(0, cp.size - 1)
    assert [e.index for e in entries] == list(range(cp.size))
    leaves = [merkle.leaf_hash(e.leaf_input) for e in entries]
    assert merkle.root_of(leaves) == cp.root
    for index in (0, cp.size - 1):
        proof = await auditor.inclusion_proof(cp.size, index=index)
        assert merkle.verify_inclusion(leaves[index], index, cp.size, list(proof.audit_path), cp.root)
    by_hash = await auditor.inclusion_proof(cp.size, leaf_hash=leaves[2])
    assert by_hash.leaf_index == 2
    consistency = await auditor.consistency_proof(2, cp.size)
    assert merkle.verify_consistency(2, cp.size, merkle.root_of(leaves[:2]), cp.root, consistency)


async def test_proof_requests_out_of_range_or_unknown_are_refused_clearly(network: Network):
    await _some_traffic(network)
    auditor = await _auditor(network)
    size = parse_note((await auditor.checkpoint()).checkpoint).checkpoint.size
    from xinyi.client import ClientError

    with pytest.raises(ClientError) as e:
        await auditor.inclusion_proof(size + 100, index=0)
    assert e.value.failure.code == "OUT_OF_RANGE" and "tree_size" in e.value.failure.message
    with pytest.raises(ClientError) as e:
        await auditor.inclusion_proof(size, leaf_hash=b"\x07" * 32)
    assert e.value.failure.code == "NOT_FOUND" and e.value.failure.reason == "UNKNOWN_LEAF_HASH"
    with pytest.raises(ClientError) as e:
        await auditor.consistency_proof(5, size + 10)
    assert e.value.failure.code == "OUT_OF_RANGE"
    with pytest.raises(ClientError) as e:
        await auditor.entries(size + 5, size + 6)
    assert e.value.failure.code == "OUT_OF_RANGE"


async def test_non_auditors_cannot_call_auditor_rpcs(network: Network):
    from xinyi.client import AuditClient, ClientError

    bank = AuditClient(network.identity(Role.BANK, BANK), network.node_addr("510100"), Principal(Role.NODE, "510100"))
    try:
        for call in (bank.checkpoint(), bank.entries(0, 0), bank.inclusion_proof(1, index=0), bank.consistency_proof(1, 1)):
            with pytest.raises(ClientError) as e:
                await call
            assert e.value.failure.code == "PERMISSION_DENIED" and "audit-log-is-auditor-only" in e.value.failure.policy_ids
    finally:
        await bank.close()


# --- verification catches tampering ------------------------------------------------------------
async def _verify(net: Network, previous: AuditorState | None = None, node: str = "510100"):
    from xinyi.cli.audit import fetch_log, log_key

    auditor = await _auditor(net, node)
    response, directory, entries = await fetch_log(auditor)
    origin = f"xinyi/{node}"
    return verify_log(response.checkpoint, origin, log_key(directory, origin), entries, previous)


async def test_verify_passes_on_an_untouched_log_and_remembers_it(network: Network):
    await _some_traffic(network)
    report, state = await _verify(network)
    assert report.ok and state is not None and report.entries_checked == report.size
    await _some_traffic(network)
    report, state2 = await _verify(network, state)
    assert report.ok and report.previous_size == state.size and state2.size > state.size


def _tamper(store, how: str, index: int) -> None:
    t = store.audit
    with store.engine.begin() as conn:
        if how == "edit":
            raw = conn.execute(select(t.c.leaf_input).where(t.c.idx == index)).scalar_one()
            record = audit_pb2.AuditRecord.FromString(raw)
            record.caller_id = "914403001922038216" if record.caller_id != "914403001922038216" else "91440300708461136T"
            conn.execute(update(t).where(t.c.idx == index).values(leaf_input=record.SerializeToString(deterministic=True)))
        elif how == "delete":
            conn.execute(delete(t).where(t.c.idx == index))
        elif how == "reorder":
            a = conn.execute(select(t.c.leaf_input).where(t.c.idx == index)).scalar_one()
            b = conn.execute(select(t.c.leaf_input).where(t.c.idx == index + 1)).scalar_one()
            conn.execute(update(t).where(t.c.idx == index).values(leaf_input=b))
            conn.execute(update(t).where(t.c.idx == index + 1).values(leaf_input=a))


@pytest.mark.parametrize("how", ["edit", "delete", "reorder"])
async def test_verify_names_the_first_tampered_entry(network: Network, how: str):
    await _some_traffic(network)
    _, state = await _verify(network)
    await asyncio.to_thread(_tamper, network.nodes["510100"].store, how, 2)
    report, new_state = await _verify(network)
    assert not report.ok and new_state is None
    assert report.first_bad_index == 2, report.problems
    # And with what this auditor verified before, the same index is named.
    report, _ = await _verify(network, state)
    assert not report.ok and report.first_bad_index == 2


async def test_verify_catches_the_last_entry_altered_and_a_truncated_history(network: Network):
    await _some_traffic(network)
    _, state = await _verify(network)
    store = network.nodes["510100"].store
    last = state.size - 1
    await asyncio.to_thread(_tamper, store, "edit", last)
    report, _ = await _verify(network)
    assert not report.ok and report.first_bad_index == last
    # A log cut back to fewer entries than this auditor saw is caught even if it re-signs.
    shorter = AuditorState(state.origin, state.size + 5, state.root, state.note, state.leaf_hashes)
    report, _ = await _verify(network, shorter)
    assert not report.ok and any("truncated" in p for p in report.problems)


async def test_the_last_signed_entry_altered_fails_on_the_signed_root(db_url: str):
    """No entry chains to the last one a checkpoint signs: only the recomputed root can catch
    its edit. The writer is closed first, so nothing appended later (an auditor's own read)
    covers the edited entry with a chain link."""
    identity, store, log = await _open_node_log(db_url)
    await asyncio.gather(*(log.append(entry(i)) for i in range(5)))
    note = log.latest.note
    await log.close()
    key = identity.signing_key.public_key()
    assert verify_note(note, "xinyi/510100", key).size == 5

    def verify_stored():
        return verify_log(note, "xinyi/510100", key, [(e.index, e.leaf_input) for e in store.audit_entries(0, 10)])

    report, state = verify_stored()
    assert report.ok and state is not None and state.size == 5
    _tamper(store, "edit", 4)
    report, state = verify_stored()
    assert not report.ok and state is None
    assert report.first_bad_index == 4, report.problems
    assert report.problems == ["entry 4: the entries do not hash to the signed root; the last entry was altered "
                               "or the log was rewritten"]
    store.close()


async def test_a_forged_checkpoint_signature_is_rejected_by_verify_and_by_the_witness(network: Network):
    await _some_traffic(network)
    node = network.nodes["510100"]
    forger = RootCA.create().issue(Principal(Role.NODE, "510100"))
    latest = node.audit_log.latest.checkpoint
    forged = sign_note(latest, "xinyi/510100", forger.signing_key)
    from xinyi.cli.audit import fetch_log, log_key

    auditor = await _auditor(network)
    _, directory, entries = await fetch_log(auditor)
    report, _ = verify_log(forged, "xinyi/510100", log_key(directory, "xinyi/510100"), entries)
    assert not report.ok and report.problems[0].startswith("checkpoint:")
    stub = registry_pb2_grpc.WitnessServiceStub(network.channel(Role.NODE, "510100", network.registry_addr, Role.REGISTRY).channel)
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await stub.AddCheckpoint(registry_pb2.AddCheckpointRequest(checkpoint=forged))
    failure = RpcFailure.from_error(e.value)
    assert failure.code == "UNAUTHENTICATED" and failure.reason == "BAD_CHECKPOINT_SIGNATURE"


# --- the witness --------------------------------------------------------------------------------
async def _cosigned_now(node) -> None:
    """The node's latest checkpoint gets cosigned: by this call, or by the node's own loop
    (every second), which may have sent the same checkpoint a moment before."""
    size = node.audit_log.tree.size
    if await node.cosign_once():
        return
    for _ in range(50):
        if node.audit_log.cosigned is not None and node.audit_log.cosigned.checkpoint.size >= size:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"no cosignature of a checkpoint of size {size} or more within 5 s")


async def test_the_registry_cosigns_consistent_checkpoints_and_refuses_a_second_history(network: Network):
    node = network.nodes["510100"]
    # This test drives the witness itself: the node's own loop, cosigning every second, would
    # move the witness's last size between a submission and the next (OLD_SIZE_MISMATCH).
    for task in node._tasks:
        if task.get_coro().__qualname__.endswith("_keep_cosigned"):
            task.cancel()
    await _some_traffic(network)
    await _cosigned_now(node)
    cosigned = node.audit_log.cosigned
    registry_key = network.identity(Role.REGISTRY, "national").signing_key.public_key()
    assert verify_cosignature(cosigned.note, "xinyi/national", registry_key) > 0
    await _some_traffic(network)
    await _cosigned_now(node)  # grows with a consistency proof
    grown = node.audit_log.cosigned.checkpoint
    assert grown.size > cosigned.checkpoint.size
    # The auditor sees the cosigned checkpoint beside the latest.
    response = await (await _auditor(network)).checkpoint()
    assert response.cosigned_checkpoint and parse_note(response.cosigned_checkpoint).checkpoint.size == grown.size

    stub = registry_pb2_grpc.WitnessServiceStub(network.channel(Role.NODE, "510100", network.registry_addr, Role.REGISTRY).channel)
    signer = network.identity(Role.NODE, "510100").signing_key

    async def submit(cp: Checkpoint, old_size: int, proof=()) -> RpcFailure:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await stub.AddCheckpoint(registry_pb2.AddCheckpointRequest(
                checkpoint=sign_note(cp, "xinyi/510100", signer), old_size=old_size, consistency=list(proof)))
        return RpcFailure.from_error(e.value)

    # Same size, another root: the node is showing two histories.
    f = await submit(Checkpoint("xinyi/510100", grown.size, b"\x01" * 32), grown.size)
    assert f.code == "FAILED_PRECONDITION" and f.reason == "CONFLICTING_CHECKPOINT"
    assert dict(f.metadata)["cosigned_checkpoint"].startswith("xinyi/510100\n")  # the evidence
    # Larger, but not an extension of what was cosigned.
    f = await submit(Checkpoint("xinyi/510100", grown.size + 3, b"\x02" * 32), grown.size,
                     node.audit_log.tree.consistency_proof(grown.size - 1, grown.size))
    assert f.code == "FAILED_PRECONDITION" and f.reason == "INCONSISTENT_CHECKPOINT"
    # Smaller than what was cosigned: a rollback.
    f = await submit(Checkpoint("xinyi/510100", 1, node.audit_log.tree.root(1)), grown.size)
    assert f.reason == "ROLLBACK"
    # Another node's log.
    other = sign_note(Checkpoint("xinyi/510000", 1, b"\x03" * 32), "xinyi/510000", signer)
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await stub.AddCheckpoint(registry_pb2.AddCheckpointRequest(checkpoint=other))
    assert RpcFailure.from_error(e.value).reason == "NOT_YOUR_LOG"


async def test_two_checkpoints_that_cannot_both_be_true_are_reported_as_a_split_view(network: Network, tmp_path):
    from xinyi.cli.audit import AuditCommandError, cmd_compare

    await _some_traffic(network)
    node = network.nodes["510100"]
    size = node.audit_log.tree.size
    signer = network.identity(Role.NODE, "510100").signing_key
    honest = node.audit_log.latest.note
    other = sign_note(Checkpoint("xinyi/510100", size, b"\x09" * 32), "xinyi/510100", signer)
    (tmp_path / "a.txt").write_text(honest)
    (tmp_path / "b.txt").write_text(other)

    class Args:
        first_note, second_note, json = str(tmp_path / "a.txt"), str(tmp_path / "b.txt"), True

    with pytest.raises(AuditCommandError, match="two histories"):
        await cmd_compare(await _auditor(network), Args)
    # Two honest checkpoints of different sizes are consistent.
    earlier = sign_note(Checkpoint("xinyi/510100", size - 1, node.audit_log.tree.root(size - 1)), "xinyi/510100", signer)
    (tmp_path / "b.txt").write_text(earlier)
    await cmd_compare(await _auditor(network), Args)


# --- reconciliation and the enterprise's view ------------------------------------------------------
async def test_reconcile_joins_routings_and_node_answers(network: Network):
    from xinyi.cli.audit import reconcile

    await _some_traffic(network)
    auditor = network.identity(Role.AUDITOR, "audit-office")
    report = await reconcile(auditor, network.registry_addr)
    assert report["routings_checked"] == 6 and report["node_entries_checked"] == 6
    assert report["missing_on_nodes"] == [] and report["missing_on_registry"] == []
    # A node that lost the record of an answer it gave is named.
    store = network.nodes["510000"].store
    rows = await asyncio.to_thread(store.find_audit, uscc=CHENGDU_FIRM)
    query_row = next(r for r in rows if r.record().action == "query")
    with store.engine.begin() as conn:
        conn.execute(delete(store.audit).where(store.audit.c.idx == query_row.index))
    report = await reconcile(auditor, network.registry_addr)
    assert [(m["node"], m["request_hash"]) for m in report["missing_on_nodes"]] == [("510000", query_row.record().request_hash)]


async def test_an_enterprise_sees_every_access_with_proofs(network: Network):
    consent = await _some_traffic(network)
    accesses, problems = await network.enterprise().accesses()
    assert problems == {}
    queries = [a for a in accesses if a.record.action == "query"]
    assert len(queries) == 6  # three queries, answered by two nodes each
    assert {a.node for a in queries} == {"510100", "510000"}
    assert all(a.record.caller_id == BANK and a.record.consent_id == consent and a.record.purpose == "credit_assessment"
               for a in queries)
    assert any(a.record.action == "deliver_consent" for a in accesses)


async def test_an_enterprise_cannot_see_another_enterprises_accesses(network: Network):
    await _some_traffic(network)
    stub = access_pb2_grpc.AccessServiceStub(
        network.channel(Role.ENTERPRISE, SHANGHAI_FIRM, network.registry_addr, Role.REGISTRY).channel)
    # Signed by the Shanghai firm, naming the Chengdu firm.
    from xinyi.crypto.envelope import sign

    body = access_pb2.AccessRequestBody(uscc=CHENGDU_FIRM, nonce=os.urandom(16), issued_at_ms=now_ms())
    forged = sign(network.identity(Role.ENTERPRISE, SHANGHAI_FIRM), body)
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await stub.ListAccesses(access_pb2.ListAccessesRequest(request=forged))
    f = RpcFailure.from_error(e.value)
    assert f.code == "PERMISSION_DENIED" and f.reason == "ACCESSES_OF_ANOTHER_ENTERPRISE"
    # The Chengdu firm's own request, sent by the Shanghai firm.
    theirs = build_access_request(network.identity(Role.ENTERPRISE, CHENGDU_FIRM), now_ms())
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await stub.ListAccesses(access_pb2.ListAccessesRequest(request=theirs))
    assert RpcFailure.from_error(e.value).reason == "SIGNER_IS_NOT_CALLER"
    # A bank asking.
    bank_stub = access_pb2_grpc.AccessServiceStub(network.channel(Role.BANK, BANK, network.registry_addr, Role.REGISTRY).channel)
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await bank_stub.ListAccesses(access_pb2.ListAccessesRequest(request=theirs))
    f = RpcFailure.from_error(e.value)
    assert f.code == "UNAUTHENTICATED" and f.reason == "SIGNER_IS_NOT_CALLER", f


async def test_export_verifies_offline(network: Network, tmp_path):
    from xinyi.cli.audit import AuditCommandError, cmd_export, verify_offline

    await _some_traffic(network)

    class Args:
        out = str(tmp_path / "archive")
        offline = str(tmp_path / "archive")
        json = False

    await cmd_export(await _auditor(network), Args)
    auditor = network.identity(Role.AUDITOR, "audit-office")
    verify_offline(auditor, Args)
    lines = (tmp_path / "archive" / "entries.jsonl").read_text().splitlines()
    import json

    record = json.loads(lines[1])
    raw = audit_pb2.AuditRecord.FromString(base64.b64decode(record["leaf_input"]))
    raw.reason = "nothing to see"
    record["leaf_input"] = base64.b64encode(raw.SerializeToString(deterministic=True)).decode()
    lines[1] = json.dumps(record)
    (tmp_path / "archive" / "entries.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(AuditCommandError, match="first bad index 1"):
        verify_offline(auditor, Args)


async def test_a_store_whose_leaf_hashes_were_edited_names_no_index_for_them(db_url: str):
    """index_of asks the store's leaf-hash index; a leaf_hash column edited after the append
    (to a hash never appended) made the log answer with that row's index, while its tree, and the
    proof it gave, held the real leaf there: the log affirmed an entry it does not hold. Before
    the store was asked, the lookup was in the tree. Now the tree's leaf must be the one asked
    for, else the store was altered (loud, never an index); a proof reading an edited finished
    block back fails too."""
    identity, store, log = await _open_node_log(db_url)
    width = 1 << merkle.BLOCK_HEIGHT
    await asyncio.gather(*(log.append(entry(i)) for i in range(2 * width + 3)))
    size = log.tree.size
    assert await log.inclusion_proof(5, size)  # block 0 read back and kept in the cache
    edits = {5: merkle.leaf_hash(b"never appended (finished block)"), size - 1: merkle.leaf_hash(b"never appended (open block)"),
             width + 7: merkle.leaf_hash(b"never appended (block not read yet)")}
    with store.engine.begin() as conn:
        for idx, fake in edits.items():
            conn.execute(update(store.audit).where(store.audit.c.idx == idx).values(leaf_hash=fake))
    for idx, fake in edits.items():
        with pytest.raises(Exception, match="altered"):
            await log.index_of(fake)
    with pytest.raises(ValueError, match="the store was altered"):
        await log.inclusion_proof(width + 7, size)
    real = merkle.leaf_hash(store.audit_entries(6, 7)[0].leaf_input)
    assert await log.index_of(real) == 6  # the rows not edited are still found
    await log.close()
    store.close()


def _use_and_nonce(i: int) -> list[tuple[str, dict]]:
    """What a query's request takes, written with its audit entry: its consent use and nonce."""
    request = f"{i:064x}"
    return [("consent_uses", {"consent_id": "c-lost", "request_hash": request, "asker": BANK, "at_ms": i}),
            ("seen_nonces", {"signer": BANK, "nonce": bytes([i]) * 32, "expires_at_ms": 2 ** 62, "request_hash": request})]


@pytest.mark.parametrize("lost, plan, later", [
    (1, ["made"], 3),                       # the reply of entry 0's commit is lost: it is retracted
    (1, ["not made"], 3),                   # the commit failed before it was made: nothing to retract
    (1, ["made", "ok", "not made"], 3),     # the retraction's own commit failed numbered: made again, once
    (1, ["made", "ok", "refused"], 3),      # ... or refused before numbering: made again, once
    (3, ["made"], 3),                       # three entries in the lost commit: each retracted by its index
    (1, ["made"], 0),                       # nothing more to write: the log looks at the store by itself
])
async def test_a_commit_whose_reply_was_lost_is_retracted_and_gives_back_its_consent_use(db_url: str, monkeypatch,
                                                                                       lost, plan, later):
    """A failover can lose the reply of a COMMIT the database made: the callers are told the
    append failed (nothing answered), yet the entries and their consent uses are stored. The log
    finds its own entries where it numbered them, retracts each with a new entry and deletes the
    consent use its request took, so that a fetch limit counts what was delivered."""
    import sqlalchemy.exc

    from xinyi.audit import log as audit_log
    from xinyi.errors import StoreUnavailable

    monkeypatch.setattr(audit_log, "SETTLE_SECONDS", 0.05)
    identity, store, log = await _open_node_log(db_url)
    real = store.append_audit_batch
    faults = list(plan)

    def failing_over(batch, extras=()):  # the connection to the database, outside the product: simulated
        fault = faults.pop(0) if faults else "ok"
        if fault == "refused":
            raise sqlalchemy.exc.OperationalError("BEGIN", {}, Exception("connection refused"))
        if fault == "not made":
            batch.build(list(store.audit_leaf_hashes(batch.known_size)))  # numbered, then the server went away
        else:
            others = real(batch, extras)
        if fault != "ok":
            raise sqlalchemy.exc.OperationalError("COMMIT", {}, Exception("server closed the connection unexpectedly"))
        return others

    monkeypatch.setattr(store, "append_audit_batch", failing_over)
    failed = await asyncio.gather(*(log.append(entry(i), extras=_use_and_nonce(i)) for i in range(lost)),
                                  return_exceptions=True)
    assert all(isinstance(f, StoreUnavailable) for f in failed), failed
    for i in range(lost, lost + later):
        assert await log.append(entry(i), extras=_use_and_nonce(i)) >= 0
    if not later:
        for _ in range(100):  # the writer looks at the store every SETTLE_SECONDS while one is undecided
            if not log._unconfirmed and log._queue.empty():
                break
            await asyncio.sleep(0.05)
    await log.close()

    records = [row.record() for row in store.audit_entries(0, 100)]
    made = plan[0] == "made"
    retracted = list(range(lost)) if made else []
    retractions = [r for r in records if r.action == RETRACT]
    assert [r.request_hash for r in retractions] == [f"{i:064x}" for i in retracted]
    for i, r in zip(retracted, retractions):
        assert records[i].request_hash == r.request_hash  # the entry it names is the lost one
        assert r.detail == f"retracts entry {i} (query, allow)"
        assert r.reason == LOST_REPLY and r.decision == audit_pb2.DECISION_DENY
        assert r.uscc == CHENGDU_FIRM and r.caller_id == BANK
    answered = {f"{i:064x}" for i in range(lost, lost + later)}
    assert {h for h, _, _ in store.uses_of("c-lost")} == answered  # the lost ones' uses are given back
    assert {r.request_hash for r in records if r.action == "query"} == answered | {f"{i:064x}" for i in retracted}
    # The nonces stay: a retry of the same query is told it was received, never answered twice.
    assert {n for _, n, _ in store.live_nonces(0)} == {bytes([i]) * 32 for i in (*retracted, *range(lost, lost + later))}
    # The log with its retractions is one chain, and the signed checkpoint covers it.
    tree = merkle.MerkleTree(merkle.leaf_hash(row.leaf_input) for row in store.audit_entries(0, 100))
    cp = verify_note(log.latest.note, "xinyi/510100", identity.signing_key.public_key())
    assert (cp.size, cp.root) == (len(records), tree.root())
    store.close()


async def test_lost_commits_are_each_retracted_once_when_one_cannot_be_decided_yet(db_url: str, monkeypatch):
    """Three commits in a row lose their replies; when the log looks, the leaf where the second
    was numbered cannot be read (its block is read back from a store that is away): the first and
    third are retracted at once, the second at the next look, and none twice."""
    import sqlalchemy.exc

    from xinyi.audit import log as audit_log

    monkeypatch.setattr(audit_log, "SETTLE_SECONDS", 0.05)
    _, store, log = await _open_node_log(db_url)
    real = store.append_audit_batch
    lost = [True, True, True]

    def failing_over(batch, extras=()):  # the connection to the database, outside the product: simulated
        others = real(batch, extras)
        if lost and lost.pop(0):
            raise sqlalchemy.exc.OperationalError("COMMIT", {}, Exception("server closed the connection unexpectedly"))
        return others

    monkeypatch.setattr(store, "append_audit_batch", failing_over)
    real_leaf, unreadable = merkle.MerkleTree.leaf, [1]

    def leaf(tree, index: int) -> bytes:
        if tree is log.tree and index in unreadable:
            unreadable.remove(index)
            raise OSError("the store is away")
        return real_leaf(tree, index)

    monkeypatch.setattr(merkle.MerkleTree, "leaf", leaf)
    for i in range(3):
        with pytest.raises(Exception):
            await log.append(entry(i), extras=_use_and_nonce(i))
    for i in range(3, 6):
        await log.append(entry(i), extras=_use_and_nonce(i))
    await log.close()
    records = [row.record() for row in store.audit_entries(0, 100)]
    assert sorted(r.detail for r in records if r.action == RETRACT) == [
        f"retracts entry {i} (query, allow)" for i in range(3)]
    assert {h for h, _, _ in store.uses_of("c-lost")} == {f"{i:064x}" for i in range(3, 6)}
    store.close()
