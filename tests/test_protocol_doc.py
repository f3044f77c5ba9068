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
