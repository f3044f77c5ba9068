"""The tamper-evident audit log: append-only, Merkle-hashed (RFC 6962), group-committed, with
signed checkpoints (C2SP tlog-checkpoint in a signed note).

    log = AuditLog(store, identity, clock)
    await log.open()                      # rebuilds the tree from the stored leaf hashes
    index = await log.append(entry)       # returns once the entry is durably committed

Every entry records the Merkle root of the entries before it (`prev_root`), so a verifier can
name the first entry that was edited, removed or moved. Appends from concurrent requests are
written together in one transaction (group commit): durability does not serialize requests.
A new checkpoint is signed after each batch; one a second is also kept in the store.

Several writers, one log. On PostgreSQL any number of processes, on any hosts, may append to
one log (registry replicas; a node's processes across hosts). Each group commit is numbered
inside its own transaction: it takes a transaction-scoped advisory lock keyed by the database,
the schema and the log's origin (`pg_advisory_xact_lock`), reads the leaves other writers
appended since the size this process knows, and only then gives its entries their indexes and
prev_roots; the commit releases the lock. We chose this over an elected sequencer (one process
holding a session advisory lock and appending for all, as Trillian elects its log signer)
because it has no leader to lose: a writer killed mid-commit loses only its open transaction,
the server releases its lock at once, and the other writers go on with no election, no
failover delay and no forwarding of appends to another process. What it costs is one indexed
read per group commit (usually of nothing) and commits of one log that do not overlap, which
group commit already amortizes. Any writer signs checkpoints for the size it knows (the writers
of a log share its identity); readers (proofs, checkpoints, access views) first catch up with
the stored leaves, so every process answers for the whole log.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, replace

from xinyi.audit import merkle
from xinyi.audit.checkpoint import Checkpoint, sign_note
from xinyi.audit.entry import AuditBatch, AuditEntry, AuditStore, Retraction
from xinyi.clock import Clock
from xinyi.crypto.pki import Identity
from xinyi.db import AUDIT_COLUMN_CHARS, StoreError
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


RETRACT = "retract"  # the action of an entry that retracts an earlier one
LOST_REPLY = ("AUDIT_COMMIT_REPLY_LOST: the database made this entry's commit but its reply was lost (a failover); "
              "the caller was told the request failed, so nothing it asked for was delivered: the entry is "
              "retracted and the consent use its request took is given back")
# What a retraction gives back: a consent use (nothing was delivered under it). Not a nonce: a
# retry of the same query may have taken it again since, at another replica.
RETRACTABLE = frozenset({"consent_uses"})
SETTLE_SECONDS = 1.0  # with a failed commit undecided and nothing to write, look at the store this often


@dataclass
class _Unconfirmed:
    """A group commit that failed. Numbered in its transaction (`start`), the database may have
    made it all the same: the failure may have come after the server committed (the connection
    lost during COMMIT, as in a failover). Its callers were told it failed. Kept until the log
    can tell whether it was made; a batch never numbered is kept only for its retractions."""

    start: int | None  # the index its first entry was given; None: not numbered, so not made
    first_hash: bytes | None  # the leaf hash it gave that entry
    batch: list[tuple[AuditEntry, list]]  # each entry with what its request took


def _retraction_of(entry: AuditEntry, index: int, at_ms: int) -> AuditEntry:
    """The same caller, request and consent; a retraction's own action, reason and detail."""
    return replace(entry, at_ms=at_ms, action=RETRACT, decision="deny", policy_ids=(), reason=LOST_REPLY,
                   detail=f"retracts entry {index} ({entry.action}, {entry.decision})")


def _forget_outcome(done: asyncio.Future) -> None:
    """Nobody awaits a retraction: a failure of its commit is handled as any batch's (logged)."""
    if not done.cancelled():
        done.exception()


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
        # Only the nodes a log's growth does not inflate stay in memory; proofs into finished
        # blocks read their leaf hashes back from the store (memory stays flat for years).
        self.tree = merkle.MerkleTree(stored_leaves=lambda start, stop: list(store.audit_leaf_hashes(start, stop)))
        self._queue: asyncio.Queue[tuple[AuditEntry, asyncio.Future]] = asyncio.Queue()
        self._writer: asyncio.Task | None = None
        self._latest: SignedCheckpoint | None = None
        self.cosigned: SignedCheckpoint | None = None  # the newest one the witness cosigned
        self._persisted_at_ms = 0
        self.batches = 0  # how many group commits, for the benchmark
        self._unconfirmed: list[_Unconfirmed] = []  # failed commits the database may have made

    # -- lifecycle ---------------------------------------------------------------------------
    async def open(self) -> None:
        def load() -> None:  # in chunks: a log of millions of entries is never a list in memory
            chunk: list[bytes] = []
            for h in self.store.audit_leaf_hashes():
                chunk.append(h)
                if len(chunk) == 65536:
                    self.tree.extend(chunk)
                    chunk.clear()
            self.tree.extend(chunk)

        await asyncio.to_thread(load)
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
        if self._unconfirmed:  # decide what can be decided before stopping: a restart forgets them
            await self._settle_from_store()
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
            # With a failed commit undecided, the store is looked at whenever nothing comes to write.
            wait = SETTLE_SECONDS if self._unconfirmed else None
            try:
                batch = [await asyncio.wait_for(self._queue.get(), wait)]
            except asyncio.TimeoutError:
                await self._settle_from_store()
                continue
            while len(batch) < MAX_BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self._commit(batch)
            except Exception as e:  # noqa: BLE001 - every waiter learns the append failed
                log.error("audit commit of %d entries failed: %s", len(batch), e)
                # The store gone (database down, disk full) is not a bug: the caller hears UNAVAILABLE.
                failure = StoreUnavailable if is_store_unavailable(e) else RuntimeError
                for *_, done in batch:
                    if not done.done():
                        done.set_exception(failure("the audit record could not be written; nothing was answered"))
            finally:
                for _ in batch:
                    self._queue.task_done()

    async def _commit(self, batch: list[tuple[AuditEntry, list, asyncio.Future]]) -> None:
        known, edge = self.tree.size, self.tree.right_edge()
        extras = [extra for _, entry_extras, _ in batch for extra in entry_extras]
        hashes: list[bytes] = []
        numbered_from: list[int] = []

        def build(others: list[bytes]) -> list[dict]:
            """Number the batch after what the store holds past this log's tree (called in the
            transaction): other writers' entries, or a commit of ours whose reply was lost when
            the database failed over (made all the same, and answered nothing)."""
            tracker = merkle.RootTracker(known, edge)
            for leaf in others:
                tracker.append(leaf)
            rows = []
            hashes.clear()
            numbered_from[:] = [tracker.size]
            for entry, _, _ in batch:
                index = tracker.size
                leaf_input = entry.to_record(index, tracker.root()).SerializeToString(deterministic=True)
                leaf_hash = merkle.leaf_hash(leaf_input)
                tracker.append(leaf_hash)
                hashes.append(leaf_hash)
                rows.append({"idx": index, "leaf_input": leaf_input, "leaf_hash": leaf_hash, "at_ms": entry.at_ms,
                             **_search_columns(entry)})
            return rows

        try:
            others = await asyncio.to_thread(self.store.append_audit_batch, AuditBatch(self.origin, known, len(batch),
                                                                                       build), extras)
        except BaseException:
            numbered = len(hashes) == len(batch)  # in the transaction: its commit may have been made
            if numbered or any(entry.action == RETRACT for entry, _, _ in batch):
                self._unconfirmed.append(_Unconfirmed(numbered_from[0] if numbered else None,
                                                      hashes[0] if numbered else None,
                                                      [(entry, entry_extras) for entry, entry_extras, _ in batch]))
            raise
        # Committed: only now does the tree (and so any checkpoint) include the batch.
        self._adopt(known, others + hashes)
        self.batches += 1
        self._sign()
        first = known + len(others)
        for i, (_, _, done) in enumerate(batch):
            if not done.done():
                done.set_result(first + i)
        await self._persist()

    def _adopt(self, start: int, hashes: list[bytes], *, complete: bool = False) -> None:
        """Extend the tree with committed leaves from index `start` on; those it has are skipped
        (a reader's catch-up and a commit may both bring the same ones). `complete`: these are
        all the store holds."""
        have = self.tree.size - start
        if have < 0:
            raise RuntimeError(f"audit leaves from {start} cannot follow a tree of {self.tree.size}")
        if have < len(hashes):
            self.tree.extend(hashes[have:])
        if self._unconfirmed:
            try:
                self._settle_unconfirmed(complete)
            except Exception as e:  # noqa: BLE001 - never turns the commit that brought the leaves into a failure
                log.error("failed audit commits could not be settled yet: %s", e)

    def _settle_unconfirmed(self, complete: bool) -> None:
        """Failed commits, decided by the leaves the tree now holds where each was numbered. One
        the database made after all had its callers told it failed: each of its entries is
        retracted by a new entry, committed with the deletion of the consent use its request
        took. One it did not make needs nothing, except its own retractions, queued again."""
        waiting = []
        for failed in self._unconfirmed:
            try:  # a leaf of a finished block is read back from the store, which may be away
                made = self._made(failed, complete)
            except Exception as e:  # noqa: BLE001 - decided at the next look
                log.debug("a failed audit commit cannot be decided yet: %s", e)
                made = None
            if made is None:
                waiting.append(failed)
                continue
            if made:
                log.warning("the audit commit of %d entries from index %d was made though it reported a failure "
                            "(its reply was lost); they are retracted", len(failed.batch), failed.start)
            for i, (entry, extras) in enumerate(failed.batch):
                if entry.action == RETRACT and not made:  # a retraction is made once, never retracted
                    self._queue_unawaited(entry, extras)
                elif entry.action != RETRACT and made:
                    self._queue_unawaited(_retraction_of(entry, failed.start + i, self.clock()),
                                          [Retraction(table, row) for table, row in extras if table in RETRACTABLE])
        self._unconfirmed = waiting

    def _queue_unawaited(self, entry: AuditEntry, extras: list) -> None:
        done = asyncio.get_running_loop().create_future()
        done.add_done_callback(_forget_outcome)
        self._queue.put_nowait((entry, extras, done))

    def _made(self, failed: _Unconfirmed, complete: bool) -> bool | None:
        """Whether the store holds the failed commit (None: it cannot tell yet)."""
        if failed.start is None:
            return False
        if self.tree.size > failed.start:
            return self.tree.leaf(failed.start) == failed.first_hash
        return False if complete else None  # complete: the store ends before where it was numbered

    async def _settle_from_store(self) -> None:
        """With failed commits undecided and nothing else to write: read what the store holds
        past the tree (a lost commit's leaves, or nothing) and decide them."""
        start = self.tree.size
        try:
            hashes = await asyncio.to_thread(lambda: list(self.store.audit_leaf_hashes(start)))
        except Exception as e:  # noqa: BLE001 - the store is still away: tried again later
            log.debug("the audit store cannot be read yet: %s", e)
            return
        self._adopt(start, hashes, complete=True)
        if self.tree.size > start:
            self._sign()

    async def _catch_up(self) -> None:
        """Take in what other writers of a shared log committed; sign the size now known."""
        if not self.store.shared:
            return
        start = self.tree.size
        hashes = await asyncio.to_thread(lambda: list(self.store.audit_leaf_hashes(start)))
        if hashes:
            self._adopt(start, hashes)
            if self.latest.checkpoint.size < self.tree.size:
                self._sign()

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
    # On a shared store each read first takes in what other writers committed, so whichever
    # process answers, it answers for the whole log.
    async def checkpoints(self) -> tuple[SignedCheckpoint, SignedCheckpoint | None]:
        """The latest signed checkpoint, and the newest one the witness cosigned."""
        await self._catch_up()
        return self.latest, self.cosigned

    async def size(self) -> int:
        await self._catch_up()
        return self.tree.size

    async def index_of(self, leaf_hash: bytes) -> int | None:
        """The first index of an entry with this leaf hash in the tree this log knows, or None."""
        index = await asyncio.to_thread(self.store.audit_index_of, leaf_hash)
        if index is not None and index >= self.tree.size:
            await self._catch_up()  # another writer's entry (shared store), or one being committed
        if index is None or index >= self.tree.size:
            return None
        # The store's index is only a pointer: the tree (which checks a finished block it reads
        # back against the node it kept) must hold this very leaf there, or the store's leaf_hash
        # column was edited and the log would name an entry it does not hold.
        held = await asyncio.to_thread(self.tree.leaf, index)
        if held != leaf_hash:
            raise StoreError(f"the store gives index {index} for a leaf hash the log's tree does not hold there: "
                             "the stored audit log was altered")
        return index

    async def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        (path,) = await self.inclusion_proofs([index], size)
        return path

    async def inclusion_proofs(self, indexes: list[int], size: int) -> list[list[bytes]]:
        await self._known(size)
        # In a thread: a proof into a finished block reads its leaf hashes from the store.
        return await asyncio.to_thread(lambda: [self.tree.inclusion_proof(i, size) for i in indexes])

    async def consistency_proof(self, first: int, second: int) -> list[bytes]:
        await self._known(second)
        return await asyncio.to_thread(self.tree.consistency_proof, first, second)

    async def _known(self, size: int) -> None:
        if size > self.tree.size:
            await self._catch_up()

    async def add_cosignature(self, checkpoint: Checkpoint, cosigned_note: str) -> None:
        """Keep the witness's cosigned note; it is served beside the latest checkpoint."""
        self.cosigned = SignedCheckpoint(checkpoint, cosigned_note, self.clock())
        await asyncio.to_thread(self.store.put_checkpoint, checkpoint.size, checkpoint.root, cosigned_note,
                                self.clock(), cosigned=True)
