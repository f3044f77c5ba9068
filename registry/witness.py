"""The registry as witness of every node's audit log (C2SP tlog-witness style).

A node submits each new checkpoint with a consistency proof from the last one this witness
cosigned. The witness cosigns only if the new checkpoint extends that history; a checkpoint of
the same size with another root, a smaller one, or one whose proof fails is refused, and the
refusal carries both checkpoints: the proof that the node tried to show two histories.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from dataclasses import dataclass, replace

from registry.directory import NetworkDirectory
from registry.store import RegistryStore
from xinyi.audit import merkle
from xinyi.audit.checkpoint import NoteError, add_cosignature, parse_note, verify_note
from xinyi.audit.entry import AuditEntry
from xinyi.audit.log import AuditLog, origin_of
from xinyi.audit.verify import LogKeys, check_log_signer
from xinyi.clock import Clock
from xinyi.crypto.identity import Principal, Role
from xinyi.crypto.pki import Identity
from xinyi.errors import Kind, Refusal, quoted
from xinyi.policy import Action, Authorizer, Resource


# How often a witness decides again when other replicas moved a log's cosigned state meanwhile.
WITNESS_TRIES = 5


def witness_name(identity: Identity) -> str:
    return origin_of(identity)


@dataclass
class Witness:
    identity: Identity
    directory: NetworkDirectory
    store: RegistryStore
    authorizer: Authorizer
    audit_log: AuditLog
    clock: Clock

    def __post_init__(self) -> None:
        self.name = witness_name(self.identity)
        # One decision at a time in this replica; between replicas the store's compare-and-set.
        self._lock = asyncio.Lock()

    async def add_checkpoint(self, caller: Principal, note: str, old_size: int, proof: list[bytes]) -> str:
        """Return the cosignature line for `note`, or raise a Refusal saying why not."""
        try:
            decision = self.authorizer.decide(caller, Action.SUBMIT_CHECKPOINT, Resource.network())
            if not decision.allowed:
                raise Refusal.denied("POLICY_DENIED", decision.reason, policy_ids=decision.policy_ids)
            checkpoint = self._verify(caller, note)
            async with self._lock:
                await self._advance(checkpoint, note, old_size, proof)
                cosigned = add_cosignature(note, self.name, self.identity.signing_key, self.clock() // 1000)
        except Refusal as r:
            # Refusals are security events and go to the registry's log; routine cosignings do not.
            await self.audit_log.append(AuditEntry.of(self.clock(), caller, str(Action.SUBMIT_CHECKPOINT), r, allowed="",
                                                      detail=note.split("\n\n")[0].replace("\n", " ")))
            raise
        return cosigned[len(note):]

    async def _advance(self, checkpoint, note: str, old_size: int, proof: list[bytes]) -> None:
        """Record `checkpoint` as the log's last cosigned one if it extends the one stored. The
        store's compare-and-set decides between replicas asked at once: the one that loses
        reads the winner's and decides again (usually refusing a fork)."""
        for _ in range(WITNESS_TRIES):
            last = await asyncio.to_thread(self.store.witnessed, checkpoint.origin)
            self._check_history(checkpoint, last, old_size, proof)
            if await asyncio.to_thread(self.store.advance_witnessed, checkpoint.origin, last, checkpoint.size,
                                       checkpoint.root, note, self.clock()):
                return
        raise Refusal(Kind.UNAVAILABLE, "WITNESS_BUSY",
                      f"checkpoint: the cosigned state of {checkpoint.origin} kept changing while this one was "
                      f"decided ({WITNESS_TRIES} tries); submit it again")

    def _verify(self, caller: Principal, note: str):
        if caller.role is not Role.NODE:
            raise Refusal.denied("POLICY_DENIED", "only nodes submit checkpoints")
        entry = self.directory.current.nodes.get(caller.id)
        if entry is None:
            raise Refusal(Kind.PRECONDITION, "NODE_NOT_REGISTERED", f"checkpoint: node {caller.id} is not in the directory; register first")
        origin = f"xinyi/{caller.id}"
        keys = LogKeys.of(self.directory.current, origin)
        try:
            checkpoint = parse_note(note).checkpoint
        except NoteError as e:
            raise Refusal.invalid("checkpoint", f"is not a signed checkpoint note: {e}")
        if checkpoint.origin != origin:
            raise Refusal.denied("NOT_YOUR_LOG", f"checkpoint: origin {quoted(checkpoint.origin)} is not {origin!r}; a node submits only its own log",
                                 field_name="checkpoint")
        try:
            checkpoint = verify_note(note, origin, keys.public_keys)  # its current key or one it replaced: the key id picks
        except NoteError as e:
            raise Refusal.unauthenticated("checkpoint", f"signature does not verify with node {caller.id}'s key: {e}",
                                          "BAD_CHECKPOINT_SIGNATURE")
        try:
            # A key whose certificate is revoked or expired signs nothing this witness cosigns.
            check_log_signer(note, origin, replace(keys, at=dt.datetime.fromtimestamp(self.clock() / 1000, dt.timezone.utc),
                                                   witness_certs=()))
        except NoteError as e:
            raise Refusal.unauthenticated("checkpoint", str(e), "BAD_CHECKPOINT_SIGNATURE")
        return checkpoint

    @staticmethod
    def _check_history(checkpoint, last, old_size: int, proof: list[bytes]) -> None:
        if last is None:
            if old_size != 0:
                raise _conflict("OLD_SIZE_MISMATCH", f"old_size: this witness has cosigned nothing for {checkpoint.origin}; send 0", 0)
            return
        last_size, last_root, last_note = last
        if checkpoint.size < last_size:
            raise _conflict("ROLLBACK", f"checkpoint: size {checkpoint.size} is smaller than the cosigned size {last_size}",
                            last_size, last_note)
        if checkpoint.size == last_size:
            if checkpoint.root != last_root:
                raise _conflict("CONFLICTING_CHECKPOINT",
                                f"checkpoint: size {last_size} was cosigned with another root; the log shows two histories",
                                last_size, last_note)
            return
        if old_size != last_size:
            raise _conflict("OLD_SIZE_MISMATCH", f"old_size: {old_size} is not the last cosigned size {last_size}", last_size)
        if not merkle.verify_consistency(last_size, checkpoint.size, last_root, checkpoint.root, proof):
            raise _conflict("INCONSISTENT_CHECKPOINT",
                            f"consistency: the proof from size {last_size} to {checkpoint.size} does not verify; "
                            "the new checkpoint does not extend the cosigned history", last_size, last_note)


def _conflict(reason: str, message: str, last_size: int, last_note: str = "") -> Refusal:
    metadata = {"last_size": str(last_size)}
    if last_note:
        metadata["cosigned_checkpoint"] = last_note
    return Refusal(Kind.PRECONDITION, reason, message, metadata=metadata)
