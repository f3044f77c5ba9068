"""C2SP signed-note / tlog-checkpoint / tlog-cosignature: formats, published vectors, forgeries.

Published vectors used here, verbatim:

- golang.org/x/mod sumdb/note (github.com/golang/mod, sumdb/note/note_test.go, TestSign and
  TestOpen): the PeterNeumann signer key "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEK..." and
  verifier key "PeterNeumann+c74f20a3+ARpc...", the EnochRoot verifier key and signature, the
  exact signed note, and the malformed-message list.
- transparency-dev/formats (github.com/transparency-dev/formats, note/note_cosigv1_test.go):
  the verifier keys "TEST+7997405c+AQcC+..." (type 0x01, '+' inside the base64) and
  "remora.n621.de+da77ade7+BOvN..." (type 0x04, cosignature/v1), and the cosignature
  timestamp vectors of TestCosignatureTimestamp.
- C2SP (github.com/C2SP/C2SP, tlog-cosignature.md): the example checkpoint with a
  witness.example.com/w1 cosignature dated 1679315147, the time in the spec's message example.
- florolf/tlog-scales (tests/test_signing.py): a real checkpoint of the
  arche2025h1.staging.ct.transparency.dev log with its Ed25519 log signature and five witness
  cosignatures, and the verifier keys of the log (ba2f06c0) and of remora.n621.de; plus the
  c2sp.org/signed-note example key example.com/foo+530d903a and its signed message.
"""

from __future__ import annotations

import base64
import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from xinyi.audit.checkpoint import (
    ALG_COSIGNATURE_V1,
    ALG_ED25519,
    MAX_SIGNATURES,
    Checkpoint,
    NoteError,
    NoteSignature,
    VerifierKey,
    add_cosignature,
    add_signature,
    cosignature_key_id,
    cosignature_timestamp,
    key_id,
    note_key_id,
    parse_note,
    sign_note,
    sign_text,
    split_note,
    verify_cosignature,
    verify_note,
    verify_text,
)
from xinyi.audit.merkle import MerkleTree, leaf_hash

EM = "\u2014"

# -- golang.org/x/mod/sumdb/note/note_test.go ----------------------------------------------

PETER_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
PETER_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
ENOCH_VKEY = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop"
GO_TEXT = ("If you think cryptography is the answer to your problem,\n"
           "then you don't know what your problem is.\n")
PETER_SIG = "— PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
ENOCH_SIG = "— EnochRoot rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOTGwnWLox33WWd1RvMc+QQ=\n"
GO_SIGNED = GO_TEXT + "\n" + PETER_SIG

# -- transparency-dev/formats note/note_cosigv1_test.go -------------------------------------

PLUS_VKEY = "TEST+7997405c+AQcC+FTVKf0jlTdHDY3rbevmnKxxPjigCXlVtGe6RIr6"
REMORA_VKEY = "remora.n621.de+da77ade7+BOvN63jn/bLvkieywe8R6UYAtVtNbZpXh34x7onlmtw2"
COSIG_TS_SIG = "ZGhGuQAAAABm/qTPeyKXD+R2rzyQsxPiP8mXum7qq/iF0u4vanlqJyocWODBt97w9uL+8qT7S5gxEHWWOworDcFiEBYJXORmnFBOBA=="
NOT_A_COSIG = "eQjRQm6eSKzFoiYalgwCPXu2y3ijtg68is9M46JKxuZB+dRfTmeQeDBoXnvxZx2ugnkyV+MUMLXpWs1hPb/W/4xkNQY="

# -- C2SP tlog-cosignature.md ---------------------------------------------------------------

C2SP_COSIGNED_EXAMPLE = """example.com/behind-the-sofa
20852163
CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=

— example.com/behind-the-sofa Az3grlgtzPICa5OS8npVmf1Myq/5IZniMp+ZJurmRDeOoRDe4URYN7u5/Zhcyv2q1gGzGku9nTo+zyWE+xeMcTOAYQ8=
— witness.example.com/w1 jWbPPwAAAABkGFDLEZMHwSRaJNiIDoe9DYn/zXcrtPHeolMI5OWXEhZCB9dlrDJsX3b2oyin1nPZqhf5nNo0xUe+mbIUBkBIfZ+qnA==
"""

# -- florolf/tlog-scales tests/test_signing.py ----------------------------------------------

ARCHE_VKEY = "arche2025h1.staging.ct.transparency.dev+ba2f06c0+AU0vHmlGCS/PdN8b2OaGmKprLI8HKM+dJ472xgFYh15f"
ARCHE_CHECKPOINT = """arche2025h1.staging.ct.transparency.dev
1432088532
U7WM79jrzyhGZ5/GUBTpM7NzwdyfFx61t3RovgcC4Ro=

— arche2025h1.staging.ct.transparency.dev zTM8sQAAAZ5W0WdjBAMARjBEAiBjW5IQf9pvsYLfQFX6hoGREPMHbdQ3urbllzalApkptQIgIpwtEroeW2BXaHAI4kJXFbon5Ch9MNL5zRNZ55lvGt0=
— arche2025h1.staging.ct.transparency.dev ui8GwCF1+kWqZrxGdhj4aX3gcw7XUlXQQabg/27lefwhUkzbC3NygNI75MdhL1bfTW9g8Ei59RA23oHP7Ry1k3ZFWwQ=
— transparency.dev/DEV:witness-little-garden 2AQqhwAAAABqEiEgzgFIqqhbUoDwjMWE6UP8nd8/KYTzwZ2rhIgcqoXHAwVkjZr4AscylP3v7sEodkRAErumC2q44vdgJY096st5BQ==
— witness1.smartit.nu/witness1 pIyCDwAAAABqEiEghIp82KWebrw7/oHQwlTAm3g2RKS4+eebl8eO0WH+/iEcxZ75W3u5hNI7TOQtmJbqmNWVuE0tgh0XwzdZsDsUAQ==
— remora.n621.de 2net5wAAAABqEiEgPlfF3V06o0Y+fHM+J5J9s27wgxxcOVSpZ/2g/KSiXCg9DEZI+aVCIobWX9sXTynk5XeU/zZ0WBxtqB0DrAWfBw==
— witness.stagemole.eu Z/euoAAAAABqEiEgw0i+7g2ENfDAWHmtRzCfKTHSDwYDJA2NmKeGi9Y8FtEyOUvVr+AJmIY/2TUFucgKi7lI7cUiOvKFYe/TmN9DAg==
"""
FOO_VKEY = "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k"
FOO_NOTE = ("This is an example message.\n\n"
            "— example.com/foo Uw2QOkn8srV1yJGh2VYRlL1Tnagv1YEq6TfXppzi2ONncAlTgK7Ztg1ERYNZXsYjOBH3mFXmRKuwHjG1Yu72IneyaQM=\n")


def _peter_private_key() -> Ed25519PrivateKey:
    # Go signer keys are PRIVATE+KEY+name+hexid+base64(alg || 32-byte Ed25519 seed).
    raw = base64.b64decode(PETER_SKEY.split("+", 4)[4])
    assert raw[0] == ALG_ED25519 and len(raw) == 33
    return Ed25519PrivateKey.from_private_bytes(raw[1:])


def _raw(pub) -> bytes:
    return pub.public_bytes(Encoding.Raw, PublicFormat.Raw)


@pytest.fixture(scope="module")
def log_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def checkpoint() -> Checkpoint:
    tree = MerkleTree(leaf_hash(f"audit entry {i}".encode()) for i in range(1234))
    return Checkpoint("registry.xinyi.example/audit", tree.size, tree.root())


# -- checkpoint bodies ----------------------------------------------------------------------


def test_checkpoint_body_exact_and_round_trip(checkpoint):
    body = checkpoint.body()
    assert body == f"registry.xinyi.example/audit\n1234\n{base64.b64encode(checkpoint.root).decode()}\n"
    assert body.count("\n") == 3
    assert Checkpoint.parse(body) == checkpoint
    empty = Checkpoint("o", 0, hashlib.sha256(b"").digest())
    assert empty.body() == "o\n0\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\n"
    assert Checkpoint.parse(empty.body()) == empty


def test_checkpoint_extension_lines_are_kept(checkpoint):
    body = checkpoint.body() + "ext one\nsecond ext\n"
    parsed = Checkpoint.parse(body)
    assert parsed.extensions == ("ext one", "second ext")
    assert parsed.body() == body
    with pytest.raises(NoteError, match="extension"):
        Checkpoint.parse(checkpoint.body() + "\n")


@pytest.mark.parametrize("size_line", ["01", "00", "-1", "+1", " 1", "1 ", "1.0", "0x10", "\u0661", "", str(2**64)])
def test_checkpoint_parse_rejects_bad_sizes(checkpoint, size_line):
    lines = checkpoint.body().split("\n")
    lines[1] = size_line
    with pytest.raises(NoteError, match="size"):
        Checkpoint.parse("\n".join(lines))


def test_checkpoint_parse_rejects_bad_shapes(checkpoint):
    body = checkpoint.body()
    root64 = base64.b64encode(checkpoint.root).decode()
    bad = {
        "no final newline": body[:-1],
        "two lines": "origin\n5\n",
        "empty origin": "\n" + body.split("\n", 1)[1],
        "root too short": f"o\n5\n{base64.b64encode(checkpoint.root[:31]).decode()}\n",
        "root unpadded": f"o\n5\n{root64.rstrip('=')}\n",
        "root not canonical": f"o\n5\n{root64[:-2]}{'B' if root64[-2] != 'B' else 'C'}=\n",
        "root url-safe alphabet": "o\n5\n" + base64.urlsafe_b64encode(bytes([0xFB]) * 32).decode() + "\n",
        "carriage return": body.replace("\n", "\r\n", 1),
        "blank line": body + "\n",
    }
    for what, text in bad.items():
        with pytest.raises(NoteError):
            Checkpoint.parse(text)
            pytest.fail(what)


def test_checkpoint_constructor_validates():
    root = b"\x00" * 32
    with pytest.raises(ValueError, match="root"):
        Checkpoint("o", 1, b"\x00" * 31)
    with pytest.raises(ValueError, match="origin"):
        Checkpoint("", 1, root)
    with pytest.raises(ValueError, match="origin"):
        Checkpoint("a\nb", 1, root)
    with pytest.raises(ValueError, match="size"):
        Checkpoint("o", -1, root)
    with pytest.raises(TypeError, match="size"):
        Checkpoint("o", True, root)
    with pytest.raises(ValueError, match="extension"):
        Checkpoint("o", 1, root, ("",))


# -- key ids and verifier keys --------------------------------------------------------------


@pytest.mark.parametrize("vkey,alg", [
    (PETER_VKEY, ALG_ED25519), (ENOCH_VKEY, ALG_ED25519), (PLUS_VKEY, ALG_ED25519),
    (FOO_VKEY, ALG_ED25519), (ARCHE_VKEY, ALG_ED25519), (REMORA_VKEY, ALG_COSIGNATURE_V1),
])
def test_published_verifier_keys_and_key_ids(vkey, alg):
    name, hex_id, _ = vkey.split("+", 2)
    parsed = VerifierKey.parse(vkey)
    assert (parsed.name, parsed.alg) == (name, alg)
    assert parsed.encode() == str(parsed) == vkey
    kid = note_key_id(name, parsed.public_key) if alg == ALG_ED25519 else cosignature_key_id(name, parsed.public_key)
    assert kid.hex() == hex_id
    # the definition, spelled out
    assert hashlib.sha256(name.encode() + b"\n" + bytes([alg]) + _raw(parsed.public_key)).digest()[:4] == kid


def test_verifier_key_rejects_manglings():
    VerifierKey.parse(PETER_VKEY)
    for bad in [
        PETER_VKEY.replace("c74f20a3", "c74f20a4"),            # wrong id
        PETER_VKEY.replace("c74f20a3", "C74F20A3"),            # id not lowercase
        PETER_VKEY[:-1],                                       # truncated key
        "PeterNeumann+cc469956+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWBADKEY==",  # Go: wrong length
        "PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",          # Go: unknown alg
        "Peter Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        "PeterNeumann+c74f20a3",
        "",
    ]:
        with pytest.raises(NoteError):
            VerifierKey.parse(bad)
    # the cosignature vkey of a key differs only by type byte and id
    key = Ed25519PrivateKey.generate().public_key()
    assert VerifierKey("w", ALG_ED25519, key).key_id != VerifierKey("w", ALG_COSIGNATURE_V1, key).key_id
    assert key_id("w", ALG_COSIGNATURE_V1, key) == cosignature_key_id("w", key)


# -- signed notes: the Go known-answer vector ---------------------------------------------


def test_go_known_answer_signature():
    # Ed25519 is deterministic: the Go signer key must reproduce the Go note byte for byte.
    key = _peter_private_key()
    assert _raw(key.public_key()) == _raw(VerifierKey.parse(PETER_VKEY).public_key)
    assert sign_text(GO_TEXT, "PeterNeumann", key) == GO_SIGNED
    assert add_signature(GO_TEXT + "\n" + ENOCH_SIG, "PeterNeumann", key) == GO_TEXT + "\n" + ENOCH_SIG + PETER_SIG


def test_go_open_vectors():
    peter, enoch = VerifierKey.parse(PETER_VKEY), VerifierKey.parse(ENOCH_VKEY)
    both = GO_TEXT + "\n" + PETER_SIG + ENOCH_SIG
    assert verify_text(both, peter.name, peter.public_key) == GO_TEXT
    assert verify_text(both, enoch.name, enoch.public_key) == GO_TEXT
    body, sigs = split_note(both)
    assert body == GO_TEXT
    assert [(s.name, s.key_id.hex()) for s in sigs] == [("PeterNeumann", "c74f20a3"), ("EnochRoot", "af0cfe78")]
    # invalid signature from a known key rejects the note
    mangled = GO_TEXT + "\n" + PETER_SIG[:60] + "ABCD" + PETER_SIG[60:]
    with pytest.raises(NoteError, match="invalid signature for key PeterNeumann\\+c74f20a3"):
        verify_text(mangled, peter.name, peter.public_key)
    # too many signatures
    with pytest.raises(NoteError, match="signature lines"):
        split_note(GO_TEXT + "\n" + PETER_SIG * (MAX_SIGNATURES + 1))
    assert len(split_note(GO_TEXT + "\n" + PETER_SIG * 16)[1]) == 16
    # Go's badMsgs
    for bad in [
        GO_TEXT,
        GO_TEXT + "\n",
        GO_TEXT + "\n" + PETER_SIG[:-1],
        "\x01" + GO_TEXT + "\n" + PETER_SIG,
        GO_TEXT + "\n" + "— Bad Name x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=",
        GO_TEXT + "\n" + PETER_SIG + "Unexpected line.\n",
    ]:
        with pytest.raises(NoteError):
            split_note(bad)
    with pytest.raises(NoteError, match="UTF-8"):
        split_note(b"\xff" + GO_SIGNED.encode())
    assert verify_text(GO_SIGNED.encode(), peter.name, peter.public_key) == GO_TEXT
    # a verifier whose name or id does not match finds no signature
    misnamed = GO_TEXT + "\n" + PETER_SIG.replace("PeterNeumann", "CarmenSandiego")
    with pytest.raises(NoteError, match="no signature"):
        verify_text(misnamed, peter.name, peter.public_key)


def test_c2sp_signed_note_example():
    foo = VerifierKey.parse(FOO_VKEY)
    assert verify_text(FOO_NOTE, foo.name, foo.public_key) == "This is an example message.\n"


def test_note_body_may_end_in_blank_lines():
    key = Ed25519PrivateKey.generate()
    signed = sign_text("Note\n\n", "n", key)
    assert signed == "Note\n\n\n" + signed.split("\n")[3] + "\n"
    assert verify_text(signed, "n", key.public_key()) == "Note\n\n"


# -- checkpoint notes -----------------------------------------------------------------------


def test_sign_note_exact_format(checkpoint, log_key):
    name = "registry.xinyi.example/audit"
    note = sign_note(checkpoint, name, log_key)
    lines = note.split("\n")
    assert lines[:3] == checkpoint.body().split("\n")[:3]
    assert lines[3] == ""                      # the one blank line
    assert lines[4].startswith(f"{EM} {name} ")
    assert lines[4][0] == "\u2014" and lines[4][1] == " "
    assert lines[5:] == [""]                   # a single signature line, newline-terminated
    sig64 = lines[4].split(" ")[2]
    raw = base64.b64decode(sig64, validate=True)
    assert len(raw) == 4 + 64 and len(sig64) == 92
    assert raw[:4] == note_key_id(name, log_key.public_key())
    log_key.public_key().verify(raw[4:], checkpoint.body().encode())
    assert note == checkpoint.body() + "\n" + f"{EM} {name} {sig64}\n"
    assert note.encode("utf-8").count("\u2014".encode("utf-8")) == 1


def test_parse_and_verify_round_trip(checkpoint, log_key):
    name = "registry.xinyi.example/audit"
    note = sign_note(checkpoint, name, log_key)
    parsed = parse_note(note)
    assert parsed.checkpoint == checkpoint
    assert parsed.text == note and parsed.body == checkpoint.body()
    assert [(s.name, len(s.key_id), len(s.payload)) for s in parsed.signatures] == [(name, 4, 64)]
    assert parsed.signatures[0].line() == note.split("\n\n")[1]
    assert verify_note(note, name, log_key.public_key()) == checkpoint


def test_forged_and_altered_notes_rejected(checkpoint, log_key):
    name = "registry.xinyi.example/audit"
    pub = log_key.public_key()
    note = sign_note(checkpoint, name, log_key)
    sig_line = note.split("\n\n")[1]

    other_root = Checkpoint(checkpoint.origin, checkpoint.size, bytes(32))
    with pytest.raises(NoteError, match="invalid signature"):
        verify_note(other_root.body() + "\n" + sig_line, name, pub)
    bigger = Checkpoint(checkpoint.origin, checkpoint.size + 1, checkpoint.root)
    with pytest.raises(NoteError, match="invalid signature"):
        verify_note(bigger.body() + "\n" + sig_line, name, pub)
    with pytest.raises(NoteError, match="invalid signature"):
        verify_note(checkpoint.body() + "extra\n" + "\n" + sig_line, name, pub)

    # signed by another key under the same name: its key id differs, so no signature of ours
    mallory = Ed25519PrivateKey.generate()
    with pytest.raises(NoteError, match="no signature"):
        verify_note(sign_note(checkpoint, name, mallory), name, pub)
    # another key claiming our key id: fails verification
    forged_raw = note_key_id(name, pub) + mallory.sign(checkpoint.body().encode())
    forged = checkpoint.body() + "\n" + f"{EM} {name} {base64.b64encode(forged_raw).decode()}\n"
    with pytest.raises(NoteError, match="invalid signature"):
        verify_note(forged, name, pub)
    # a genuine signature plus a bad one from the same key: the note is rejected
    with pytest.raises(NoteError, match="invalid signature"):
        verify_note(note + f"{EM} {name} {base64.b64encode(forged_raw).decode()}\n", name, pub)
    # right key, wrong name
    with pytest.raises(NoteError, match="no signature"):
        verify_note(sign_note(checkpoint, "someone.else", log_key), name, pub)
    # truncated signature: id still matches, 63-byte signature fails
    raw = base64.b64decode(sig_line.split(" ")[2])
    short = checkpoint.body() + "\n" + f"{EM} {name} {base64.b64encode(raw[:-1]).decode()}\n"
    with pytest.raises(NoteError, match="invalid signature"):
        verify_note(short, name, pub)
    # signature line cut in the middle of its base64
    with pytest.raises(NoteError):
        verify_note(note[:-10] + "\n", name, pub)
    # no signatures at all / no blank line
    with pytest.raises(NoteError):
        verify_note(checkpoint.body() + "\n", name, pub)
    with pytest.raises(NoteError, match="note has no blank line before its signatures"):
        verify_note(checkpoint.body() + sig_line, name, pub)
    # a hyphen instead of the em dash
    with pytest.raises(NoteError, match="em dash"):
        verify_note(note.replace(EM, "-"), name, pub)


def test_unknown_signers_are_kept_but_ignored(checkpoint, log_key):
    name = "registry.xinyi.example/audit"
    note = sign_note(checkpoint, name, log_key) + ENOCH_SIG
    parsed = parse_note(note)
    assert [s.name for s in parsed.signatures] == [name, "EnochRoot"]
    assert verify_note(note, name, log_key.public_key()) == checkpoint


def test_typed_keys_only(checkpoint, log_key):
    raw_private = log_key.private_bytes_raw()
    with pytest.raises(TypeError):
        sign_note(checkpoint, "n", raw_private)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        verify_note(sign_note(checkpoint, "n", log_key), "n", _raw(log_key.public_key()))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        add_cosignature(sign_note(checkpoint, "n", log_key), "w", raw_private, 1)  # type: ignore[arg-type]
    for bad_name in ("", "a b", "a+b", "tab\there"):
        with pytest.raises(ValueError):
            sign_note(checkpoint, bad_name, log_key)


def test_real_transparency_dev_checkpoint():
    arche, remora = VerifierKey.parse(ARCHE_VKEY), VerifierKey.parse(REMORA_VKEY)
    cp = verify_note(ARCHE_CHECKPOINT, arche.name, arche.public_key)
    assert (cp.origin, cp.size) == ("arche2025h1.staging.ct.transparency.dev", 1432088532)
    assert base64.b64encode(cp.root).decode() == "U7WM79jrzyhGZ5/GUBTpM7NzwdyfFx61t3RovgcC4Ro="
    ts = verify_cosignature(ARCHE_CHECKPOINT, remora.name, remora.public_key)
    assert ts == int.from_bytes(base64.b64decode("2net5wAAAABqEiEgPlfF")[4:12], "big") == 1779573024
    # the witness key is not a note-signing key, and vice versa
    with pytest.raises(NoteError, match="no signature"):
        verify_note(ARCHE_CHECKPOINT, remora.name, remora.public_key)
    with pytest.raises(NoteError, match="no cosignature"):
        verify_cosignature(ARCHE_CHECKPOINT, arche.name, arche.public_key)
    # clobbered size: both signatures fail
    clobbered = ARCHE_CHECKPOINT.replace("\n1432088532\n", "\n42\n")
    with pytest.raises(NoteError, match="invalid signature"):
        verify_note(clobbered, arche.name, arche.public_key)
    with pytest.raises(NoteError, match="invalid cosignature"):
        verify_cosignature(clobbered, remora.name, remora.public_key)
    assert len(parse_note(ARCHE_CHECKPOINT).signatures) == 6
    # parse -> re-serialise is the identity
    parsed = parse_note(ARCHE_CHECKPOINT)
    assert parsed.body + "\n" + "".join(s.line() for s in parsed.signatures) == ARCHE_CHECKPOINT


# -- cosignatures ---------------------------------------------------------------------------


def test_published_cosignature_timestamps():
    sig = NoteSignature.parse_line(f"{EM} x {COSIG_TS_SIG}")
    assert cosignature_timestamp(sig) == 1727964367
    with pytest.raises(NoteError, match="cosignature"):
        cosignature_timestamp(NoteSignature.parse_line(f"{EM} x {NOT_A_COSIG}"))
    with pytest.raises(NoteError):
        NoteSignature.parse_line(f"{EM} x 5%/$! 2")
    example = parse_note(C2SP_COSIGNED_EXAMPLE)
    assert example.checkpoint.size == 20852163
    assert cosignature_timestamp(example.signatures[1]) == 1679315147


def test_cosignature_round_trip_and_format(checkpoint, log_key):
    log_name, witness_name = "registry.xinyi.example/audit", "witness.xinyi.example/w1"
    witness = Ed25519PrivateKey.generate()
    note = sign_note(checkpoint, log_name, log_key)
    ts = 1_700_000_000
    cosigned = add_cosignature(note, witness_name, witness, ts)
    assert cosigned.startswith(note)
    line = cosigned[len(note):]
    assert line.startswith(f"{EM} {witness_name} ") and line.endswith("\n") and line.count("\n") == 1
    sig64 = line[:-1].split(" ")[2]
    raw = base64.b64decode(sig64, validate=True)
    assert len(raw) == 4 + 8 + 64 and len(sig64) == 104
    assert raw[:4] == cosignature_key_id(witness_name, witness.public_key())
    assert raw[:4] == hashlib.sha256(witness_name.encode() + b"\n\x04" + _raw(witness.public_key())).digest()[:4]
    assert raw[4:12] == ts.to_bytes(8, "big")
    message = f"cosignature/v1\ntime {ts}\n".encode() + checkpoint.body().encode()
    witness.public_key().verify(raw[12:], message)

    assert verify_cosignature(cosigned, witness_name, witness.public_key()) == ts
    assert verify_note(cosigned, log_name, log_key.public_key()) == checkpoint
    # not a plain note signature
    with pytest.raises(NoteError, match="no signature"):
        verify_note(cosigned, witness_name, witness.public_key())
    # re-cosigning replaces the earlier line; a second witness adds one
    later = add_cosignature(cosigned, witness_name, witness, ts + 60)
    assert len(parse_note(later).signatures) == 2
    assert verify_cosignature(later, witness_name, witness.public_key()) == ts + 60
    w2 = Ed25519PrivateKey.generate()
    both = add_cosignature(later, "witness.other.example", w2, ts + 61)
    assert verify_cosignature(both, "witness.other.example", w2.public_key()) == ts + 61
    assert verify_cosignature(both, witness_name, witness.public_key()) == ts + 60
    assert verify_cosignature(both, witness_name, witness.public_key(), not_after=ts + 60) == ts + 60
    with pytest.raises(NoteError, match="after"):
        verify_cosignature(both, witness_name, witness.public_key(), not_after=ts)
    # timestamp 0 and 2^63-1 are allowed, beyond is not
    assert verify_cosignature(add_cosignature(note, witness_name, witness, 0), witness_name, witness.public_key()) == 0
    top = 2**63 - 1
    assert verify_cosignature(add_cosignature(note, witness_name, witness, top), witness_name, witness.public_key()) == top
    for bad in (-1, 2**63):
        with pytest.raises(ValueError, match="timestamp"):
            add_cosignature(note, witness_name, witness, bad)


def test_cosignature_rejections(checkpoint, log_key):
    log_name, witness_name = "registry.xinyi.example/audit", "witness.xinyi.example/w1"
    witness = Ed25519PrivateKey.generate()
    wpub = witness.public_key()
    note = sign_note(checkpoint, log_name, log_key)
    ts = 1_700_000_000
    cosigned = add_cosignature(note, witness_name, witness, ts)
    line = cosigned[len(note):]
    raw = base64.b64decode(line[:-1].split(" ")[2])

    def with_payload(payload: bytes) -> str:
        return note + f"{EM} {witness_name} {base64.b64encode(payload).decode()}\n"

    # a different timestamp in the line
    with pytest.raises(NoteError, match="invalid cosignature"):
        verify_cosignature(with_payload(raw[:4] + (ts + 1).to_bytes(8, "big") + raw[12:]), witness_name, wpub)
    # the cosignature moved to another checkpoint
    other = sign_note(Checkpoint(checkpoint.origin, checkpoint.size + 1, checkpoint.root), log_name, log_key)
    with pytest.raises(NoteError, match="invalid cosignature"):
        verify_cosignature(other + line, witness_name, wpub)
    # truncated
    with pytest.raises(NoteError, match="cosignature"):
        verify_cosignature(with_payload(raw[:-1]), witness_name, wpub)
    # timestamp beyond 2^63-1
    with pytest.raises(NoteError, match="2\\^63"):
        verify_cosignature(with_payload(raw[:4] + (2**63).to_bytes(8, "big") + raw[12:]), witness_name, wpub)
    # another witness key, or a plain note signature by the witness key
    with pytest.raises(NoteError, match="no cosignature"):
        verify_cosignature(cosigned, witness_name, Ed25519PrivateKey.generate().public_key())
    with pytest.raises(NoteError, match="no cosignature"):
        verify_cosignature(add_signature(note, witness_name, witness), witness_name, wpub)
    with pytest.raises(NoteError, match="no cosignature"):
        verify_cosignature(note, witness_name, wpub)
    # cosigning something that is not a checkpoint note
    with pytest.raises(NoteError):
        add_cosignature(GO_SIGNED, witness_name, witness, ts)


# -- the edges the mutation run found unchecked (make mutate, xinyi/audit/checkpoint.py) ------


def test_checkpoint_sizes_and_extensions_at_their_limits():
    root = b"\x00" * 32
    assert Checkpoint("o", 2**64 - 1, root).size == 2**64 - 1  # the largest tree size is a size
    with pytest.raises(ValueError, match="size"):
        Checkpoint("o", 2**64, root)
    # A control character in an extension line, with or without a newline, is refused.
    for line in ("a\x01b", "a\x1fb", "a\nb"):
        with pytest.raises(ValueError, match="extension lines"):
            Checkpoint("o", 1, root, (line,))


def test_key_ids_take_every_signature_type_byte_and_nothing_else(log_key):
    public = log_key.public_key()
    raw = _raw(public)
    for alg in (0, 1, 4, 255):
        assert key_id("k", alg, public) == hashlib.sha256(b"k\n" + bytes([alg]) + raw).digest()[:4]
    for alg in (-1, 256, 1.0, None):
        with pytest.raises(ValueError, match="alg must be a signature type byte"):
            key_id("k", alg, public)


def test_a_signature_line_parses_with_its_newline_and_needs_a_payload(checkpoint, log_key):
    note = sign_note(checkpoint, "log.example", log_key)
    _, [signature] = split_note(note)
    line = signature.line()
    assert line.endswith("\n")
    assert NoteSignature.parse_line(line) == signature == NoteSignature.parse_line(line[:-1])
    # A key id and no signature bytes at all: refused, not taken as an empty signature.
    key_only = f"{EM} log.example {base64.b64encode(signature.key_id).decode()}"
    with pytest.raises(NoteError, match=r"too short \(4 bytes\)"):
        NoteSignature.parse_line(key_only)
    assert NoteSignature.parse_line(f"{EM} log.example {base64.b64encode(signature.key_id + b'x').decode()}").payload == b"x"


def test_a_note_whose_text_is_one_empty_line_still_splits(checkpoint, log_key):
    # The blank line may be the very first thing: split_note verifies nothing, the empty text is
    # for the caller to refuse (parse_note does: it is no checkpoint).
    note = sign_note(checkpoint, "log.example", log_key)
    line = note[note.rindex("\n\n") + 2:]
    body, signatures = split_note("\n\n" + line)
    assert body == "\n" and [s.line() for s in signatures] == [line]
    with pytest.raises(NoteError):
        parse_note("\n\n" + line)


def test_a_cosignature_time_must_be_an_int(checkpoint, log_key):
    note = sign_note(checkpoint, "log.example", log_key)
    witness = Ed25519PrivateKey.generate()
    for ts in (1.0, "1", None, True):
        with pytest.raises(TypeError, match="timestamp must be an int"):
            add_cosignature(note, "witness.example", witness, ts)


def test_a_checkpoint_body_may_carry_the_largest_tree_size(checkpoint):
    body = checkpoint.body().replace(f"\n{checkpoint.size}\n", f"\n{2**64 - 1}\n", 1)
    assert Checkpoint.parse(body).size == 2**64 - 1
    with pytest.raises(NoteError, match="size"):
        Checkpoint.parse(checkpoint.body().replace(f"\n{checkpoint.size}\n", f"\n{2**64}\n", 1))


def test_note_text_to_sign_must_end_in_a_newline_and_hold_no_control_character(log_key):
    assert sign_text("text\n", "k", log_key).startswith("text\n\n")
    for text in ("no newline at the end", "a\x01b\n", "a\x1f\n"):
        with pytest.raises(ValueError, match="end with a newline and hold no control characters"):
            sign_text(text, "k", log_key)


def test_base64_is_read_strictly_everywhere(checkpoint, log_key):
    note = sign_note(checkpoint, "log.example", log_key)
    head, sig64 = note.rstrip("\n").rsplit(" ", 1)
    # A character outside the alphabet is not skipped (as a lenient decoder would): refused as such.
    for junk in (sig64[:4] + "!" + sig64[4:], sig64[:4] + "\u00e9" + sig64[4:], sig64 + "=="):
        with pytest.raises(NoteError, match="is not valid base64"):
            split_note(f"{head} {junk}\n")


def test_an_invalid_name_is_a_note_error_not_a_crash():
    with pytest.raises(NoteError, match="invalid key name"):
        NoteSignature.parse_line(f"{EM} bad\x01name AAAAAAAAAAAA")
    with pytest.raises(NoteError, match="verifier key has an invalid name"):
        VerifierKey.parse("bad name+12345678+" + "A" * 44)


def test_a_note_holds_at_most_the_maximum_of_signature_lines(checkpoint, log_key):
    note = sign_note(checkpoint, "log.example", log_key)
    line = note[note.rindex("\n\n") + 2:]
    body = note[:note.rindex("\n\n") + 1]
    assert len(split_note(body + "\n" + line * MAX_SIGNATURES)[1]) == MAX_SIGNATURES
    with pytest.raises(NoteError, match=f"more than {MAX_SIGNATURES}"):
        split_note(body + "\n" + line * (MAX_SIGNATURES + 1))


def test_with_no_known_key_on_the_note_the_refusal_names_the_current_key(checkpoint, log_key):
    # Keys over time, current first: a note by a third key is refused naming the current one.
    current, replaced = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    note = sign_note(checkpoint, "log.example", log_key)
    kid = note_key_id("log.example", current.public_key()).hex()
    with pytest.raises(NoteError, match=f"no signature by log.example\\+{kid}"):
        verify_note(note, "log.example", [current.public_key(), replaced.public_key()])
