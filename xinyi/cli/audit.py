"""`xinyi audit ...`: the auditor's commands (log, checkpoint, entries, proof, consistency,
verify, export, compare, reconcile). JSON output follows RFC 6962 section 4 shapes."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path

from xinyi.audit import merkle
from xinyi.audit.checkpoint import Checkpoint, NoteError, parse_note
from xinyi.audit.verify import verify_checkpoint, verify_log
from xinyi.auditing import (AuditCommandError, evidence_bundle, fetch_log, log_key, reconcile,  # noqa: F401 (for callers)
                            state_file, verify_and_remember, verify_fetched)
from xinyi.cli.common import EXIT_USAGE, CommandError, add_registry_argument, load_identity, print_json, run_client
from xinyi.clock import utc_text
from xinyi.crypto.envelope import claimed_time
from xinyi.crypto.identity import Role
from xinyi.crypto.pki import Identity
from xinyi.directory import Directory
from xinyi.v1 import audit_pb2, directory_pb2, envelope_pb2

b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731




def _target(args) -> tuple[str, Role]:
    return (args.node, Role.NODE) if args.node else (args.registry, Role.REGISTRY)


def sth_json(response: audit_pb2.GetCheckpointResponse) -> dict:
    note = parse_note(response.checkpoint)
    return {
        "tree_size": note.checkpoint.size,
        "timestamp": response.timestamp_ms,
        "sha256_root_hash": b64(note.checkpoint.root),
        "tree_head_signature": b64(note.signatures[0].payload) if note.signatures else "",
        "checkpoint": response.checkpoint,
        "cosigned_checkpoint": response.cosigned_checkpoint or None,
    }


def state_path(args, origin: str) -> Path:
    return Path(args.state) if args.state else state_file(origin)


def _report(report, args) -> None:
    if args.json:
        print_json(report.to_json())
    elif report.ok:
        seen = f"; consistent with the {report.previous_size} entries verified before" if report.previous_size else ""
        print(f"{report.origin}: OK, {report.entries_checked} entries hash to the signed root "
              f"{b64(report.root)} (size {report.size}){seen}")
    if not report.ok:
        bad = f" (first bad index {report.first_bad_index})" if report.first_bad_index is not None else ""
        raise AuditCommandError(f"{report.origin}: verification FAILED{bad}: " + "; ".join(report.problems))


# --- what a checkpoint signs -----------------------------------------------------------------
COSIGNED_HEADING = "newest cosigned checkpoint:"


def checkpoint_note(text: str) -> str:
    """The signed note in what `xinyi audit checkpoint` printed or wrote: the note itself (--out),
    its text output (the note, then the cosigned one under a heading), or its --json output."""
    if text.lstrip().startswith("{"):
        try:
            return json.loads(text)["checkpoint"]
        except (ValueError, KeyError, TypeError):
            raise NoteError("JSON without a \"checkpoint\" note") from None
    return text.split(f"\n{COSIGNED_HEADING}\n", 1)[0]


async def signed_checkpoint(client) -> tuple[audit_pb2.GetCheckpointResponse, Directory, Checkpoint]:
    """The log's latest checkpoint, its signature checked with the log owner's key from the
    registry-signed directory (itself checked against the national root)."""
    response = await client.checkpoint()
    directory = Directory.verify(response.directory, client.identity.trust())
    try:
        origin = parse_note(response.checkpoint).checkpoint.origin
        return response, directory, verify_checkpoint(response.checkpoint, origin, log_key(directory, origin))
    except NoteError as e:
        raise AuditCommandError(f"the log's checkpoint does not verify against its key in the signed directory: {e}") from None


async def prefix_root(client, size: int, signed: Checkpoint) -> bytes:
    """The root of the log's first `size` entries, proven to be a prefix of the signed tree:
    from entry size-1 and its inclusion proof, then the log's consistency proof to the signed
    size, verified against the signed root."""
    if size == signed.size:
        return signed.root
    if not 0 < size < signed.size:
        raise AuditCommandError(f"{signed.origin}: size {size} is not within its signed checkpoint (size {signed.size})")
    (last,) = await client.entries(size - 1, size - 1)
    path = (await client.inclusion_proof(size, index=size - 1)).audit_path
    root = merkle.root_from_inclusion_proof(merkle.leaf_hash(last.leaf_input), size - 1, size, list(path))
    proof = await client.consistency_proof(size, signed.size)
    if root is None or not merkle.verify_consistency(size, signed.size, root, signed.root, proof):
        raise AuditCommandError(f"{signed.origin}: FAILED: the log cannot prove that its tree of size {size} is a prefix "
                                f"of the tree of size {signed.size} it signed")
    return root


def _signed_json(response: audit_pb2.GetCheckpointResponse, signed: Checkpoint) -> dict:
    return {"origin": signed.origin, "tree_size": signed.size, "sha256_root_hash": b64(signed.root),
            "timestamp": response.timestamp_ms, "signed_by": signed.origin,
            "key": "the log owner's signing key in the registry-signed directory", "checkpoint": response.checkpoint}


def _signed_text(response: audit_pb2.GetCheckpointResponse, signed: Checkpoint) -> str:
    return f"whose root {b64(signed.root)} is signed by {signed.origin} at {utc_text(response.timestamp_ms)}"


def _tree_text(size: int, root: bytes, response, signed: Checkpoint) -> str:
    """'the tree of size S whose root R is signed by O at T', or, for an earlier size, the prefix."""
    if size == signed.size:
        return f"the tree of size {size} {_signed_text(response, signed)}"
    return (f"the tree of size {size} (root {b64(root)}), a prefix of the tree of size {signed.size} "
            f"{_signed_text(response, signed)}")


def _verdict(out: dict, args) -> None:
    """Print what was checked; a check that failed exits 1."""
    if args.json:
        print_json(out)
    else:
        print(out["statement"])
    if not out["verified"]:
        raise AuditCommandError(out["statement"])


# --- commands ----------------------------------------------------------------------------------
async def cmd_checkpoint(client, args) -> None:
    response = await client.checkpoint()
    if args.out:
        Path(args.out).write_text(response.checkpoint)  # the note alone: what `audit compare` takes
    if args.json:
        print_json(sth_json(response))
        return
    print(response.checkpoint, end="")
    if response.cosigned_checkpoint:
        print(f"\n{COSIGNED_HEADING}\n" + response.cosigned_checkpoint, end="")


async def cmd_entries(client, args) -> None:
    entries = await client.entries(args.start, args.end)
    if args.json:
        print_json({"entries": [{"leaf_input": b64(e.leaf_input), "extra_data": ""} for e in entries]})
        return
    for e in entries:
        r = audit_pb2.AuditRecord.FromString(e.leaf_input)
        print(f"{e.index:>6} {b64(merkle.leaf_hash(e.leaf_input))} {r.action} {r.caller_role}/{r.caller_id} {r.uscc} {r.reason[:60]}")


async def cmd_proof(client, args) -> None:
    """An entry's inclusion proof (get-proof-by-hash), verified against the signed checkpoint."""
    leaf_hash = base64.b64decode(args.hash) if args.hash else None
    if args.size:  # asked first, so that a size beyond the log is the log's own OUT_OF_RANGE
        proof = await client.inclusion_proof(args.size, index=args.index, leaf_hash=leaf_hash)
    response, _, signed = await signed_checkpoint(client)
    size = args.size or signed.size
    if size > signed.size:
        raise AuditCommandError(f"--size {size}: the log's signed checkpoint has {signed.size} entries")
    if not args.size:
        proof = await client.inclusion_proof(size, index=args.index, leaf_hash=leaf_hash)
    index = proof.leaf_index
    if leaf_hash is None:  # the entry as the log serves it is what must be in the tree
        (entry,) = await client.entries(index, index)
        leaf_hash = merkle.leaf_hash(entry.leaf_input)
    root = await prefix_root(client, size, signed)
    ok = merkle.verify_inclusion(leaf_hash, index, size, list(proof.audit_path), root)
    tree = _tree_text(size, root, response, signed)
    statement = (f"entry {index} is in {tree}: verified" if ok else
                 f"entry {index}: FAILED: its inclusion proof does not lead to the root of {tree}")
    _verdict({"leaf_index": index, "audit_path": [b64(h) for h in proof.audit_path], "leaf_hash": b64(leaf_hash),
              "tree_size": size, "sha256_root_hash": b64(root), "signed_checkpoint": _signed_json(response, signed),
              "verified": ok, "statement": statement}, args)


async def cmd_consistency(client, args) -> None:
    """A consistency proof (get-sth-consistency), verified: against a checkpoint the auditor kept
    (--checkpoint) and the log's signed checkpoint."""
    response, directory, signed = await signed_checkpoint(client)
    earlier = None
    if args.checkpoint:
        earlier = _verified_note_file(args.checkpoint, directory)
        if earlier.origin != signed.origin:
            raise AuditCommandError(f"--checkpoint {args.checkpoint}: a checkpoint of {earlier.origin}, not of {signed.origin}")
        if args.first and args.first != earlier.size:
            raise AuditCommandError(f"--first {args.first}: the checkpoint in {args.checkpoint} has size {earlier.size}")
    first = earlier.size if earlier else args.first
    if not first:
        raise AuditCommandError("give --first SIZE or --checkpoint FILE (a checkpoint you kept)")
    second = args.second or signed.size
    if not 0 < first <= second <= signed.size:
        raise AuditCommandError(f"sizes {first} and {second}: need 0 < first <= second <= {signed.size}, the signed size")
    proof = await client.consistency_proof(first, second) if first < second else []
    second_root = await prefix_root(client, second, signed)
    first_root = earlier.root if earlier else await prefix_root(client, first, signed)
    ok = merkle.verify_consistency(first, second, first_root, second_root, proof)
    if earlier:
        before = f"the checkpoint in {args.checkpoint} (size {first}, root {b64(first_root)}, signed by {earlier.origin})"
    else:
        before = f"the tree of size {first} (root {b64(first_root)})"
    tree = _tree_text(second, second_root, response, signed)
    statement = (f"{before} is a prefix of {tree}: verified" if ok else
                 f"FAILED: {before} is not a prefix of {tree}: the log shows two histories")
    _verdict({"consistency": [b64(h) for h in proof], "first": first, "second": second,
              "first_root": b64(first_root), "second_root": b64(second_root),
              "signed_checkpoint": _signed_json(response, signed), "verified": ok, "statement": statement}, args)


def _verified_note_file(path: str, directory: Directory) -> Checkpoint:
    """A checkpoint file (the note, or what `audit checkpoint` printed), signed by its log."""
    try:
        note = checkpoint_note(Path(path).read_text())
        origin = parse_note(note).checkpoint.origin
        return verify_checkpoint(note, origin, log_key(directory, origin))
    except OSError as e:
        raise AuditCommandError(f"{path}: {e.strerror}") from None
    except NoteError as e:
        raise AuditCommandError(f"{path}: not a checkpoint signed by its log ({e}); it proves nothing") from None


async def cmd_verify(client, args) -> None:
    response, directory, entries = await fetch_log(client)
    origin = parse_note(response.checkpoint).checkpoint.origin
    _report(await verify_and_remember(client, response, directory, entries, state_path(args, origin)), args)


async def cmd_export(client, args) -> None:
    response, directory, entries = await fetch_log(client)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, data in evidence_bundle(response, entries).items():
        (out / name).write_bytes(data)
    print(f"exported {len(entries)} entries and the signed checkpoint to {out}")


def verify_offline(identity: Identity, args) -> None:
    """Verify an exported archive with nothing but the national root."""
    folder = Path(args.offline)
    try:
        note = (folder / "checkpoint.txt").read_text()
        envelope = envelope_pb2.SignedEnvelope.FromString((folder / "directory.bin").read_bytes())
        lines = (folder / "entries.jsonl").read_text().splitlines()
    except OSError as e:
        raise AuditCommandError(f"--offline {folder}: {e}; export with `xinyi audit export --out DIR`") from None
    # The archive's directory as of its issue: a registry key revoked since does not undo it.
    directory = Directory.verify(envelope, identity.trust(),
                                 at=claimed_time(envelope, directory_pb2.DirectoryBody, "issued_at_ms"))
    entries = [(d["index"], base64.b64decode(d["leaf_input"])) for d in map(json.loads, lines)]
    origin = parse_note(note).checkpoint.origin
    report, _ = verify_log(note, origin, log_key(directory, origin), entries)
    _report(report, args)


async def cmd_compare(client, args) -> None:
    """Two signed checkpoints of one log that cannot both be true prove a split view.

    Same size with different roots proves it outright; for different sizes the log is asked
    for a consistency proof between them, and a proof that fails (or none at all) proves it.
    """
    from xinyi.client import ClientError

    response = await client.checkpoint()
    directory = Directory.verify(response.directory, client.identity.trust())
    checkpoints = []
    for path in (args.first_note, args.second_note):
        checkpoint = _verified_note_file(path, directory)
        checkpoints.append((checkpoint, checkpoint_note(Path(path).read_text())))
    (a, note_a), (b, note_b) = sorted(checkpoints, key=lambda c: c[0].size)
    if a.origin != b.origin:
        raise AuditCommandError(f"the checkpoints are of different logs ({a.origin}, {b.origin})")
    report = {"origin": a.origin, "first": note_a, "second": note_b, "split_view": False, "why": "", "consistency": None}
    if a.size == b.size:
        if a.root != b.root:
            report.update(split_view=True, why=f"both checkpoints are signed by the log for size {a.size} with different roots")
    else:
        try:
            proof = await client.consistency_proof(a.size, b.size)
            report["consistency"] = [b64(h) for h in proof]
            if not merkle.verify_consistency(a.size, b.size, a.root, b.root, proof):
                report.update(split_view=True,
                              why=f"the log's consistency proof from {a.size} to {b.size} does not verify against the signed roots")
        except ClientError as e:
            report.update(split_view=True, why=f"the log cannot prove that size {b.size} extends size {a.size}: {e}")
    if args.json:
        print_json(report)
    else:
        print(f"SPLIT VIEW of {a.origin}: {report['why']}" if report["split_view"] else
              f"{a.origin}: the checkpoints at sizes {a.size} and {b.size} are consistent")
    if report["split_view"]:
        raise AuditCommandError(f"{a.origin} shows two histories: {report['why']}")


# --- the commands ----------------------------------------------------------------------------
def cmd_audit_log(args) -> None:
    from xinyi.v1 import audit_pb2

    # Any identity may ask; the server's policy decides (and audits the refusal).
    identity = load_identity(args.identity)

    async def run():
        async with _audit_client(args, identity) as client:
            return await client.records(start=args.start, limit=args.limit, uscc=args.uscc or "")

    records = asyncio.run(run_client(run()))
    rows = [
        {
            "index": r.index, "at_ms": r.at_ms, "caller": f"{r.caller_role}/{r.caller_id}", "relayed_by": r.relayed_by,
            "action": r.action, "decision": audit_pb2.Decision.Name(r.decision).removeprefix("DECISION_").lower(),
            "uscc": r.uscc, "categories": list(r.categories), "purpose": r.purpose, "consent_id": r.consent_id,
            "policy_ids": list(r.policy_ids), "reason": r.reason, "request_hash": r.request_hash,
            "trace_id": r.trace_id, "detail": r.detail,
        }
        for r in records
    ]
    if args.json:
        print_json(rows)
        return
    import datetime as dt

    for r in rows:
        when = dt.datetime.fromtimestamp(r["at_ms"] / 1000, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        print(f"{r['index']:>5} {when} {r['decision']:<5} {r['action']:<15} {r['caller']:<30} {r['uscc']:<18} "
              f"{r['purpose']:<17} {','.join(r['categories']):<20} {r['reason'][:90]}")


def _audit_client(args, identity):
    from xinyi.client import AuditClient

    return AuditClient(identity, *_target(args))


def _run_audit(coro_factory, identity, args) -> None:
    async def run():
        async with _audit_client(args, identity) as client:
            return await coro_factory(client, args)

    try:
        asyncio.run(run_client(run()))
    except AuditCommandError as e:
        raise CommandError(str(e)) from None


def cmd_audit_online(args) -> None:
    commands = {"checkpoint": cmd_checkpoint, "entries": cmd_entries, "proof": cmd_proof,
                "consistency": cmd_consistency, "export": cmd_export, "compare": cmd_compare}
    _run_audit(commands[args.audit_cmd], load_identity(args.identity), args)


def cmd_audit_verify(args) -> None:
    identity = load_identity(args.identity)
    if args.offline:
        try:
            verify_offline(identity, args)
        except AuditCommandError as e:
            raise CommandError(str(e)) from None
        return
    if not (args.node or args.registry):
        raise CommandError("audit verify: give --node HOST:PORT, --registry HOST:PORT or --offline DIR", EXIT_USAGE)
    _run_audit(cmd_verify, identity, args)


def cmd_audit_reconcile(args) -> None:
    report = asyncio.run(run_client(reconcile(load_identity(args.identity), args.registry)))
    if args.json:
        print_json(report)
    else:
        print(f"{report['routings_checked']} routings and {report['node_entries_checked']} node answers checked")
        for m in report["missing_on_nodes"]:
            print(f"missing on node {m['node']}: request {m['request_hash'][:16]}… (registry entry {m['registry_index']})")
        for m in report["missing_on_registry"]:
            print(f"missing on registry: node {m['node']} entry {m['node_index']} request {m['request_hash'][:16]}…")
        for node, why in report["unreachable_nodes"].items():
            print(f"node {node} could not be read: {why}")
        for m in report["routings_without_outcome"]:
            print(f"note: request {m['request_hash'][:16]}… was forwarded to {', '.join(m['nodes'])} (registry entry "
                  f"{m['registry_index']}) and has no outcome record: the registry stopped before the answers came back")
        for m in report["retracted_on_nodes"]:
            print(f"note: node {m['node']} entry {m['node_index']} {m['retracts']} of request {m['request_hash'][:16]}…: "
                  f"its commit was made though the node was told it failed (a database failover), so nothing was answered")
    if report["missing_on_nodes"] or report["missing_on_registry"] or report["unreachable_nodes"]:
        raise CommandError("the logs do not reconcile; see the list above")
    if not args.json:
        print("every routing appears in the logs of the nodes that answered, and every relayed answer in the registry's")




def add_parser(sub) -> None:
    audit = sub.add_parser("audit", help="auditors: read and verify audit logs").add_subparsers(dest="audit_cmd", required=True)

    def audit_command(name: str, text: str, func, *, target_required: bool = True):
        a = audit.add_parser(name, help=text)
        a.add_argument("--identity", required=True, help="auditor identity directory, e.g. certs/auditor-NAME")
        where = a.add_mutually_exclusive_group(required=target_required)
        where.add_argument("--node", help="node HOST:PORT")
        add_registry_argument(where, required=False)
        a.add_argument("--json", action="store_true", help="print JSON (RFC 6962 shapes where they exist)")
        a.set_defaults(func=func)
        return a

    a = audit_command("log", "list a node's or the registry's audit records", cmd_audit_log)
    a.add_argument("--uscc", help="only records about this enterprise")
    a.add_argument("--start", type=int, default=0, help="first index (the log starts at 0)")
    a.add_argument("--limit", type=int, default=0, help="at most this many (default: all)")
    a = audit_command("checkpoint", "the latest signed checkpoint (get-sth)", cmd_audit_online)
    a.add_argument("--out", metavar="FILE", help="also write the signed note to FILE (for `audit compare`, "
                   "`audit consistency --checkpoint`)")
    a = audit_command("entries", "raw entries START..END inclusive (get-entries)", cmd_audit_online)
    a.add_argument("--start", type=int, required=True)
    a.add_argument("--end", type=int, required=True)
    a = audit_command("proof", "inclusion proof of an entry (get-proof-by-hash), verified against the signed checkpoint",
                      cmd_audit_online)
    which = a.add_mutually_exclusive_group(required=True)
    which.add_argument("--index", type=int, help="the entry's index")
    which.add_argument("--hash", help="base64 leaf hash, SHA-256(0x00 || entry)")
    a.add_argument("--size", type=int, help="tree size the proof is for (default: the signed checkpoint's)")
    a = audit_command("consistency", "consistency proof between two tree sizes (get-sth-consistency), verified",
                      cmd_audit_online)
    a.add_argument("--first", type=int, help="the earlier size (or give --checkpoint)")
    a.add_argument("--second", type=int, help="the later size (default: the signed checkpoint's)")
    a.add_argument("--checkpoint", metavar="FILE", help="a checkpoint of the earlier size you kept "
                   "(`audit checkpoint --out FILE`): its root is checked too")
    a = audit_command("verify", "recompute every hash and check the signed checkpoint and your last one",
                      cmd_audit_verify, target_required=False)
    a.add_argument("--state", help="where this auditor remembers the log (default ~/.local/state/xinyi/audit/)")
    a.add_argument("--offline", metavar="DIR", help="verify an archive written by `xinyi audit export`")
    a = audit_command("export", "write entries and the signed checkpoint to DIR, for archiving", cmd_audit_online)
    a.add_argument("--out", required=True, help="directory to write")
    a = audit_command("compare", "prove a split view from two checkpoints of one log", cmd_audit_online)
    a.add_argument("first_note", help="a checkpoint: the note, or what `audit checkpoint` printed (text or --json)")
    a.add_argument("second_note", help="another checkpoint of the same log")
    a = audit.add_parser("reconcile", help="every routing in the registry's log against each node's log")
    a.add_argument("--identity", required=True, help="auditor identity directory")
    add_registry_argument(a)
    a.add_argument("--json", action="store_true", help="print JSON")
    a.set_defaults(func=cmd_audit_reconcile)

