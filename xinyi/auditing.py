"""The auditor's checks, for every front end (the `xinyi audit` commands and the web app): fetch a
log with its signed checkpoint, verify it against the key in the registry-signed directory and
what this auditor verified before, write an evidence bundle that `xinyi audit verify --offline`
accepts, and reconcile the registry's routings with the nodes' logs."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Callable

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from xinyi.audit import merkle
from xinyi.audit.checkpoint import NoteError, parse_note, verify_cosignature
from xinyi.audit.verify import AuditorState, LogKeys, VerifyReport, verify_checkpoint, verify_log
from xinyi.crypto.identity import Role
from xinyi.crypto.pki import Identity
from xinyi.directory import Directory
from xinyi.v1 import audit_pb2

b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731

Progress = Callable[[int, int], None]  # (entries fetched, entries signed)


def state_file(origin: str, folder: Path | None = None) -> Path:
    """Where an auditor keeps what it verified of a log (size, root, leaf hashes), so that the next
    verification can tell a log that grew from one that was rewritten."""
    base = folder or Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local" / "state")) / "xinyi" / "audit"
    return base / (origin.replace("/", "_") + ".json")


class AuditCommandError(Exception):
    """A check that failed: the CLI prints it and exits 1; the web app shows it."""


def log_key(directory: Directory, origin: str) -> LogKeys:
    """The keys that signed a log's checkpoints, from the registry-signed directory: the log
    owner's current key and the ones it replaced (a checkpoint's key id picks one), with the
    revocation lists the directory carries (verify_checkpoint refuses a checkpoint signed with
    a revoked key unless the witness cosigned it before the revocation)."""
    owner = origin.removeprefix("xinyi/")
    if owner != directory.registry_id and owner not in directory.nodes:
        raise AuditCommandError(f"log {origin!r} belongs to no node in the signed directory")
    return LogKeys.of(directory, origin)


def public_keys(certs: list[bytes]) -> list:
    return [x509.load_der_x509_certificate(der).public_key() for der in certs]



async def fetch_log(client, progress: Progress | None = None
                    ) -> tuple[audit_pb2.GetCheckpointResponse, Directory, list[tuple[int, bytes]]]:
    """The log's checkpoint, the directory it was verified with, and every entry it signs.
    `progress(fetched, size)` is called after each page."""
    response = await client.checkpoint()
    directory = Directory.verify(response.directory, client.identity.trust())
    size = parse_note(response.checkpoint).checkpoint.size
    entries = await client.entries(0, size - 1, progress=progress) if size else []
    return response, directory, [(e.index, e.leaf_input) for e in entries]



async def verify_fetched(client, response: audit_pb2.GetCheckpointResponse, directory: Directory,
                         entries: list[tuple[int, bytes]], previous: AuditorState | None
                         ) -> tuple[VerifyReport, AuditorState | None]:
    """Verify what fetch_log returned: the entries against the signed checkpoint and against what
    this auditor verified before (with the log's consistency proof), then the witness's
    cosignature. Returns the report and, when everything held, the state to remember."""
    origin = parse_note(response.checkpoint).checkpoint.origin
    note = response.checkpoint
    if response.cosigned_checkpoint and _same_body(response.cosigned_checkpoint, note):
        note = response.cosigned_checkpoint  # the same checkpoint, dated by the witness's cosignature
    report, state = verify_log(note, origin, log_key(directory, origin), entries, previous)
    if state is not None and previous is not None and previous.size < state.size:
        # The log's own proof that the new tree extends the old one must verify too.
        proof = await client.consistency_proof(previous.size, state.size) if previous.size else []
        if previous.size and not merkle.verify_consistency(previous.size, state.size, previous.root, state.root, proof):
            report.fail(f"the log's consistency proof from {previous.size} to {state.size} does not verify")
            state = None
    if response.cosigned_checkpoint and state is not None:
        _check_cosigned(response.cosigned_checkpoint, directory, origin, log_key(directory, origin), state, report)
    return report, (state if report.ok else None)  # a failed verification is nothing to build on next time


async def verify_and_remember(client, response: audit_pb2.GetCheckpointResponse, served: Directory,
                              entries: list[tuple[int, bytes]], state: Path) -> VerifyReport:
    """verify_fetched with this auditor's memory of the log at `state`: what it verified of the
    log before, and the newest revocation list of each CA it has seen. The
    directory comes from the server being audited: one holding a log key revoked since could
    send an old directory that still lists the key, with the revocation lists of its day; the
    lists remembered count all the same. Both are kept when everything held."""
    learn_remembered_revocations(served, revocations_file(state))
    report, verified = await verify_fetched(client, response, served, entries, AuditorState.load(state))
    if verified is not None:
        verified.save(state)
        remember_revocations(served, revocations_file(state))
    return report


def revocations_file(state: Path) -> Path:
    return state.with_name(state.name + ".revocations")


def learn_remembered_revocations(directory: Directory, path: Path) -> None:
    """Teach the anchor the directory was verified with the revocation lists remembered at
    `path`. It takes each only when the CA it names (known from the served directory, or the
    root) signed it and it is newer than the one held, so a tampered file adds nothing false.
    Only lists are remembered, never CAs: a CA certified again under the same name must stay
    the one the served directory publishes."""
    if directory.trust is None:
        return
    try:
        crls = [base64.b64decode(d) for d in json.loads(path.read_text())["revocation_lists"]]
    except (OSError, ValueError, KeyError, TypeError):  # none yet, or unreadable: the served lists count
        return
    directory.trust.learn([], crls)


def remember_revocations(directory: Directory, path: Path) -> None:
    """The newest list of each CA the anchor holds now (the directory's and the remembered ones)."""
    if directory.trust is None:
        return
    crls = [b64(c.public_bytes(serialization.Encoding.DER)) for c in directory.trust.revocations.crls]
    # Beside the state, saved first (its folder is there); named per process, so that two
    # verifications of one log side by side each replace the file whole.
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps({"revocation_lists": crls}))
    os.replace(temporary, path)


def _same_body(a: str, b: str) -> bool:
    try:
        return parse_note(a).body == parse_note(b).body
    except NoteError:
        return False


def _check_cosigned(note: str, directory: Directory, origin: str, key, state: AuditorState, report) -> None:
    """The witness's cosigned checkpoint must be signed by the log and agree with the entries."""
    try:
        cp = verify_checkpoint(note, origin, key)
        verify_cosignature(note, f"xinyi/{directory.registry_id}", public_keys(directory.registry_certs()))
    except NoteError as e:
        report.fail(f"cosigned checkpoint: {e}")
        return
    if cp.size <= state.size and merkle.root_of(state.leaf_hashes[: cp.size]) != cp.root:
        report.fail(f"the witness cosigned size {cp.size} with a root these entries do not give: split view", cp.size - 1)


def evidence_bundle(response: audit_pb2.GetCheckpointResponse, entries: list[tuple[int, bytes]]) -> dict[str, bytes]:
    """The files of an evidence bundle, by name: every entry, the signed checkpoint (and the
    witness's cosigned one) and the registry-signed directory, which is all `xinyi audit verify
    --offline DIR` needs besides the national root."""
    lines = "".join(json.dumps({"index": index, "leaf_input": b64(leaf_input)}, ensure_ascii=False) + "\n"
                    for index, leaf_input in entries)
    files = {"entries.jsonl": lines.encode(), "checkpoint.txt": response.checkpoint.encode()}
    if response.cosigned_checkpoint:
        files["cosigned-checkpoint.txt"] = response.cosigned_checkpoint.encode()
    files["directory.bin"] = response.directory.SerializeToString(deterministic=True)
    return files


ANSWERED = {"ok", "no_data", "denied"}  # outcomes that mean the node decided, and so logged


async def reconcile(identity: Identity, registry: str | list[str]) -> dict:
    """Join the registry's routings with each node's log by request hash; list what is missing.

    A node's answer to a relayed query must be in the registry's log: its `forward_query` record,
    written before the query left the registry (or, in logs from before that record existed, the
    `route_query` record). A node the registry recorded as having decided (ok, no_data, denied in
    a `route_query` outcome) must have the query in its log. A forwarding with no outcome (the
    registry stopped while the nodes answered) is listed, but is no discrepancy: the nodes' logs
    say what they answered."""
    from registry.routing import FORWARD_QUERY
    from xinyi.audit.log import RETRACT
    from xinyi.client import AuditClient
    from xinyi.crypto.identity import Principal

    async with AuditClient(identity, registry, Role.REGISTRY) as client:
        _, directory, entries = await fetch_log(client)
    routed: dict[tuple[str, str], int] = {}  # (node, request hash) -> registry index, where the node decided
    asked: set[tuple[str, str]] = set()      # every (node, request hash) the registry relayed
    forwarded: dict[str, tuple[int, list[str]]] = {}  # request hash -> (registry index, nodes)
    with_outcome: set[str] = set()
    for index, leaf_input in entries:
        r = audit_pb2.AuditRecord.FromString(leaf_input)
        if r.decision != audit_pb2.DECISION_ALLOW:
            continue
        if r.action == FORWARD_QUERY:
            nodes = r.detail.split()
            forwarded[r.request_hash] = (index, nodes)
            asked.update((node, r.request_hash) for node in nodes)
        elif r.action == "route_query":
            with_outcome.add(r.request_hash)
            for part in r.detail.split():
                node, _, outcome = part.partition("=")
                asked.add((node, r.request_hash))
                if outcome in ANSWERED:
                    routed[(node, r.request_hash)] = index
    answered: dict[tuple[str, str], int] = {}
    retracted: list[dict] = []  # entries a node's log retracted (xinyi.audit.log: a commit whose reply was lost)
    unreachable: dict[str, str] = {}
    for node_id, entry in sorted(directory.nodes.items()):
        try:
            async with AuditClient(identity, entry.endpoint, Principal(Role.NODE, node_id)) as client:
                _, _, node_entries = await fetch_log(client)
        except Exception as e:  # noqa: BLE001 - one node down is reported, not fatal
            unreachable[node_id] = str(e)
            continue
        for index, leaf_input in node_entries:
            r = audit_pb2.AuditRecord.FromString(leaf_input)
            if r.action == "query" and r.relayed_by == directory.registry_id and r.request_hash:
                answered[(node_id, r.request_hash)] = index
            elif r.action == RETRACT:
                retracted.append({"node": node_id, "request_hash": r.request_hash, "node_index": index,
                                  "retracts": r.detail})
    checked = {n for n in directory.nodes if n not in unreachable}
    missing_on_nodes = [{"node": n, "request_hash": h, "registry_index": i}
                        for (n, h), i in sorted(routed.items()) if n in checked and (n, h) not in answered]
    missing_on_registry = [{"node": n, "request_hash": h, "node_index": i}
                           for (n, h), i in sorted(answered.items()) if (n, h) not in asked]
    without_outcome = [{"request_hash": h, "registry_index": i, "nodes": nodes}
                       for h, (i, nodes) in sorted(forwarded.items(), key=lambda f: f[1][0]) if h not in with_outcome]
    return {"routings_checked": len(routed), "node_entries_checked": len(answered),
            "missing_on_nodes": missing_on_nodes, "missing_on_registry": missing_on_registry,
            "unreachable_nodes": unreachable, "routings_without_outcome": without_outcome,
            "retracted_on_nodes": retracted}
