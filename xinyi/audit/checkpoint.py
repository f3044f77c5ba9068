"""Signed checkpoints: C2SP signed-note, tlog-checkpoint and tlog-cosignature (cosignature/v1).

A log (a node's or the registry's audit log) periodically publishes its Merkle tree head as a
*checkpoint*, a signed note whose text is three lines:

    <origin>\\n<tree size, decimal>\\n<base64 of the 32-byte RFC 6962 root>\\n

followed by a blank line and signature lines `— <key name> base64(key id || signature)`.
Witnesses that verified the checkpoint is consistent with everything they saw before add
*cosignature* lines; clients trust a checkpoint once the log and a quorum of witnesses signed it.

Specifications followed (C2SP, https://c2sp.org):

- signed-note: text ends in a newline; one blank line; one or more signature lines (em dash
  U+2014, space, key name, space, base64, newline); valid UTF-8 without ASCII control
  characters other than newline; key names non-empty without Unicode spaces or '+';
  key id = SHA-256(key name || 0x0A || signature type || public key)[:4]; type 0x01 is an
  Ed25519 signature over the note text; signers that are not asked about are kept as parsed
  but never verified; a known key whose signature does not verify rejects the whole note.
- tlog-checkpoint: origin non-empty; size in decimal without leading zeroes (just "0" for
  the empty tree); root the standard base64 of the RFC 6962 root. Extension lines after the
  root are optional and NOT RECOMMENDED by the spec: this module ACCEPTS and KEEPS them
  (`Checkpoint.extensions`, in order, each non-empty) so that a parsed checkpoint re-serialises
  to the exact signed bytes; our own logs never write any.
- tlog-cosignature, Ed25519 "cosignature/v1": key id uses type 0x04; the signed message is
  "cosignature/v1\\ntime <timestamp>\\n" + the whole checkpoint body (extension lines
  included); the signature line payload is key id (4) || timestamp (8, big-endian) ||
  Ed25519 signature (64); timestamps are POSIX seconds, at most 2^63-1.

Strictness (a deliberate choice for an audit trail): base64 must be canonical standard
base64 with padding (re-encoding must give the same text), the size must fit an unsigned
64-bit integer, at most MAX_SIGNATURES signature lines (the spec requires accepting at
least 16; Go's sumdb/note allows 100, so do we). Anything else raises NoteError.

Keys in this API are always typed `cryptography` objects (Ed25519PrivateKey /
Ed25519PublicKey), never raw bytes. `VerifierKey` parses and prints the Go/C2SP
"name+hexid+base64(type||key)" verifier key strings used to configure witnesses.

Pure domain code: no I/O, no clock (timestamps are passed in).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass, field
from typing import Iterable

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

__all__ = [
    "ALG_COSIGNATURE_V1",
    "ALG_ED25519",
    "Checkpoint",
    "MAX_SIGNATURES",
    "NoteError",
    "NoteSignature",
    "SignedNote",
    "VerifierKey",
    "add_cosignature",
    "add_signature",
    "cosignature_key_id",
    "cosignature_timestamp",
    "key_id",
    "note_key_id",
    "parse_note",
    "sign_note",
    "sign_text",
    "split_note",
    "verify_cosignature",
    "verify_note",
    "verify_text",
]

ALG_ED25519 = 0x01
"""signed-note signature type: Ed25519 over the note text."""
ALG_COSIGNATURE_V1 = 0x04
"""signed-note signature type: timestamped Ed25519 witness cosignature (cosignature/v1)."""

EM_DASH = "\u2014"
SIG_PREFIX = EM_DASH + " "
COSIGNATURE_V1_HEADER = "cosignature/v1\n"
MAX_SIGNATURES = 100
MAX_TIMESTAMP = 2**63 - 1
MAX_TREE_SIZE = 2**64 - 1
ROOT_SIZE = 32
ED25519_SIGNATURE_SIZE = 64
KEY_ID_SIZE = 4

_SIZE_RE = re.compile(r"0|[1-9][0-9]*")
_HEX8_RE = re.compile(r"[0-9a-f]{8}")


class NoteError(ValueError):
    """A note, checkpoint or signature that is malformed or does not verify."""


# -- small helpers ----------------------------------------------------------------------------


def _b64encode(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _b64decode_strict(text: str, what: str) -> bytes:
    """Standard base64 with padding, canonical only (re-encoding gives the same text)."""
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error, ValueError) as e:
        raise NoteError(f"{what} is not valid base64: {text!r}") from e
    if _b64encode(raw) != text:
        raise NoteError(f"{what} is not canonical base64: {text!r}")
    return raw


def _has_control(text: str) -> bool:
    return any(ch < " " and ch != "\n" for ch in text)


def _check_name(name: object, what: str = "key name") -> str:
    if not isinstance(name, str):
        raise TypeError(f"{what} must be a str, got {type(name).__name__}")
    if not name:
        raise ValueError(f"{what} must not be empty")
    if "+" in name or any(ch.isspace() for ch in name) or _has_control(name):
        raise ValueError(f"{what} must not contain spaces, '+' or control characters: {name!r}")
    return name


def _raw_public(public_key: Ed25519PublicKey, what: str = "public_key") -> bytes:
    if not isinstance(public_key, Ed25519PublicKey):
        raise TypeError(f"{what} must be an Ed25519PublicKey, got {type(public_key).__name__}")
    return public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def _check_private(private_key: Ed25519PrivateKey, what: str) -> Ed25519PrivateKey:
    if not isinstance(private_key, Ed25519PrivateKey):
        raise TypeError(f"{what} must be an Ed25519PrivateKey, got {type(private_key).__name__}")
    return private_key


def _check_timestamp(timestamp: object) -> int:
    if not isinstance(timestamp, int) or isinstance(timestamp, bool):
        raise TypeError(f"timestamp must be an int, got {type(timestamp).__name__}")
    if not 0 <= timestamp <= MAX_TIMESTAMP:
        raise ValueError(f"timestamp must be between 0 and 2^63-1, got {timestamp}")
    return timestamp


def _as_text(text: str | bytes) -> str:
    if isinstance(text, (bytes, bytearray, memoryview)):
        try:
            return bytes(text).decode("utf-8")
        except UnicodeDecodeError as e:
            raise NoteError("note is not valid UTF-8") from e
    if not isinstance(text, str):
        raise TypeError(f"note text must be str or bytes, got {type(text).__name__}")
    return text


# -- key ids and verifier keys ----------------------------------------------------------------


def key_id(name: str, alg: int, public_key: Ed25519PublicKey) -> bytes:
    """SHA-256(name || 0x0A || alg || public key)[:4], the signed-note key id."""
    _check_name(name)
    if not isinstance(alg, int) or not 0 <= alg <= 0xFF:
        raise ValueError(f"alg must be a signature type byte, got {alg!r}")
    return hashlib.sha256(name.encode("utf-8") + b"\n" + bytes([alg]) + _raw_public(public_key)).digest()[:KEY_ID_SIZE]


def note_key_id(name: str, public_key: Ed25519PublicKey) -> bytes:
    """Key id of an Ed25519 note signer (type 0x01)."""
    return key_id(name, ALG_ED25519, public_key)


def cosignature_key_id(name: str, public_key: Ed25519PublicKey) -> bytes:
    """Key id of an Ed25519 cosignature/v1 witness (type 0x04)."""
    return key_id(name, ALG_COSIGNATURE_V1, public_key)


@dataclass(frozen=True)
class VerifierKey:
    """A named public key for one signature type, as in "name+hexid+base64(type || key)".

    That string form is the verifier key ("vkey") of golang.org/x/mod/sumdb/note and
    c2sp.org/signed-note; it carries its own key id, checked on parse. Only Ed25519 types
    (0x01 note signatures, 0x04 cosignature/v1) are supported.
    """

    name: str
    alg: int
    public_key: Ed25519PublicKey

    def __post_init__(self) -> None:
        _check_name(self.name)
        if self.alg not in (ALG_ED25519, ALG_COSIGNATURE_V1):
            raise ValueError(f"alg must be 0x01 (Ed25519) or 0x04 (cosignature/v1), got {self.alg!r}")
        _raw_public(self.public_key)

    @property
    def key_id(self) -> bytes:
        return key_id(self.name, self.alg, self.public_key)

    def encode(self) -> str:
        raw = bytes([self.alg]) + _raw_public(self.public_key)
        return f"{self.name}+{self.key_id.hex()}+{_b64encode(raw)}"

    __str__ = encode

    @classmethod
    def parse(cls, vkey: str) -> "VerifierKey":
        """Parse "name+hexid+base64(type||key)"; NoteError if malformed or the id mismatches."""
        if not isinstance(vkey, str):
            raise TypeError(f"vkey must be a str, got {type(vkey).__name__}")
        parts = vkey.split("+", 2)  # names hold no '+'; the base64 may
        if len(parts) != 3:
            raise NoteError(f"verifier key must be name+keyid+key: {vkey!r}")
        name, hex_id, key64 = parts
        try:
            _check_name(name)
        except ValueError as e:
            raise NoteError(f"verifier key has an invalid name: {e}") from e
        if not _HEX8_RE.fullmatch(hex_id):
            raise NoteError(f"verifier key id must be 8 lowercase hex digits: {hex_id!r}")
        raw = _b64decode_strict(key64, "verifier key")
        if len(raw) != 1 + 32 or raw[0] not in (ALG_ED25519, ALG_COSIGNATURE_V1):
            raise NoteError(f"verifier key must be type 0x01 or 0x04 and a 32-byte Ed25519 key: {vkey!r}")
        try:
            public_key = Ed25519PublicKey.from_public_bytes(raw[1:])
        except ValueError as e:  # a back end that checks the point (cryptography checks only the length)
            raise NoteError(f"verifier key holds an invalid Ed25519 key: {vkey!r}") from e
        out = cls(name, raw[0], public_key)
        if out.key_id.hex() != hex_id:
            raise NoteError(f"verifier key id {hex_id} does not match its key (computed {out.key_id.hex()})")
        return out


# -- checkpoint bodies ------------------------------------------------------------------------


@dataclass(frozen=True)
class Checkpoint:
    """A tlog-checkpoint note body: origin, tree size, RFC 6962 root (+ extension lines).

    `extensions` are kept verbatim, in order (see the module docstring); they are empty for
    every checkpoint our own logs produce.
    """

    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if not isinstance(self.origin, str):
            raise TypeError(f"origin must be a str, got {type(self.origin).__name__}")
        if not self.origin or "\n" in self.origin or _has_control(self.origin):
            raise ValueError(f"origin must be a non-empty line without control characters: {self.origin!r}")
        if not isinstance(self.size, int) or isinstance(self.size, bool):
            raise TypeError(f"size must be an int, got {type(self.size).__name__}")
        if not 0 <= self.size <= MAX_TREE_SIZE:
            raise ValueError(f"size must be between 0 and 2^64-1, got {self.size}")
        if not isinstance(self.root, (bytes, bytearray, memoryview)):
            raise TypeError(f"root must be bytes, got {type(self.root).__name__}")
        object.__setattr__(self, "root", bytes(self.root))
        if len(self.root) != ROOT_SIZE:
            raise ValueError(f"root must be {ROOT_SIZE} bytes, got {len(self.root)}")
        extensions = tuple(self.extensions)
        for line in extensions:
            if not isinstance(line, str) or not line or "\n" in line or _has_control(line):
                raise ValueError(f"extension lines must be non-empty lines without control characters: {line!r}")
        object.__setattr__(self, "extensions", extensions)

    def body(self) -> str:
        """The note text: "origin\\nsize\\nbase64(root)\\n" plus any extension lines."""
        lines = [self.origin, str(self.size), _b64encode(self.root), *self.extensions]
        return "".join(line + "\n" for line in lines)

    @classmethod
    def parse(cls, body_text: str) -> "Checkpoint":
        """Parse a checkpoint body strictly; NoteError says what is wrong.

        Exactly: origin line, size line, root line, then zero or more non-empty extension
        lines, every line newline-terminated, nothing else.
        """
        if not isinstance(body_text, str):
            raise TypeError(f"body_text must be a str, got {type(body_text).__name__}")
        if not body_text.endswith("\n"):
            raise NoteError("checkpoint body must end with a newline")
        if _has_control(body_text):
            raise NoteError("checkpoint body must not contain control characters other than newline")
        lines = body_text[:-1].split("\n")
        if len(lines) < 3:
            raise NoteError(f"checkpoint body must have at least 3 lines, got {len(lines)}")
        origin, size_text, root_text, *extensions = lines
        if not origin:
            raise NoteError("checkpoint origin line is empty")
        if not _SIZE_RE.fullmatch(size_text):
            raise NoteError(f"checkpoint size must be decimal without leading zeroes: {size_text!r}")
        size = int(size_text)
        if size > MAX_TREE_SIZE:
            raise NoteError(f"checkpoint size does not fit 64 bits: {size_text}")
        root = _b64decode_strict(root_text, "checkpoint root")
        if len(root) != ROOT_SIZE:
            raise NoteError(f"checkpoint root must be {ROOT_SIZE} bytes, got {len(root)}")
        if any(not line for line in extensions):
            raise NoteError("checkpoint extension lines must not be empty")
        return cls(origin, size, root, tuple(extensions))


# -- signed notes -----------------------------------------------------------------------------


@dataclass(frozen=True)
class NoteSignature:
    """One signature line: key name, 4-byte key id, and the rest of the decoded base64.

    `payload` is the Ed25519 signature (64 bytes) for type 0x01, or timestamp (8) ||
    signature (64) for cosignature/v1; for other signers it is whatever they put there.
    """

    name: str
    key_id: bytes
    payload: bytes

    def line(self) -> str:
        return f"{SIG_PREFIX}{self.name} {_b64encode(self.key_id + self.payload)}\n"

    @classmethod
    def parse_line(cls, line: str) -> "NoteSignature":
        """Parse one signature line, with or without its final newline."""
        if line.endswith("\n"):
            line = line[:-1]
        if not line.startswith(SIG_PREFIX):
            raise NoteError(f"signature line must start with an em dash and a space: {line!r}")
        name, sep, sig64 = line[len(SIG_PREFIX):].partition(" ")
        if not sep:
            raise NoteError(f"signature line must be '— <name> <base64>': {line!r}")
        try:
            _check_name(name)
        except ValueError as e:
            raise NoteError(f"signature line has an invalid key name: {e}") from e
        raw = _b64decode_strict(sig64, f"signature of {name}")
        if len(raw) <= KEY_ID_SIZE:
            raise NoteError(f"signature of {name} is too short ({len(raw)} bytes)")
        return cls(name, raw[:KEY_ID_SIZE], raw[KEY_ID_SIZE:])


@dataclass
class SignedNote:
    """A parsed checkpoint note. `text` is the whole note, `body` the signed text."""

    checkpoint: Checkpoint
    text: str
    body: str
    signatures: list[NoteSignature]


def split_note(text: str | bytes) -> tuple[str, list[NoteSignature]]:
    """Split any signed note into its text and its signature lines, strictly, verifying nothing.

    The text ends at the last blank line; after it every line must be a signature line, and
    there must be at least one.
    """
    text = _as_text(text)
    if _has_control(text):
        raise NoteError("note must not contain control characters other than newline")
    if not text.endswith("\n"):
        raise NoteError("note must end with a newline")
    split = text.rfind("\n\n")
    if split < 0:
        raise NoteError("note has no blank line before its signatures")
    body, sig_block = text[:split + 1], text[split + 2:]
    if not sig_block:
        raise NoteError("note has no signature lines")
    lines = sig_block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise NoteError(f"note has {len(lines)} signature lines, more than {MAX_SIGNATURES}")
    return body, [NoteSignature.parse_line(line) for line in lines]


def parse_note(text: str | bytes) -> SignedNote:
    """Parse a signed checkpoint note strictly. Signatures are kept, none is verified."""
    text = _as_text(text)
    body, signatures = split_note(text)
    return SignedNote(Checkpoint.parse(body), text, body, signatures)


def _ed25519_line(body: str, name: str, private_key: Ed25519PrivateKey) -> NoteSignature:
    _check_name(name)
    _check_private(private_key, "private_key")
    kid = note_key_id(name, private_key.public_key())
    return NoteSignature(name, kid, private_key.sign(body.encode("utf-8")))


def _check_body(body: str) -> None:
    if not isinstance(body, str):
        raise TypeError(f"note text must be a str, got {type(body).__name__}")
    if not body.endswith("\n") or _has_control(body):
        raise ValueError("note text must end with a newline and hold no control characters other than newline")


def sign_text(body: str, name: str, private_key: Ed25519PrivateKey) -> str:
    """Sign any note text with Ed25519 (type 0x01); returns the full note."""
    _check_body(body)
    return body + "\n" + _ed25519_line(body, name, private_key).line()


def sign_note(checkpoint: Checkpoint, name: str, private_key: Ed25519PrivateKey) -> str:
    """The signed checkpoint note: body, blank line, "— name base64(keyid || sig)\\n"."""
    if not isinstance(checkpoint, Checkpoint):
        raise TypeError(f"checkpoint must be a Checkpoint, got {type(checkpoint).__name__}")
    return sign_text(checkpoint.body(), name, private_key)


def _replace_line(note_text: str, new: NoteSignature) -> str:
    """Re-serialise a note with `new` appended, dropping earlier lines from the same key."""
    body, sigs = split_note(note_text)
    kept = [s for s in sigs if not (s.name == new.name and s.key_id == new.key_id)]
    if len(kept) + 1 > MAX_SIGNATURES:
        raise NoteError(f"note would have more than {MAX_SIGNATURES} signatures")
    return body + "\n" + "".join(s.line() for s in kept) + new.line()


def add_signature(note_text: str, name: str, private_key: Ed25519PrivateKey) -> str:
    """Add (or replace) an Ed25519 note signature, e.g. a second log key during rotation."""
    body, _ = split_note(note_text)
    return _replace_line(_as_text(note_text), _ed25519_line(body, name, private_key))


def _cosigned_message(body: str, timestamp: int) -> bytes:
    return f"{COSIGNATURE_V1_HEADER}time {timestamp}\n{body}".encode("utf-8")


def add_cosignature(note_text: str, witness_name: str, witness_key: Ed25519PrivateKey, timestamp: int) -> str:
    """Append a cosignature/v1 line by `witness_name` to a checkpoint note.

    Signs "cosignature/v1\\ntime <timestamp>\\n" + body; the line payload is key id (4) ||
    timestamp (8, big-endian) || signature (64). An earlier cosignature by the same witness
    key is replaced. This only signs: a witness must first check the log's signature
    (verify_note) and consistency with the last checkpoint it cosigned.
    """
    _check_name(witness_name, "witness_name")
    _check_private(witness_key, "witness_key")
    _check_timestamp(timestamp)
    note = parse_note(note_text)
    kid = cosignature_key_id(witness_name, witness_key.public_key())
    signature = witness_key.sign(_cosigned_message(note.body, timestamp))
    line = NoteSignature(witness_name, kid, timestamp.to_bytes(8, "big") + signature)
    return _replace_line(note.text, line)


def cosignature_timestamp(signature: NoteSignature) -> int:
    """The timestamp a cosignature/v1 line carries (not verified). NoteError if malformed."""
    if len(signature.payload) != 8 + ED25519_SIGNATURE_SIZE:
        raise NoteError(f"signature of {signature.name} is not a cosignature/v1 (payload {len(signature.payload)} bytes)")
    timestamp = int.from_bytes(signature.payload[:8], "big")
    if timestamp > MAX_TIMESTAMP:
        raise NoteError(f"cosignature of {signature.name} has a timestamp beyond 2^63-1")
    return timestamp


# -- verification -----------------------------------------------------------------------------


def _ed25519_ok(public_key: Ed25519PublicKey, signature: bytes, message: bytes) -> bool:
    if len(signature) != ED25519_SIGNATURE_SIZE:
        return False
    try:
        public_key.verify(signature, message)
    except InvalidSignature:
        return False
    return True


def _pick_key(sigs: list[NoteSignature], name: str, keys, key_id_of) -> Ed25519PublicKey:
    """A signer's keys, current and replaced (a rotation): the one whose key id a line of the
    note carries, else the first (whose absence the caller reports)."""
    if isinstance(keys, Ed25519PublicKey):
        return keys
    keys = list(keys)
    if not keys:
        raise NoteError(f"no key known for {name}")
    for key in keys:
        kid = key_id_of(name, key)
        if any(s.name == name and s.key_id == kid for s in sigs):
            return key
    return keys[0]


def _verify_body(body: str, sigs: list[NoteSignature], name: str, public_key) -> None:
    _check_name(name)
    public_key = _pick_key(sigs, name, public_key, note_key_id)
    kid = note_key_id(name, public_key)
    matching = [s for s in sigs if s.name == name and s.key_id == kid]
    if not matching:
        raise NoteError(f"note has no signature by {name}+{kid.hex()}")
    message = body.encode("utf-8")
    for s in matching:
        if not _ed25519_ok(public_key, s.payload, message):
            raise NoteError(f"invalid signature for key {name}+{kid.hex()}")


def verify_text(text: str | bytes, name: str, public_key: Ed25519PublicKey) -> str:
    """Verify any signed note's Ed25519 signature by name/key; return the note text."""
    body, sigs = split_note(text)
    _verify_body(body, sigs, name, public_key)
    return body


def verify_note(text: str | bytes, name: str, public_key: Ed25519PublicKey | Iterable[Ed25519PublicKey]) -> Checkpoint:
    """Verify a checkpoint note's Ed25519 signature by `name`/`public_key`; return the checkpoint.
    `public_key` may be the signer's keys over time (its key history): the key id picks one.

    NoteError if the note is malformed, carries no signature line for that name and key id,
    or carries one that does not verify (a bad signature from a known key rejects the note,
    as signed-note recommends). Lines from other signers are ignored.
    """
    note = parse_note(text)
    _verify_body(note.body, note.signatures, name, public_key)
    return note.checkpoint


def verify_cosignature(text: str | bytes, witness_name: str,
                       witness_public_key: Ed25519PublicKey | Iterable[Ed25519PublicKey],
                       *, not_after: int | None = None) -> int:
    """Verify a cosignature/v1 by `witness_name`/`witness_public_key`; return its timestamp.
    `witness_public_key` may be the witness's keys over time: the key id picks one.

    NoteError if there is none, if one does not verify, or (when `not_after` is given) if
    its timestamp is later than `not_after` (spec: verifiers MAY reject future timestamps).
    With several valid lines from the same key, the latest timestamp is returned. This does
    not check the log's own signature: use verify_note for that.
    """
    note = parse_note(text)
    _check_name(witness_name, "witness_name")
    witness_public_key = _pick_key(note.signatures, witness_name, witness_public_key, cosignature_key_id)
    kid = cosignature_key_id(witness_name, witness_public_key)
    matching = [s for s in note.signatures if s.name == witness_name and s.key_id == kid]
    if not matching:
        raise NoteError(f"note has no cosignature by {witness_name}+{kid.hex()}")
    latest = -1
    for s in matching:
        timestamp = cosignature_timestamp(s)
        if not _ed25519_ok(witness_public_key, s.payload[8:], _cosigned_message(note.body, timestamp)):
            raise NoteError(f"invalid cosignature for key {witness_name}+{kid.hex()}")
        if not_after is not None and timestamp > not_after:
            raise NoteError(f"cosignature by {witness_name} is dated {timestamp}, after {not_after}")
        latest = max(latest, timestamp)
    return latest
