"""docs/protocol.md is the contract for clients in other languages; it must not drift from the
contract's machine-readable parts: its table of refusal reasons (§11.2) lists exactly the values
of enum ErrorReason (proto/xinyi/v1/errors.proto), with the status codes their comments name,
and every conformance file it points a reader to exists.
"""

from __future__ import annotations

import re
from pathlib import Path

import grpc

from xinyi.errors import REASON_PREFIX
from xinyi.v1 import errors_pb2

ROOT = Path(__file__).resolve().parent.parent
PROTOCOL = ROOT / "docs" / "protocol.md"
CONFORMANCE_README = ROOT / "conformance" / "README.md"
ERRORS_PROTO = ROOT / "proto" / "xinyi" / "v1" / "errors.proto"
TABLE_HEADING = "### 11.2 Reasons"
GRPC_CODES = {c.name for c in grpc.StatusCode}


def enum_reasons() -> dict[str, set[str]]:
    """{reason as sent: the gRPC codes its comment in errors.proto names}, without UNSPECIFIED
    (never sent, so not in the table)."""
    names = {v.name.removeprefix(REASON_PREFIX)
             for v in errors_pb2.DESCRIPTOR.enum_types_by_name["ErrorReason"].values}
    codes = {}
    for line in ERRORS_PROTO.read_text().splitlines():
        m = re.match(r"\s*ERROR_REASON_(\w+)\s*=\s*\d+;\s*//\s*(.*)$", line)
        if m:
            codes[m.group(1)] = set(re.findall(r"[A-Z_]{5,}", m.group(2))) & GRPC_CODES
    assert names == set(codes), "errors.proto and the generated errors_pb2 disagree: run `make proto`"
    return {name: codes[name] for name in names if name != "UNSPECIFIED"}


def table_rows(text: str) -> list[tuple[str, set[str]]]:
    """(reason, the gRPC codes its status-code column names) for each row of §11.2, in order."""
    start = text.index(TABLE_HEADING)
    end = text.find("\n### ", start + len(TABLE_HEADING))
    rows = []
    for line in text[start:end if end != -1 else None].splitlines():
        m = re.match(r"\| `([A-Z0-9_]+)` \| ([^|]*) \|", line)
        if m:
            rows.append((m.group(1), set(re.findall(r"[A-Z_]{5,}", m.group(2))) & GRPC_CODES))
    return rows


def drift(text: str, enum: dict[str, set[str]]) -> list[str]:
    """Every way the doc's reason table differs from the enum, as sentences."""
    rows = table_rows(text)
    names = [name for name, _ in rows]
    problems = [f"{name}: in ErrorReason, not in the table" for name in sorted(enum.keys() - set(names))]
    problems += [f"{name}: in the table, not in ErrorReason" for name in sorted(set(names) - enum.keys())]
    problems += [f"{name}: listed twice" for name in sorted({n for n in names if names.count(n) > 1})]
    if names != sorted(names):
        problems.append("the table is not sorted alphabetically")
    problems += [f"{name}: the table says {sorted(codes) or 'no code'}, errors.proto {sorted(enum[name]) or 'no code'}"
                 for name, codes in rows if name in enum and codes != enum[name]]
    return problems


def test_the_reason_table_is_the_enum():
    problems = drift(PROTOCOL.read_text(), enum_reasons())
    assert not problems, "docs/protocol.md §11.2 differs from ErrorReason (errors.proto is right):\n" + "\n".join(problems)


def test_the_drift_check_sees_each_kind_of_drift():
    text, enum = PROTOCOL.read_text(), enum_reasons()
    row = next(line for line in text.splitlines() if line.startswith("| `CONSENT_REVOKED` |"))
    assert drift(text.replace(row + "\n", ""), enum) == ["CONSENT_REVOKED: in ErrorReason, not in the table"]
    invented = row.replace("CONSENT_REVOKED", "CONSENT_GRANTEE_MISMATCH")  # an audit note, not a reason
    assert drift(text.replace(row, invented), enum) == [
        "CONSENT_REVOKED: in ErrorReason, not in the table", "CONSENT_GRANTEE_MISMATCH: in the table, not in ErrorReason",
        "the table is not sorted alphabetically"]
    assert drift(text.replace(row, row.replace("PERMISSION_DENIED", "FAILED_PRECONDITION")), enum) == [
        "CONSENT_REVOKED: the table says ['FAILED_PRECONDITION'], errors.proto ['PERMISSION_DENIED']"]


def test_every_conformance_file_named_exists():
    named = set(re.findall(r"conformance/([\w.-]+\.json)", PROTOCOL.read_text()))
    named |= set(re.findall(r"\b([\w-]+\.json)\b", CONFORMANCE_README.read_text()))  # beside them: bare names
    assert {"query.json", "answer.json", "directory.json", "checkpoint.json", "proofs.json"} <= named
    missing = sorted(name for name in named if not (ROOT / "conformance" / name).is_file())
    assert not missing, f"docs/protocol.md or conformance/README.md names conformance files that do not exist: {missing}"


def test_every_signed_statement_and_the_dispute_listing_are_documented():
    """Each signed body (a message named *Body) is in §4.2's table, and the RPC an enterprise
    follows its disputes with has its section: a client in another language must know what it
    signs and what it checks."""
    text = PROTOCOL.read_text()
    bodies = sorted({m for proto in ERRORS_PROTO.parent.glob("*.proto")
                     for m in re.findall(r"^message (\w+Body) \{", proto.read_text(), re.M)})
    assert "MyDisputesBody" in bodies and "NodeDisputesBody" in bodies
    missing = [b for b in bodies if f"`xinyi.v1.{b}`" not in text]
    assert not missing, f"docs/protocol.md §4.2 does not list the signed bodies {missing}"
    assert "### 9.1 An enterprise's disputes: `DisputeService.ListMyDisputes`" in text
    assert "`NodeService.ListMyDisputes`" in text


# --- the worked examples in the text are what the code computes ------------------------------------
# A reader checks an implementation against them; each is taken from the text itself, so an
# example that drifts from the code (or a code change that breaks one) fails here.


def _hex_block_after(text: str, marker: str) -> bytes:
    """The hex of the first ``` block after `marker`."""
    block = re.search(r"```\n([0-9a-f\n]+)```", text[text.index(marker):]).group(1)
    return bytes.fromhex(block.replace("\n", ""))


def test_the_worked_query_example_is_what_the_code_signs_and_hashes():
    from xinyi.crypto.envelope import body_hash, signed_input
    from xinyi.v1 import query_pb2

    text = PROTOCOL.read_text()
    body = query_pb2.QueryBody(uscc="91510100MA6C11111E", categories=["tax"], purpose="credit_assessment",
                               consent_id="0123456789abcdef0123456789abcdef", nonce=bytes(range(16)),
                               issued_at_ms=1767225600000, answer_key=b"\x42" * 32).SerializeToString(deterministic=True)
    assert _hex_block_after(text, "serialize to these") == body and "\n137 bytes" in text and len(body) == 137
    assert re.search(r"whose request hash is `([0-9a-f]{64})`", text).group(1) == body_hash(body).hex()
    prefix = re.search(r"first 44 bytes of `signed_input` are\n\n```\n([0-9a-f]+)\n", text).group(1)
    assert bytes.fromhex(prefix) == signed_input("xinyi.v1.QueryBody", body)[:44]


def test_the_worked_consent_id_example_is_what_the_code_computes():
    from xinyi.privacy.consent import consent_id_for
    from xinyi.records.uscc import problem
    from xinyi.v1 import consent_pb2

    m = re.search(r"the (\d+)-byte body .*?`([0-9a-f]+)`\nhas the id `([0-9a-f]{32})`", PROTOCOL.read_text(), re.S)
    body = bytes.fromhex(m.group(2))
    assert len(body) == int(m.group(1)) and consent_id_for(body) == m.group(3)
    consent = consent_pb2.ConsentBody.FromString(body)
    assert consent.SerializeToString(deterministic=True) == body
    assert problem(consent.uscc) is None and problem(consent.grantee) is None  # an example a server would take


def test_the_worked_merkle_and_checkpoint_examples_verify_with_the_code():
    import base64

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from xinyi.audit import merkle
    from xinyi.audit.checkpoint import cosignature_key_id, note_key_id, verify_cosignature, verify_note

    text = PROTOCOL.read_text()
    leaves = [merkle.leaf_hash(d) for d in (b"a", b"b", b"c")]
    assert f'leaf hash of `"a"` = `{leaves[0].hex()}`' in text
    assert f"root of 2 =\n`{merkle.root_of(leaves[:2]).hex()}`" in text
    assert f"root of 3 =\n`{merkle.root_of(leaves).hex()}`" in text
    assert f"`{leaves[2].hex()}`\n(leaf \"c\")" in text
    assert f"`SHA-256(\"\") =\n{merkle.root_of([]).hex()}`" in text
    # "inclusion proof of index 1 in size 3 = [leaf a, leaf c]; consistency proof 2 -> 3 = [leaf c]"
    assert merkle.verify_inclusion(leaves[1], 1, 3, [leaves[0], leaves[2]], merkle.root_of(leaves))
    assert merkle.verify_consistency(2, 3, merkle.root_of(leaves[:2]), merkle.root_of(leaves), [leaves[2]])

    log_key = Ed25519PrivateKey.from_private_bytes(b"\x00" * 32).public_key()
    witness_key = Ed25519PrivateKey.from_private_bytes(b"\x01" * 32).public_key()
    note = re.search(r"timestamp\n1767225600:\n\n```\n(.*?)```", text, re.S).group(1)
    checkpoint = verify_note(note, "xinyi/510100", log_key)
    assert (checkpoint.origin, checkpoint.size, checkpoint.root) == ("xinyi/510100", 3, merkle.root_of(leaves))
    assert base64.b64encode(merkle.root_of(leaves)).decode() in note
    assert verify_cosignature(note, "xinyi/national", witness_key) == 1767225600
    assert (f"Log key id `{note_key_id('xinyi/510100', log_key).hex()}`, witness key id "
            f"`{cosignature_key_id('xinyi/national', witness_key).hex()}`") in text


def test_the_holdings_digest_is_as_the_text_says():
    import hashlib

    from xinyi.registration import holdings_digest

    assert "`0x1A || varint(length) || UTF-8(uscc)`" in PROTOCOL.read_text()
    held = ["91510100MA6C11111E", "914403001922038216"]
    spelled_out = b"".join(b"\x1a" + bytes([len(u)]) + u.encode() for u in held)
    assert holdings_digest(held) == hashlib.sha256(spelled_out).digest()
    assert holdings_digest([]) == hashlib.sha256(b"").digest()
