"""The tamper-evident audit log: append-only, Merkle-hashed (RFC 6962), group-committed, with
signed checkpoints (C2SP tlog-checkpoint in a signed note).

    log = AuditLog(store, identity, clock)
    await log.open()                      # rebuilds the tree from the stored leaf hashes
    index = await log.append(entry)       # returns once the entry is durably committed

Every entry records the Merkle root of the entries before it (`prev_root`), so a verifier can
name the first entry that was edited, removed or moved. Appends from concurrent requests are
written together in one transaction (group commit): durability does not serialize requests.
A new checkpoint is signed after each batch; one a second is also kept in the store.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from xinyi.audit import merkle
from xinyi.audit.checkpoint import Checkpoint, sign_note
from xinyi.audit.entry import AuditEntry, AuditStore
from xinyi.clock import Clock
from xinyi.crypto.pki import Identity
from xinyi.db import AUDIT_COLUMN_CHARS
from xinyi.errors import StoreUnavailable, is_store_unavailable

log = logging.getLogger("xinyi.audit")

MAX_BATCH = 4096
CHECKPOINT_PERSIST_MS = 1000


def _search_columns(entry: AuditEntry) -> dict[str, str]:
    """The columns an entry is found by. A value too long for its column (a malformed USCC in a
    refused request, say) is left out of it, never cut: cut, it could match a real one, and too
    long, it would fail the whole group commit on PostgreSQL. The entry itself keeps it."""
    return {name: value if len(value) <= AUDIT_COLUMN_CHARS[name] else
            (value[:AUDIT_COLUMN_CHARS[name]] if name == "action" else "")
            for name, value in (("caller_id", entry.caller_id), ("action", entry.action), ("uscc", entry.uscc),
                                ("decision", entry.decision), ("request_hash", entry.request_hash))}


def origin_of(identity: Identity) -> str:
    """The log's origin line: xinyi/<node id or registry id>."""
    return f"xinyi/{identity.principal.id}"


@dataclass(frozen=True)
class SignedCheckpoint:
    checkpoint: Checkpoint
    note: str  # the signed note text, cosignatures appended when the witness has cosigned
    at_ms: int


class AuditLog:
    def __init__(self, store: AuditStore, identity: Identity, clock: Clock) -> None:
        self.store = store
        self.identity = identity
        self.origin = origin_of(identity)
        self.clock = clock
        self.tree = merkle.MerkleTree()
        self._edge = merkle.RootTracker()  # the right edge, for each entry's prev_root
        self._queue: asyncio.Queue[tuple[AuditEntry, asyncio.Future]] = asyncio.Queue()
        self._writer: asyncio.Task | None = None
        self._latest: SignedCheckpoint | None = None
        self.cosigned: SignedCheckpoint | None = None  # the newest one the witness cosigned
        self._persisted_at_ms = 0
        self.batches = 0  # how many group commits, for the benchmark
        # A commit failed with the store unreachable: it may have been made all the same (the
        # primary took it, and its standby, then the connection died before the reply). The next
        # commit first reads what the store holds past this log's tree.
        self._unsure = False

    # -- lifecycle ---------------------------------------------------------------------------
    async def open(self) -> None:
        hashes = await asyncio.to_thread(lambda: list(self.store.audit_leaf_hashes()))
        self.tree.extend(hashes)
        self._edge = merkle.RootTracker(self.tree.size, self.tree.right_edge())
        stored = await asyncio.to_thread(self.store.latest_checkpoint)
        if stored and stored[0] == self.tree.size and stored[1] == self.tree.root():
            self._latest = SignedCheckpoint(Checkpoint(self.origin, stored[0], stored[1]), stored[2], stored[3])
            self._persisted_at_ms = stored[3]
        else:
            self._sign()
            await self._persist(force=True)
        self._writer = asyncio.create_task(self._write_forever(), name=f"audit-writer {self.origin}")

    async def close(self) -> None:
        if self._writer is None:
            return
        await self._queue.join()
        self._writer.cancel()
        self._writer = None
        await self._persist(force=True)

    # -- writing -----------------------------------------------------------------------------
    async def append(self, entry: AuditEntry, *, extras: list[tuple[str, dict]] = ()) -> int:
        """Queue an entry; return its index once it is committed. Raises if the commit failed.

        `extras` (a nonce from ReplayGuard.claim, a consent use from UseLedger.reserve) are made
        durable in the same commit: what a request takes costs no commit of its own.
        """
        if self._writer is None:
            raise RuntimeError("audit log is not open")
        done = asyncio.get_running_loop().create_future()
        await self._queue.put((entry, list(extras), done))
        return await done

    async def _write_forever(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < MAX_BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self._commit(batch)
            except Exception as e:  # noqa: BLE001 - every waiter learns the append failed
                log.error("audit commit of %d entries failed: %s", len(batch), e)
                # The store gone (database down, disk full) is not a bug: the caller hears UNAVAILABLE.
                failure = StoreUnavailable if is_store_unavailable(e) else RuntimeError
                self._unsure = self._unsure or failure is StoreUnavailable
                for *_, done in batch:
                    if not done.done():
                        done.set_exception(failure("the audit record could not be written; nothing was answered"))
            finally:
                for _ in batch:
                    self._queue.task_done()

    async def _commit(self, batch: list[tuple[AuditEntry, list, asyncio.Future]]) -> None:
        if self._unsure:
            await self._catch_up()
        edge = merkle.RootTracker(self._edge.size, self._edge.edge)  # tentative until committed
        rows, hashes = [], []
        extras = [extra for _, entry_extras, _ in batch for extra in entry_extras]
        for entry, _, _ in batch:
            index = self.tree.size + len(rows)
            leaf_input = entry.to_record(index, edge.root()).SerializeToString(deterministic=True)
            leaf_hash = merkle.leaf_hash(leaf_input)
            edge.append(leaf_hash)
            hashes.append(leaf_hash)
            rows.append({"idx": index, "leaf_input": leaf_input, "leaf_hash": leaf_hash, "at_ms": entry.at_ms,
                         **_search_columns(entry)})
        await asyncio.to_thread(self.store.append_audit_batch, rows, extras)
        # Committed: only now does the tree (and so any checkpoint) include the batch.
        self.tree.extend(hashes)
        self._edge = edge
        self.batches += 1
        self._sign()
        for (_, _, done), row in zip(batch, rows):
            if not done.done():
                done.set_result(row["idx"])
        await self._persist()

    async def _catch_up(self) -> None:
        """Take into the tree the entries the store holds past it: those of a commit reported
        as failed that was made (answered nothing, as its callers were told it failed)."""
        hashes = await asyncio.to_thread(lambda: list(self.store.audit_leaf_hashes(self.tree.size)))
        if hashes:
            log.warning("the audit log holds %d entries whose commit was reported as failed; they stay in the log",
                        len(hashes))
            self.tree.extend(hashes)
            self._edge = merkle.RootTracker(self.tree.size, self.tree.right_edge())
            self._sign()
        self._unsure = False

    # -- checkpoints -------------------------------------------------------------------------
    def _sign(self) -> None:
        cp = Checkpoint(self.origin, self.tree.size, self.tree.root())
        self._latest = SignedCheckpoint(cp, sign_note(cp, self.origin, self.identity.signing_key), self.clock())

    async def _persist(self, force: bool = False) -> None:
        latest = self._latest
        if latest is None or (not force and latest.at_ms - self._persisted_at_ms < CHECKPOINT_PERSIST_MS):
            return
        await asyncio.to_thread(self.store.put_checkpoint, latest.checkpoint.size, latest.checkpoint.root,
                                latest.note, latest.at_ms)
        self._persisted_at_ms = latest.at_ms

    @property
    def latest(self) -> SignedCheckpoint:
        assert self._latest is not None, "audit log is not open"
        return self._latest

    # -- reading (async, so a worker process can ask the one process that holds the tree) ------
    async def checkpoints(self) -> tuple[SignedCheckpoint, SignedCheckpoint | None]:
        """The latest signed checkpoint, and the newest one the witness cosigned."""
        return self.latest, self.cosigned

    async def size(self) -> int:
        return self.tree.size

    async def index_of(self, leaf_hash: bytes) -> int | None:
        return self.tree.index_of(leaf_hash)

    async def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        return self.tree.inclusion_proof(index, size)

    async def inclusion_proofs(self, indexes: list[int], size: int) -> list[list[bytes]]:
        return [self.tree.inclusion_proof(i, size) for i in indexes]

    async def consistency_proof(self, first: int, second: int) -> list[bytes]:
        return self.tree.consistency_proof(first, second)

    async def add_cosignature(self, checkpoint: Checkpoint, cosigned_note: str) -> None:
        """Keep the witness's cosigned note; it is served beside the latest checkpoint."""
        self.cosigned = SignedCheckpoint(checkpoint, cosigned_note, self.clock())
        await asyncio.to_thread(self.store.put_checkpoint, checkpoint.size, checkpoint.root, cosigned_note, self.clock())
