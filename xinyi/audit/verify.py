"""Checking an audit log without trusting its operator: the auditor's verifier.

Given a log's signed checkpoint, its entries and what this auditor verified before, it
recomputes every hash and reports the first entry that was edited, removed or moved:

- each entry carries the Merkle root of the entries before it (prev_root): recomputing the
  roots as it goes, the verifier finds the first entry whose history does not match;
- the recomputed root must equal the signed checkpoint's root;
- the checkpoint must extend the one this auditor saw last (same prefix, never smaller), so
  a rewritten or truncated history is caught even when the chain was rewritten with it.

Pure code: the CLI fetches entries online (`xinyi audit verify`) or reads an exported archive
(`xinyi audit verify --offline DIR`).
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from google.protobuf.message import DecodeError

from xinyi.audit import merkle
from xinyi.audit.checkpoint import Checkpoint, NoteError, verify_note
from xinyi.v1 import audit_pb2


def verify_checkpoint(note: str, origin: str, key: Ed25519PublicKey | Iterable[Ed25519PublicKey]) -> Checkpoint:
    """A log's checkpoint as the log `origin` (xinyi/<node or registry id>) signed it: a valid
    signature under the key name `origin`, and `origin` on its first line too (signed-note does
    not tie the two; a checkpoint of another log is refused). NoteError says which failed."""
    checkpoint = verify_note(note, origin, key)
    if checkpoint.origin != origin:
        raise NoteError(f"checkpoint is of log {checkpoint.origin!r}, not {origin!r}")
    return checkpoint


@dataclass
class AuditorState:
    """What an auditor remembers of one log: the last verified checkpoint and its leaf hashes."""

    origin: str
    size: int
    root: bytes
    note: str
    leaf_hashes: list[bytes] = field(default_factory=list)

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"origin": self.origin, "size": self.size,
                                    "root": base64.b64encode(self.root).decode(), "note": self.note}, indent=1))
        path.with_suffix(".leaves").write_bytes(b"".join(self.leaf_hashes))

    @classmethod
    def load(cls, path: Path) -> "AuditorState | None":
        if not path.exists():
            return None
        data = json.loads(path.read_text())
        raw = path.with_suffix(".leaves").read_bytes() if path.with_suffix(".leaves").exists() else b""
        hashes = [raw[i:i + 32] for i in range(0, len(raw), 32)]
        return cls(data["origin"], data["size"], base64.b64decode(data["root"]), data["note"], hashes)


@dataclass
class VerifyReport:
    origin: str
    size: int = 0
    root: bytes = b""
    entries_checked: int = 0
    first_bad_index: int | None = None
    problems: list[str] = field(default_factory=list)
    previous_size: int | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    def fail(self, message: str, index: int | None = None) -> None:
        if index is not None and (self.first_bad_index is None or index < self.first_bad_index):
            self.first_bad_index = index
        self.problems.append(message)

    def to_json(self) -> dict:
        return {"origin": self.origin, "ok": self.ok, "tree_size": self.size,
                "sha256_root_hash": base64.b64encode(self.root).decode(), "entries_checked": self.entries_checked,
                "first_bad_index": self.first_bad_index, "previous_size": self.previous_size, "problems": self.problems}


def verify_log(
    note: str,
    origin: str,
    key: Ed25519PublicKey | list[Ed25519PublicKey],
    entries: Iterable[tuple[int, bytes]],
    previous: AuditorState | None = None,
) -> tuple[VerifyReport, AuditorState | None]:
    """Verify a log against its signed checkpoint and this auditor's previous state.

    `entries` yields (index, leaf_input) for indexes 0..size-1 as served. Returns the report
    and, when everything verified, the state to remember.
    """
    report = VerifyReport(origin)
    try:
        checkpoint = verify_checkpoint(note, origin, key)
    except NoteError as e:
        report.fail(f"checkpoint: {e}")
        return report, None
    report.size, report.root = checkpoint.size, checkpoint.root

    tracker = merkle.RootTracker()
    hashes: list[bytes] = []
    previous_root_seen: bytes | None = None
    for position, (index, leaf_input) in enumerate(entries):
        if position >= checkpoint.size:
            break
        if previous is not None and position == previous.size:
            previous_root_seen = tracker.root()
        if index != position:
            report.fail(f"entry {position}: the log served index {index} in its place; an entry was removed or moved", position)
            break
        try:
            record = audit_pb2.AuditRecord.FromString(leaf_input)
        except DecodeError:
            report.fail(f"entry {position}: not a valid audit record", position)
            break
        if record.index != position:
            report.fail(f"entry {position}: holds the record of entry {record.index}; an entry was removed or moved", position)
            break
        if record.prev_root != tracker.root():
            report.fail(f"entry {position - 1}: altered (entry {position} chains to another history)", position - 1)
            break
        leaf = merkle.leaf_hash(leaf_input)
        if previous is not None and position < len(previous.leaf_hashes) and previous.leaf_hashes[position] != leaf:
            report.fail(f"entry {position}: differs from what this auditor verified before", position)
            break
        tracker.append(leaf)
        hashes.append(leaf)
    report.entries_checked = len(hashes)
    if report.ok and len(hashes) < checkpoint.size:
        report.fail(f"entry {len(hashes)}: missing; the checkpoint signs {checkpoint.size} entries but only "
                    f"{len(hashes)} were served", len(hashes))
    if report.ok and tracker.root() != checkpoint.root:
        report.fail(f"entry {checkpoint.size - 1}: the entries do not hash to the signed root; the last entry was altered "
                    "or the log was rewritten", checkpoint.size - 1)
    if previous is not None:
        report.previous_size = previous.size
        if checkpoint.size < previous.size:
            report.fail(f"log truncated: the checkpoint signs {checkpoint.size} entries, this auditor verified "
                        f"{previous.size} before", checkpoint.size)
        elif report.ok:
            if previous.size == checkpoint.size:
                previous_root_seen = tracker.root()
            if previous_root_seen != previous.root:
                report.fail(f"history rewritten: the first {previous.size} entries no longer hash to the root this "
                            "auditor verified", 0)
    if not report.ok:
        return report, None
    return report, AuditorState(origin, checkpoint.size, checkpoint.root, note, hashes)
