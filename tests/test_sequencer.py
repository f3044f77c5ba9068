"""The sequencer that keeps one node's audit log, nonces and consent uses for all its workers,
over a real Unix socket, on SQLite and PostgreSQL. (tests/test_workers.py runs it as processes.)"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from node.sequencer import (
    RemoteAuditLog,
    RemoteReplayGuard,
    RemoteUseLedger,
    Sequencer,
    SequencerError,
    SequencerLink,
    encode,
    read_frame,
)
from node.store import NodeStore
from xinyi.audit import merkle
from xinyi.audit.entry import AuditEntry
from xinyi.audit.log import AuditLog
from xinyi.clock import now_ms
from xinyi.crypto.identity import Principal, Role
from xinyi.crypto.pki import RootCA
from xinyi.errors import Refusal, StoreUnavailable
from xinyi.query import ReplayGuard, UseLedger


def entry(n: int) -> AuditEntry:
    return AuditEntry(at_ms=now_ms(), caller_role="bank", caller_id=f"9144030019220382{n % 10}6", action="query",
                      decision="allow", categories=("tax", "judicial"), policy_ids=("bank-query",), reason="answered",
                      request_hash=f"{n:064x}")


@pytest.fixture
async def sequenced(db_url: str, tmp_path: Path):
    """A sequencer on a fresh store, and two workers' links to it."""
    store = NodeStore(db_url)
    store.create_schema()
    identity = RootCA.create().issue(Principal(Role.NODE, "510100"))
    log = AuditLog(store, identity, now_ms)
    await log.open()
    sequencer = Sequencer(log, ReplayGuard(), UseLedger(store), lambda digest: {"digest": digest})
    path = Path(tmp_path) / "seq" / "sequencer.sock"
    await sequencer.serve(path)
    links = [SequencerLink(path), SequencerLink(path)]
    for link in links:
        await link.open(wait_seconds=5)
    yield log, sequencer, links, store, identity
    for link in links:
        await link.close()
    await sequencer.close()
    await log.close()
    store.close()


async def test_appends_from_two_workers_form_one_ordered_verifiable_log(sequenced):
    log, _, links, store, identity = sequenced
    remotes = [RemoteAuditLog(link, store, identity, now_ms) for link in links]
    indexes = await asyncio.gather(*(remotes[n % 2].append(entry(n)) for n in range(200)))
    assert sorted(indexes) == list(range(200))  # every append has its own place, none twice
    latest, cosigned = await remotes[1].checkpoints()
    assert latest.checkpoint.size == 200 and cosigned is None
    hashes = list(store.audit_leaf_hashes())
    tree = merkle.MerkleTree()
    tree.extend(hashes)
    assert tree.root() == latest.checkpoint.root  # what the worker was told is what is stored
    proof = await remotes[0].inclusion_proof(17, 200)
    assert merkle.verify_inclusion(hashes[17], 17, 200, proof, latest.checkpoint.root)
    assert await remotes[0].index_of(hashes[17]) == 17
    assert await remotes[1].consistency_proof(100, 200) == log.tree.consistency_proof(100, 200)
    assert os.stat(Path(links[0].path).parent).st_mode & 0o777 == 0o700


async def test_a_nonce_is_taken_once_for_all_workers(sequenced):
    *_, links, _, _ = sequenced
    a, b = RemoteReplayGuard(links[0]), RemoteReplayGuard(links[1])
    nonce, now = os.urandom(16), now_ms()
    table, row = await a.claim("bank/914403001922038216", nonce, now)
    assert table == "seen_nonces" and row["nonce"] == nonce  # bytes survive the JSON frame
    with pytest.raises(Refusal) as refused:
        await b.claim("bank/914403001922038216", nonce, now)
    assert refused.value.reason == "REPLAYED_NONCE" and "query.nonce" in refused.value.message
    # Another signer's identical nonce is its own.
    await b.claim("bank/91440300708461136T", nonce, now)


async def test_a_fetch_limit_is_counted_once_for_all_workers(sequenced):
    *_, links, _, _ = sequenced
    ledgers = [RemoteUseLedger(link) for link in links]
    now = now_ms()
    outcomes = await asyncio.gather(*(
        ledgers[n % 2].reserve("c" * 32, f"request-{n}", "bank/914403001922038216", now, window_start_ms=0, limit=3)
        for n in range(8)))
    assert sorted(allowed for allowed, _, _ in outcomes) == [False] * 5 + [True] * 3
    assert sum(1 for _, _, row in outcomes if row) == 3
    # A request already counted is not counted again (a retry of the same signed query).
    counted = next(f"request-{n}" for n, (allowed, _, _) in enumerate(outcomes) if allowed)
    assert await ledgers[1].reserve("c" * 32, counted, "bank/914403001922038216", now, window_start_ms=0,
                                    limit=3) == (True, 0, None)


BANK_ASKER = "bank/914403001922038216"


async def test_a_use_counts_only_when_its_answer_is_audited(sequenced, monkeypatch):
    """A use reserved by a worker is given back when the worker releases it, when the audit
    commit that carries it fails (a full disk), and when the worker's link breaks before it is
    audited; it counts when that commit succeeds."""
    import errno

    _, sequencer, links, store, identity = sequenced
    ledger, log = RemoteUseLedger(links[0]), RemoteAuditLog(links[0], store, identity, now_ms)
    consent, now = "d" * 32, now_ms()

    async def reserve(request: str, ledger=ledger):
        return await ledger.reserve(consent, request, BANK_ASKER, now, window_start_ms=0, limit=1)

    # 1. Released (the worker refused or failed before answering): the next request may use it.
    allowed, _, use = await reserve("r1")
    assert allowed and use is not None
    assert (await reserve("r2"))[0] is False  # held meanwhile: the limit holds under concurrency
    await ledger.release(use)
    allowed, _, use = await reserve("r2")
    assert allowed

    # 2. The answer's audit commit fails (ENOSPC): the use is given back with the failure.
    def full_disk(*args, **kwargs):  # a full disk is outside the product: simulated
        raise OSError(errno.ENOSPC, "No space left on device")

    real = store.append_audit_batch
    monkeypatch.setattr(store, "append_audit_batch", full_disk)
    with pytest.raises(StoreUnavailable, match="could not be written"):  # a store fault: UNAVAILABLE
        await ledger.audited([use], log.append(entry(1), extras=[use]))
    monkeypatch.setattr(store, "append_audit_batch", real)
    assert store.use_stats(consent) == (0, 0)

    # 3. The worker goes away between reserving and auditing: given back when its link closes.
    allowed, _, use = await reserve("r3")
    assert allowed
    await links[0].close()
    other = RemoteUseLedger(links[1])
    for _ in range(100):
        allowed, _, use = await reserve("r4", ledger=other)
        if allowed:
            break
        await asyncio.sleep(0.05)
    assert allowed, "the use held by a worker that went away was never given back"

    # 4. Audited: it counts, durably and in memory.
    await other.audited([use], RemoteAuditLog(links[1], store, identity, now_ms).append(entry(2), extras=[use]))
    assert store.use_stats(consent)[0] == 1
    assert (await reserve("r5", ledger=other))[0] is False
    await other.release(use)  # releasing a use that was audited changes nothing
    assert (await reserve("r6", ledger=other))[0] is False
    assert (await UseLedger(store).reserve(consent, "r7", BANK_ASKER, now, window_start_ms=0, limit=1))[0] is False


async def test_a_failed_commit_reaches_the_worker_and_nothing_is_counted_as_written(sequenced, monkeypatch):
    log, _, links, store, identity = sequenced
    remote = RemoteAuditLog(links[0], store, identity, now_ms)
    await remote.append(entry(0))

    def failing_disk(*args, **kwargs):  # a failing disk is outside the product: simulated
        raise OSError("disk I/O error")

    monkeypatch.setattr(store, "append_audit_batch", failing_disk)
    with pytest.raises(StoreUnavailable, match="could not be written"):  # UNAVAILABLE to the caller, not INTERNAL
        await remote.append(entry(1))
    assert log.tree.size == 1 and (await remote.size()) == 1


async def test_an_unknown_operation_or_an_oversized_frame_is_refused(sequenced):
    *_, links, _, _ = sequenced
    with pytest.raises(SequencerError, match="unknown operation 'drop_log'"):
        await links[0].call("drop_log")
    reader, writer = await asyncio.open_unix_connection(str(links[0].path))
    writer.write((1 << 30).to_bytes(4, "big"))  # announces a 1 GiB frame: the sequencer hangs up
    await writer.drain()
    assert await reader.read() == b""
    writer.close()
    assert await links[1].call("size") == 0  # the others' links are unaffected


async def test_workers_learn_at_once_that_the_sequencer_is_gone(sequenced):
    _, sequencer, links, _, _ = sequenced
    link = links[0]
    await sequencer.close()
    link._writer.transport.abort()  # what the sequencer's death looks like from the worker
    await asyncio.wait_for(link.lost.wait(), 5)
    with pytest.raises(StoreUnavailable, match="closed"):
        await link.call("size")


async def test_frames_carry_bytes_and_nested_values_exactly():
    reader = asyncio.StreamReader()
    message = {"id": 7, "ok": [b"\x00\xff", {"k": b"v", "n": None}, ("t", 1)]}
    reader.feed_data(encode(message))
    reader.feed_eof()
    assert await read_frame(reader) == {"id": 7, "ok": [b"\x00\xff", {"k": b"v", "n": None}, ["t", 1]]}
    assert await read_frame(reader) is None
