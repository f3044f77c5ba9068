"""Checking an audit log without trusting its operator: the auditor's verifier.

Given a log's signed checkpoint, its entries and what this auditor verified before, it
recomputes every hash and reports the first entry that was edited, removed or moved:

- each entry carries the Merkle root of the entries before it (prev_root): recomputing the
  roots as it goes, the verifier finds the first entry whose history does not match;
- the checkpoint's signing key must still count: a key whose certificate was revoked (or
  expired) signs no checkpoint accepted unless a witness cosigned it before then (LogKeys);
- the recomputed root must equal the signed checkpoint's root;
- the checkpoint must extend the one this auditor saw last (same prefix, never smaller), so
  a rewritten or truncated history is caught even when the chain was rewritten with it.

Pure code: the CLI fetches entries online (`xinyi audit verify`) or reads an exported archive
(`xinyi audit verify --offline DIR`).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from google.protobuf.message import DecodeError

from xinyi.audit import merkle
from xinyi.audit.checkpoint import Checkpoint, NoteError, note_key_id, parse_note, verify_cosignature, verify_note
from xinyi.crypto.pki import CertificateRevoked, PKIError, TrustAnchor
from xinyi.v1 import audit_pb2


@dataclass(frozen=True)
class LogKeys:
    """What a log's checkpoints are checked against, from the registry-signed directory: the
    log owner's signing certificates (current first, then the ones it replaced), the trust
    anchor that verified the directory (it holds the directory's revocation lists), the witness
    (the registry) whose cosignature dates a checkpoint, and the time to check as of (None: now;
    an archived directory's issue time for an archive)."""

    certs: tuple[x509.Certificate, ...]
    trust: TrustAnchor | None = None
    witness: str = ""
    witness_certs: tuple[x509.Certificate, ...] = ()
    at: dt.datetime | None = None

    @classmethod
    def of(cls, directory, origin: str) -> "LogKeys":
        """The keys of log `origin` (xinyi/<node or registry id>) in a verified Directory; none
        for an owner it does not list."""
        owner = origin.removeprefix("xinyi/")
        ders = directory.registry_certs() if owner == directory.registry_id else directory.node_keys(owner)
        load = x509.load_der_x509_certificate
        return cls(tuple(load(d) for d in ders), directory.trust, f"xinyi/{directory.registry_id}",
                   tuple(load(d) for d in directory.registry_certs()), directory.as_of)

    @property
    def public_keys(self) -> list[Ed25519PublicKey]:
        return [c.public_key() for c in self.certs]


def _utc(moment: dt.datetime) -> str:
    return f"{moment:%Y-%m-%d %H:%M:%S} UTC"


def _cosigned_at(note: str, keys: LogKeys, at: dt.datetime) -> int | None:
    """The time a valid witness cosignature on `note` carries, when the witness's certificate
    was in force then, is not revoked as of `at` (a revoked witness key, leaked perhaps, could
    date a cosignature at any time before its revocation: its dates are worth nothing), and the
    time is not later than `at`; None when there is no such cosignature."""
    dates = []
    for cert in keys.witness_certs:
        try:
            timestamp = verify_cosignature(note, keys.witness, cert.public_key(), not_after=int(at.timestamp()))
            keys.trust.check_in_force(cert, at=dt.datetime.fromtimestamp(timestamp, dt.timezone.utc))
        except (NoteError, PKIError):
            continue
        if _revoked_by(keys.trust, cert, at):
            continue
        dates.append(timestamp)
    return min(dates) if dates else None


def _revoked_by(trust: TrustAnchor, cert: x509.Certificate, at: dt.datetime) -> bool:
    """Whether `cert` or its issuing CA is revoked as of `at` (whatever its validity then)."""
    issuer = trust.issuer_cert(cert)
    path = (cert,) if issuer is None or issuer is trust.root else (cert, issuer)
    return any(trust.revocations.revoked(c, at=at) is not None for c in path)


def check_log_signer(note: str, origin: str, keys: LogKeys) -> None:
    """The log key that signed `note` must still count (NoteError says why not).

    A checkpoint carries no time of its own, so a checkpoint signed with a key whose certificate
    has since been revoked (or whose issuing CA was, or which is outside its validity window)
    may have been made after that, by whoever holds the leaked key. It is accepted only when a
    witness cosignature on it is dated while the certificate was in force: the revocation
    lists are those the signed directory carries (learned by its trust anchor), checked as in
    TrustAnchor.check_in_force. A key in force now (the current one, or one it replaced that
    was neither revoked nor expired) needs no cosignature, as before."""
    if keys.trust is None:  # a Directory made in code, not verified against a root
        return
    at = keys.at or dt.datetime.now(dt.timezone.utc)
    signatures = parse_note(note).signatures
    signers = [c for c in keys.certs
               if any(s.name == origin and s.key_id == note_key_id(origin, c.public_key()) for s in signatures)]
    refused: list[tuple[x509.Certificate, PKIError]] = []
    for cert in signers:
        verify_note(note, origin, cert.public_key())  # each listed key's lines must verify
        try:
            keys.trust.check_in_force(cert, at=at, what="signing certificate")
            return
        except PKIError as e:
            refused.append((cert, e))
    if not refused:
        return  # verify_note already found no line by a listed key
    when = _cosigned_at(note, keys, at)
    if when is not None:
        moment = dt.datetime.fromtimestamp(when, dt.timezone.utc)
        for cert, _ in refused:
            try:
                keys.trust.check_in_force(cert, at=moment, what="signing certificate")
                return
            except PKIError:
                continue
    cert, e = refused[0]
    kid = note_key_id(origin, cert.public_key()).hex()
    dated = (f" (the witness cosigned it at {_utc(dt.datetime.fromtimestamp(when, dt.timezone.utc))})"
             if when is not None else " (it carries no valid witness cosignature)")
    if isinstance(e, CertificateRevoked) and e.revoked is not None:
        whose = "whose issuing CA's certificate" if e.issuing_ca else "whose certificate"
        raise NoteError(f"checkpoint signed by key {kid} of {origin}, {whose} (serial {e.revoked.serial:x}) was revoked "
                        f"at {_utc(e.revoked.at)} ({e.revoked.reason}); only checkpoints a witness cosigned before then "
                        f"are accepted{dated}")
    raise NoteError(f"checkpoint signed by key {kid} of {origin}, whose certificate is not in force: {e}; only "
                    f"checkpoints a witness cosigned while it was are accepted{dated}")


def verify_checkpoint(note: str, origin: str,
                      key: LogKeys | Ed25519PublicKey | Iterable[Ed25519PublicKey]) -> Checkpoint:
    """A log's checkpoint as the log `origin` (xinyi/<node or registry id>) signed it: a valid
    signature under the key name `origin`, and `origin` on its first line too (signed-note does
    not tie the two; a checkpoint of another log is refused). With LogKeys (the directory's), the
    signing key's certificate must also still count (check_log_signer). NoteError says which
    failed."""
    checkpoint = verify_note(note, origin, key.public_keys if isinstance(key, LogKeys) else key)
    if checkpoint.origin != origin:
        raise NoteError(f"checkpoint is of log {checkpoint.origin!r}, not {origin!r}")
    if isinstance(key, LogKeys):
        check_log_signer(note, origin, key)
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
    key: LogKeys | Ed25519PublicKey | list[Ed25519PublicKey],
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
        if record.prev_root != tracker.root() and position == 0:
            report.fail("entry 0: altered (it does not chain to the empty log)", 0)
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
