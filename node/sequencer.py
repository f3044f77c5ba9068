"""One audit log per node, however many worker processes serve it (`--workers N`).

The workers share one port (SO_REUSEPORT) and answer queries side by side, but a node's audit
log must stay one ordered, Merkle-hashed sequence, and a nonce or a consent's last fetch must
be taken once for the whole node. So a single process, the sequencer, owns the log, the
ReplayGuard and the UseLedger; workers reach it over a Unix socket in a directory only the
node's user can open:

    sequencer = Sequencer(audit_log, replay, uses, status)       # in the supervising process
    await sequencer.serve(path)
    link = SequencerLink(path); await link.open()                # in each worker
    log, replay, uses = RemoteAuditLog(link, ...), RemoteReplayGuard(link), RemoteUseLedger(link)

The remote objects have the same methods as the local ones, so the query path does not know
which it has. Appends from all workers meet in the sequencer's queue and are group-committed
together. Frames are a 4-byte length and JSON (bytes as {"$b": base64}): nothing is unpickled.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import itertools
import json
import logging
import os
import struct
from pathlib import Path
from typing import Any, Awaitable, Callable

from xinyi.audit.checkpoint import Checkpoint
from xinyi.audit.entry import AuditEntry
from xinyi.audit.log import AuditLog, SignedCheckpoint
from xinyi.clock import Clock
from xinyi.crypto.pki import Identity
from xinyi.errors import Refusal, StoreUnavailable, is_store_unavailable
from xinyi.query import ReplayGuard, SharedUseLedger, UseLedger, replayed_nonce
from xinyi.store import BaseStore

log = logging.getLogger("xinyi.node.sequencer")

_HEADER = struct.Struct("!I")
MAX_FRAME = 64 * 1024 * 1024
CONNECT_SECONDS = 60.0  # a worker waits this long for the sequencer to open its socket


class SequencerError(RuntimeError):
    """The sequencer failed an operation or went away; the request it served is not answered."""


# -- framing ---------------------------------------------------------------------------------
def _default(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"$b": base64.b64encode(bytes(value)).decode()}
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"cannot send {type(value).__name__} to the sequencer")


def _hook(obj: dict) -> Any:
    return base64.b64decode(obj["$b"]) if obj.keys() == {"$b"} else obj


def encode(message: dict) -> bytes:
    body = json.dumps(message, default=_default, separators=(",", ":")).encode()
    return _HEADER.pack(len(body)) + body


async def read_frame(reader: asyncio.StreamReader) -> dict | None:
    try:
        header = await reader.readexactly(_HEADER.size)
    except asyncio.IncompleteReadError:
        return None
    (length,) = _HEADER.unpack(header)
    if length > MAX_FRAME:
        raise SequencerError(f"a frame of {length} bytes is larger than {MAX_FRAME}")
    return json.loads(await reader.readexactly(length), object_hook=_hook)


def _entry(d: dict) -> AuditEntry:
    return AuditEntry(**{**d, "categories": tuple(d["categories"]), "policy_ids": tuple(d["policy_ids"])})


def _extras(items: list) -> list[tuple[str, dict]]:
    return [(table, row) for table, row in items]


def _signed(d: dict | None) -> SignedCheckpoint | None:
    if d is None:
        return None
    return SignedCheckpoint(Checkpoint(d["origin"], d["size"], d["root"]), d["note"], d["at_ms"])


def _signed_dict(s: SignedCheckpoint | None) -> dict | None:
    if s is None:
        return None
    cp = s.checkpoint
    return {"origin": cp.origin, "size": cp.size, "root": cp.root, "note": s.note, "at_ms": s.at_ms}


# -- the sequencer (one per node) --------------------------------------------------------------
class Sequencer:
    """Serves the node's audit log, replay guard and use ledger to its workers."""

    def __init__(self, audit_log: AuditLog, replay: ReplayGuard, uses: UseLedger | SharedUseLedger,
                 status: Callable[[bytes], dict]) -> None:
        self.audit_log = audit_log
        self.replay = replay
        self.uses = uses
        self.status = status  # what workers poll: consent confirmation time, the directory
        self._server: asyncio.AbstractServer | None = None
        self._ops: dict[str, Callable[..., Awaitable[Any]]] = {
            "claim_nonce": self._claim_nonce,
            "checkpoints": self._checkpoints,
            "size": self.audit_log.size,
            "index_of": self.audit_log.index_of,
            "inclusion_proofs": self.audit_log.inclusion_proofs,
            "consistency_proof": self.audit_log.consistency_proof,
            "status": self._status,
        }
        # Operations that keep track of what one worker's link holds (the uses it reserved).
        self._link_ops: dict[str, Callable[..., Awaitable[Any]]] = {
            "append": self._append,
            "reserve_use": self._reserve_use,
            "release_use": self._release_use,
        }

    async def serve(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(path.parent, 0o700)  # only the node's own user reaches the log through here
        if path.exists():
            path.unlink()  # left by a process that did not stop cleanly
        self._server = await asyncio.start_unix_server(self._connection, path=str(path), limit=MAX_FRAME)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        pending: set[asyncio.Task] = set()
        link = _Link()
        try:
            while (frame := await read_frame(reader)) is not None:
                task = asyncio.create_task(self._answer(frame, writer, link))  # concurrent: appends group-commit
                pending.add(task)
                task.add_done_callback(pending.discard)
        except (ConnectionError, SequencerError) as e:
            log.warning("a worker's link to the sequencer broke: %s", e)
        finally:
            writer.close()
            # A worker gone between reserving a use and auditing its answer answered nothing:
            # once what it sent is done, the uses it still held are given back.
            await asyncio.gather(*pending, return_exceptions=True)
            for row in link.reserved.values():
                self.uses.settle(row, answered=False)

    async def _answer(self, frame: dict, writer: asyncio.StreamWriter, link: "_Link") -> None:
        name, args = frame.get("op", ""), frame.get("args", [])
        try:
            if name in self._link_ops:
                result = await self._link_ops[name](link, *args)
            elif name in self._ops:
                result = await self._ops[name](*args)
            else:
                raise SequencerError(f"unknown operation {name!r}")
            reply = {"id": frame["id"], "ok": result}
        except Exception as e:  # noqa: BLE001 - the worker refuses its request; the reason is logged here
            log.error("sequencer %s failed: %s", frame.get("op"), e)
            reply = {"id": frame.get("id"), "error": str(e), "unavailable": is_store_unavailable(e)}
        if not writer.is_closing():
            writer.write(encode(reply))

    async def _append(self, link: "_Link", entry: dict, extras: list) -> int:
        """Append; the consent uses among the extras count only if the commit succeeds."""
        extras = _extras(extras)
        uses = [(table, row) for table, row in extras if table == "consent_uses"]
        try:
            return await self.uses.audited(uses, self.audit_log.append(_entry(entry), extras=extras))
        finally:
            for _, row in uses:
                link.reserved.pop(_use_key(row), None)

    async def _claim_nonce(self, signer: str, nonce: bytes, now_ms: int, issued_at_ms: int | None = None) -> tuple | None:
        try:
            return await self.replay.claim(signer, nonce, now_ms, issued_at_ms)
        except Refusal:
            return None  # a replay: the worker refuses it

    async def _reserve_use(self, link: "_Link", consent_id: str, request_hash: str, asker: str, now_ms: int,
                           window_start_ms: int, limit: int) -> tuple:
        allowed, used, use = await self.uses.reserve(consent_id, request_hash, asker, now_ms,
                                                     window_start_ms=window_start_ms, limit=limit)
        if use is not None:
            link.reserved[_use_key(use[1])] = use[1]
        return allowed, used, use

    async def _release_use(self, link: "_Link", row: dict) -> None:
        held = link.reserved.pop(_use_key(row), None)
        if held is not None:  # only a use this worker reserved and has not had audited
            self.uses.settle(held, answered=False)

    async def _checkpoints(self) -> list:
        latest, cosigned = await self.audit_log.checkpoints()
        return [_signed_dict(latest), _signed_dict(cosigned)]

    async def _status(self, known_digest: bytes) -> dict:
        return self.status(known_digest)


class _Link:
    """The sequencer's side of one worker's connection: the consent uses it reserved and has
    neither had audited nor released."""

    def __init__(self) -> None:
        self.reserved: dict[tuple[str, str], dict] = {}


def _use_key(row: dict) -> tuple[str, str]:
    return row["consent_id"], row["request_hash"]


# -- the workers' side ------------------------------------------------------------------------
class SequencerLink:
    """A worker's one connection to the sequencer; requests are pipelined, matched by id."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._writer: asyncio.StreamWriter | None = None
        self._pump: asyncio.Task | None = None
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future] = {}
        self.lost = asyncio.Event()  # set when the sequencer went away: the worker must stop

    async def open(self, wait_seconds: float = CONNECT_SECONDS) -> None:
        """Connect, waiting for the sequencer to open its socket (it starts after the workers)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_seconds
        while True:
            try:
                reader, self._writer = await asyncio.open_unix_connection(str(self.path), limit=MAX_FRAME)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                if loop.time() > deadline:
                    raise SequencerError(f"no sequencer at {self.path} after {wait_seconds:g} s; "
                                         "start workers with `xinyi node serve --workers N`") from None
                await asyncio.sleep(0.05)
        self._pump = asyncio.create_task(self._read_replies(reader))

    async def call(self, op: str, *args: Any) -> Any:
        return await self.send(op, *args)

    def send(self, op: str, *args: Any) -> asyncio.Future:
        """Write the request now (requests reach the sequencer in the order they are sent); the
        future holds the reply."""
        if self._pump is None or self._pump.done():
            raise StoreUnavailable("the link to the sequencer is closed; nothing is answered without the audit log")
        request_id = next(self._ids)
        done = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = done
        self._writer.write(encode({"id": request_id, "op": op, "args": list(args)}))
        return done

    async def _read_replies(self, reader: asyncio.StreamReader) -> None:
        try:
            while (frame := await read_frame(reader)) is not None:
                done = self._waiting.pop(frame["id"], None)
                if done is None or done.done():
                    continue
                if "error" in frame:
                    # The worker's caller hears UNAVAILABLE for the store's fault, INTERNAL for others.
                    failure = StoreUnavailable if frame.get("unavailable") else SequencerError
                    done.set_exception(failure(frame["error"]))
                else:
                    done.set_result(frame["ok"])
        except (ConnectionError, SequencerError) as e:
            log.error("the link to the sequencer broke: %s", e)
        finally:
            self.lost.set()
            for done in self._waiting.values():
                if not done.done():
                    done.set_exception(StoreUnavailable("the sequencer went away; nothing was answered"))
            self._waiting.clear()

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self._pump is not None:
            self._pump.cancel()


@dataclasses.dataclass
class RemoteAuditLog:
    """AuditLog's interface, served by the sequencer. `store` is the worker's own (for reads)."""

    link: SequencerLink
    store: BaseStore
    identity: Identity
    clock: Clock

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def append(self, entry: AuditEntry, *, extras: list[tuple[str, dict]] = ()) -> int:
        return await self.link.call("append", dataclasses.asdict(entry), list(extras))

    async def checkpoints(self) -> tuple[SignedCheckpoint, SignedCheckpoint | None]:
        latest, cosigned = await self.link.call("checkpoints")
        return _signed(latest), _signed(cosigned)

    async def size(self) -> int:
        return await self.link.call("size")

    async def index_of(self, leaf_hash: bytes) -> int | None:
        return await self.link.call("index_of", leaf_hash)

    async def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        (path,) = await self.inclusion_proofs([index], size)
        return path

    async def inclusion_proofs(self, indexes: list[int], size: int) -> list[list[bytes]]:
        return await self.link.call("inclusion_proofs", indexes, size)

    async def consistency_proof(self, first: int, second: int) -> list[bytes]:
        return await self.link.call("consistency_proof", first, second)


@dataclasses.dataclass
class RemoteReplayGuard:
    link: SequencerLink

    async def claim(self, signer: str, nonce: bytes, now_ms: int, issued_at_ms: int | None = None) -> tuple[str, dict]:
        row = await self.link.call("claim_nonce", signer, nonce, now_ms, issued_at_ms)
        if row is None:
            raise replayed_nonce()
        return (row[0], row[1])


@dataclasses.dataclass
class RemoteUseLedger:
    """UseLedger's interface, served by the sequencer. A use reserved here is kept or given back
    by the sequencer when the answer's audit entry (sent with the use) commits or fails, and
    given back when this worker's link breaks before that."""

    link: SequencerLink

    async def reserve(self, consent_id: str, request_hash: str, asker: str, now_ms: int, *, window_start_ms: int,
                      limit: int) -> tuple[bool, int, tuple[str, dict] | None]:
        allowed, used, use = await self.link.call("reserve_use", consent_id, request_hash, asker, now_ms,
                                                  window_start_ms, limit)
        return allowed, used, (use[0], use[1]) if use else None

    async def release(self, use: tuple[str, dict] | None) -> None:
        """Never raises: a use the sequencer did not hear back about is given back when this
        worker's link closes."""
        if use is None:
            return
        try:
            reply = self.link.send("release_use", use[1])  # sent now, even if this caller is being cancelled
        except (SequencerError, StoreUnavailable):  # the link is closed: the sequencer gave it back then
            return
        reply.add_done_callback(_log_failed_release)
        try:
            await asyncio.shield(reply)
        except SequencerError:
            pass

    async def audited(self, uses: list[tuple[str, dict]], append: Awaitable[int]) -> int:
        return await append  # the sequencer settles the uses with the append (Sequencer._append)


def _log_failed_release(reply: asyncio.Future) -> None:
    if not reply.cancelled() and reply.exception() is not None:  # given back when the link closes
        log.warning("a consent use was not given back at once: %s", reply.exception())
