"""The `xinyi` command: one entry point for operators, banks, enterprises and auditors.

Exit status 0 when the command did what was asked; otherwise a one-line reason on stderr and
status 1 (refused, unreachable) or 2 (usage or validation error).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from xinyi.crypto.identity import Role

EXIT_FAILED = 1
EXIT_USAGE = 2

AREA_NAMES = {
    "110000": "Beijing", "310000": "Shanghai", "440000": "Guangdong", "440300": "Shenzhen",
    "510000": "Sichuan", "510100": "Chengdu", "510104": "Jinjiang", "510700": "Mianyang",
}


class CommandError(Exception):
    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


# --- helpers ---------------------------------------------------------------------------------
def _identity(path: str, *roles: Role):
    from xinyi.crypto.pki import Identity, PKIError

    try:
        identity = Identity.load(Path(path))
    except PKIError as e:
        raise CommandError(f"--identity: {e}", EXIT_USAGE) from None
    if roles and identity.principal.role not in roles:
        wanted = " or ".join(str(r) for r in roles)
        raise CommandError(f"--identity {path} is a {identity.principal.role} identity; this command needs one of: {wanted}", EXIT_USAGE)
    return identity


def _categories(text: str) -> list[str]:
    return [c.strip() for c in text.split(",") if c.strip()]


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, ensure_ascii=False, indent=2, sort_keys=False))


def _area(node_id: str) -> str:
    name = AREA_NAMES.get(node_id)
    return f"{node_id} {name}" if name else node_id


def _client_error(e) -> CommandError:
    f = e.failure
    hints = {
        "UNAVAILABLE": " (is the server running, and is this the right address?)",
        "DEADLINE_EXCEEDED": " (the server did not answer in time)",
    }
    return CommandError(f"{f.code}: {f.message}{hints.get(f.code, '')}")


async def _run_client(coro):
    from xinyi import telemetry
    from xinyi.client import ClientError
    from xinyi.errors import Refusal

    telemetry.setup("xinyi-cli")
    try:
        return await coro
    except ClientError as e:
        raise _client_error(e) from None
    except Refusal as e:
        raise CommandError(e.message, EXIT_USAGE) from None


def settle_garbage_collector() -> None:
    """A server's start-up objects (policies, the Merkle tree, caches) live as long as it does:
    freeze them out of the collector's scans, and collect young objects less often (a query
    allocates thousands; the default threshold of 700 ran a collection every few queries)."""
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)


def _serve(server) -> None:
    """Run a server until SIGINT or SIGTERM, then stop it gracefully. SIGHUP reloads policies."""
    from xinyi.policy import PolicyError

    def reload() -> None:
        try:
            server.reload_policies()
        except PolicyError as e:
            logging.getLogger("xinyi").error("policies NOT reloaded, the old ones stay in force: %s", e)

    async def main() -> None:
        port = await server.start()
        settle_garbage_collector()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, reload)
        logging.getLogger("xinyi").info("%s serving on port %d", server.identity.principal, port)
        print(f"{server.identity.principal} listening on port {port}", flush=True)
        await stop.wait()
        await server.stop()

    asyncio.run(main())


# --- pki -------------------------------------------------------------------------------------
def cmd_pki_init(args) -> None:
    from xinyi.crypto.pki import PKIError, init_root

    try:
        init_root(Path(args.dir))
    except PKIError as e:
        raise CommandError(str(e), EXIT_USAGE) from None
    print(f"root CA written to {Path(args.dir) / 'ca'} (keep ca.key offline)")


def cmd_pki_issue(args) -> None:
    import datetime as dt

    from xinyi.crypto.identity import IdentityError
    from xinyi.crypto.pki import PKIError, issue_identity

    validity = {}
    if args.days:
        now = dt.datetime.now(dt.timezone.utc)
        validity = {"not_before": now - dt.timedelta(minutes=5), "not_after": now + dt.timedelta(days=args.days)}
    from xinyi.crypto.identity import check_principal_id

    try:
        check_principal_id(Role(args.role), args.id)  # the id first: it is the likelier mistake
    except IdentityError as e:
        raise CommandError(f"--id: {e}", EXIT_USAGE) from None
    if Role(args.role) in (Role.BANK, Role.GUARANTOR) and not args.licence:
        raise CommandError("--licence: a bank or guarantor needs its financial licence number, e.g. B0014H144030001",
                           EXIT_USAGE)
    try:
        out = issue_identity(Path(args.dir), Role(args.role), args.id, licence=args.licence or "", **validity)
    except (PKIError, IdentityError) as e:
        raise CommandError(f"--id: {e}" if isinstance(e, IdentityError) else str(e), EXIT_USAGE) from None
    print(f"{args.role}/{args.id} identity written to {out}")


# --- servers ---------------------------------------------------------------------------------
def cmd_registry_serve(args) -> None:
    from registry.server import RegistryConfig, RegistryServer

    identity = _identity(args.identity, Role.REGISTRY)
    _serve(RegistryServer(RegistryConfig(identity, args.listen, args.db, **_policy_dir(args))))


def cmd_node_serve(args) -> None:
    identity = _identity(args.identity, Role.NODE)
    if args.workers < 1:
        raise CommandError(f"--workers: must be at least 1, got {args.workers}", EXIT_USAGE)
    pool, worker = None, bool(args.sequencer)
    sequencer = Path(args.sequencer) if args.sequencer else None
    if worker:
        from node.workers import SUPERVISOR_ENV, die_with_supervisor

        if SUPERVISOR_ENV not in os.environ:
            raise CommandError("--sequencer is set by `xinyi node serve --workers N` for its workers; "
                               "do not pass it yourself", EXIT_USAGE)
        die_with_supervisor(int(os.environ[SUPERVISOR_ENV]))
    if args.workers > 1 and not worker:
        if args.listen.rsplit(":", 1)[-1] in ("0", ""):
            raise CommandError("--workers: the workers share one port, so --listen needs a fixed port (not 0)", EXIT_USAGE)
        from node.workers import start_workers

        serve_args = ["--identity", args.identity, "--listen", args.listen, "--registry", args.registry, "--db", args.db]
        serve_args += ["--advertise", args.advertise] if args.advertise else []
        serve_args += ["--policies", args.policies] if args.policies else []
        pool, sequencer = start_workers(serve_args, args.workers)  # before any gRPC object exists

    from node.server import NodeConfig, NodeServer

    server = NodeServer(NodeConfig(identity, args.listen, args.db, registry=args.registry, advertise=args.advertise,
                                   sequencer=sequencer, worker=worker, **_policy_dir(args)))
    if pool is not None:
        pool.attach(server)
    _serve(pool or server)


def _policy_dir(args) -> dict:
    return {"policy_dir": Path(args.policies)} if args.policies else {}


def cmd_node_ingest(args) -> None:
    from node.alerts import register_tables
    from node.ingest import format_progress, ingest_file
    from node.store import NodeStore

    store = NodeStore(args.db)
    register_tables(store)  # ingestion raises alerts for subscribed enterprises
    store.create_schema()
    interactive = sys.stderr.isatty()

    def progress(p) -> None:
        end = "\r" if interactive else "\n"
        print(format_progress(p), end=end, file=sys.stderr, flush=True)

    try:
        report = ingest_file(Path(args.file), store, category=args.category, progress=progress)
    except (ValueError, OSError) as e:
        raise CommandError(f"{args.file}: {e}", EXIT_USAGE) from None
    finally:
        store.close()
    if interactive:
        print(file=sys.stderr)
    for err in report.errors:
        print(f"bad line: {err}", file=sys.stderr)
    if report.error_count > len(report.errors):
        print(f"... and {report.error_count - len(report.errors)} more bad lines", file=sys.stderr)
    print(report.summary())
    if report.error_count and not report.inserted and not report.duplicates:
        raise CommandError(f"{args.file}: no line could be loaded; fix the lines reported above", EXIT_USAGE)


# --- consent ---------------------------------------------------------------------------------
def _consent_row(c) -> dict:
    from xinyi.v1 import consent_pb2

    name = lambda enum, value, prefix: enum.Name(value).removeprefix(prefix).lower()  # noqa: E731
    return {
        "consent_id": c.consent_id,
        "status": name(consent_pb2.ConsentStatus, c.status, "CONSENT_STATUS_"),
        "uscc": c.uscc,
        "grantee": c.grantee,
        "purpose": c.purpose,
        "categories": list(c.categories),
        "detail_level": name(consent_pb2.DetailLevel, c.detail_level, "DETAIL_LEVEL_"),
        "history_months": c.history_months,
        "fetch": name(consent_pb2.FetchType, c.fetch_type, "FETCH_TYPE_")
        + (f" {c.max_fetches}/{name(consent_pb2.FetchPeriod, c.fetch_period, 'FETCH_PERIOD_')}"
           if c.fetch_type == consent_pb2.FETCH_TYPE_PERIODIC else ""),
        "valid_until_ms": c.valid_until_ms,
        "signed_by": c.signed_by,
        "uses": c.uses,
        "last_used_ms": c.last_used_ms,
        "delivered_to": list(c.delivered_to),
        "pending": list(c.pending),
    }


def cmd_consent(args) -> None:
    from xinyi.client import EnterpriseClient
    from xinyi.v1 import audit_pb2

    identity = _identity(args.identity, Role.ENTERPRISE, *((Role.REPRESENTATIVE,) if args.action == "grant" else ()))
    if args.action == "grant" and identity.principal.role is Role.REPRESENTATIVE and not args.for_uscc:
        raise CommandError("--for: a representative names the enterprise it signs for", EXIT_USAGE)

    async def run():
        async with EnterpriseClient(identity, args.registry) as client:
            if args.action == "grant":
                return [await client.grant(
                    args.grantee, args.purpose, _categories(args.categories), args.days, uscc=args.for_uscc,
                    detail_level=args.detail, history_months=args.history_months, fetch_type=args.fetch,
                    max_fetches=args.max_fetches, fetch_period=args.period, co_grantee=args.co_grantee,
                )], {}
            if args.action in ("pause", "resume", "revoke"):
                return [await client.change(args.consent, args.action)], {}
            if args.action == "status":
                return [await client.status(args.consent)], {}
            consents = await client.list()
            accesses, _ = await client.accesses()
            per_consent: dict[str, int] = {}
            for a in accesses:
                if a.record.action == "query" and a.record.consent_id and a.record.decision == audit_pb2.DECISION_ALLOW:
                    per_consent[a.record.consent_id] = per_consent.get(a.record.consent_id, 0) + 1
            return consents, per_consent

    consents, accesses = asyncio.run(_run_client(run()))
    records = [_consent_row(c) for c in consents]
    for r in records:
        r["node_accesses"] = accesses.get(r["consent_id"], 0) if args.action == "list" else None
    if args.json:
        _print_json(records if args.action == "list" else records[0])
    elif args.action == "grant":
        print(records[0]["consent_id"])
        _consent_note(records[0])
    elif args.action in ("pause", "resume", "revoke"):
        print(f"{records[0]['consent_id']} is now {records[0]['status']}")
        _consent_note(records[0])
    else:
        if not records:
            print("no consents")
        import datetime as dt

        for r in records:
            last = (dt.datetime.fromtimestamp(r["last_used_ms"] / 1000, dt.timezone.utc).strftime("%Y-%m-%d %H:%M")
                    if r["last_used_ms"] else "never")
            seen = f", {r['node_accesses']} answers from nodes" if r["node_accesses"] is not None else ""
            print(f"{r['consent_id']}  {r['status']:<8} {r['grantee']}  {r['purpose']:<18} {r['detail_level']:<7} "
                  f"{r['fetch']:<14} {','.join(r['categories'])}  uses {r['uses']}, last {last}{seen}")


def cmd_delegate(args) -> None:
    from xinyi.client import EnterpriseClient

    identity = _identity(args.identity, Role.ENTERPRISE)

    async def run():
        async with EnterpriseClient(identity, args.registry) as client:
            return await client.delegate(args.representative, args.days, revoke=args.revoke)

    result = asyncio.run(_run_client(run()))
    state = "may now sign consents for" if result.active else "may no longer sign consents for"
    print(f"representative {result.representative} {state} {result.uscc}")


def _consent_note(r: dict) -> None:
    if r["delivered_to"]:
        print(f"delivered to nodes {', '.join(r['delivered_to'])}", file=sys.stderr)
    if r["pending"]:
        print(f"nodes {', '.join(r['pending'])} were unreachable; they pull it within seconds of coming back", file=sys.stderr)


# --- disputes --------------------------------------------------------------------------------
def _dispute_row(d) -> dict:
    from xinyi.v1 import dispute_pb2

    return {"dispute_id": d.dispute_id, "uscc": d.uscc, "node": d.node_id, "record_id": d.record_id,
            "status": dispute_pb2.DisputeStatus.Name(d.status).removeprefix("DISPUTE_STATUS_").lower(),
            "reason": d.reason, "filed_by": d.filed_by, "filed_at_ms": d.filed_at_ms, "due_ms": d.due_ms,
            "overdue": d.overdue, "resolution": d.resolution, "corrected_record_id": d.corrected_record_id or None}


def cmd_dispute(args) -> None:
    from xinyi.client import EnterpriseClient, OperatorClient

    async def run():
        if args.dispute_cmd == "file":
            async with EnterpriseClient(_identity(args.identity, Role.ENTERPRISE), args.registry) as client:
                return [await client.dispute(args.node_id, args.record, args.reason)]
        async with OperatorClient(_identity(args.identity, Role.NODE), args.node) as client:
            if args.dispute_cmd == "list":
                return await client.disputes(open_only=args.open, overdue_only=args.overdue)
            fields = None
            if args.fields:
                try:
                    fields = json.loads(args.fields)
                except ValueError as e:
                    raise CommandError(f"--fields: not JSON: {e}", EXIT_USAGE) from None
            return [await client.resolve(args.dispute, args.outcome, args.reason, fields)]

    rows = [_dispute_row(d) for d in asyncio.run(_run_client(run()))]
    if args.json:
        _print_json(rows if args.dispute_cmd == "list" else rows[0])
        return
    import datetime as dt

    day = lambda ms: dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).strftime("%Y-%m-%d")  # noqa: E731
    if not rows:
        print("no disputes")
    for r in rows:
        late = " OVERDUE" if r["overdue"] else ""
        print(f"{r['dispute_id']}  {r['status']:<9}{late} {r['uscc']} record {r['record_id'][:16]}…  filed {day(r['filed_at_ms'])}, "
              f"reply due {day(r['due_ms'])}: {r['reason'][:60]}" + (f"  -> {r['resolution']}" if r["resolution"] else ""))


# --- query -----------------------------------------------------------------------------------
def cmd_query(args) -> None:
    from xinyi.client import BankClient

    identity = _identity(args.identity, Role.BANK, Role.GUARANTOR)
    categories = _categories(args.categories)

    async def run():
        async with BankClient(identity, args.registry) as bank:
            return await bank.query(args.uscc, categories, args.purpose, args.consent, per_node_timeout_ms=args.timeout_ms)

    result = asyncio.run(_run_client(run()))
    if args.json:
        _print_json(result.to_json())
    else:
        _print_query(result)
    if not result.answered:
        reasons = "; ".join(f"{n.node}: {n.status}" + (f" ({n.error})" if n.error else "") for n in result.nodes)
        raise CommandError(f"no node answered: {reasons}")


def _print_query(result) -> None:
    print(f"enterprise {result.uscc}   request {result.request_hash[:16]}…")
    for n in result.nodes:
        mark = "verified" if n.verified else "not verified"
        print(f"\nnode {_area(n.node)}: {n.status} ({mark})" + (f" - {n.error}" if n.error else ""))
        for r in n.records:
            fields = ", ".join(f"{k}={v}" for k, v in r.items() if k not in ("category", "as_of", "source", "record_id", "disputed"))
            flag = "  [DISPUTED]" if r.get("disputed") else ""
            print(f"  {r['category']:<16} {r['as_of']}  {r['source']:<28} {fields}{flag}  (record {r['record_id'][:12]})")
        for i in n.indicators:
            print(f"  {i['category']:<16} {i['name']:<26} {json.dumps(i['value'], ensure_ascii=False):<22} as of {i['as_of']}")


# --- audit -----------------------------------------------------------------------------------
def cmd_audit_log(args) -> None:
    from xinyi.client import AuditClient
    from xinyi.v1 import audit_pb2

    # Any identity may ask; the server's policy decides (and audits the refusal).
    identity = _identity(args.identity)
    target = args.node or args.registry
    expect = Role.NODE if args.node else Role.REGISTRY

    async def run():
        async with AuditClient(identity, target, expect) as client:
            return await client.records(start=args.start, limit=args.limit, uscc=args.uscc or "")

    records = asyncio.run(_run_client(run()))
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
        _print_json(rows)
        return
    import datetime as dt

    for r in rows:
        when = dt.datetime.fromtimestamp(r["at_ms"] / 1000, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        print(f"{r['index']:>5} {when} {r['decision']:<5} {r['action']:<15} {r['caller']:<30} {r['uscc']:<18} "
              f"{r['purpose']:<17} {','.join(r['categories']):<20} {r['reason'][:90]}")


def _audit_client(args, identity):
    from xinyi.client import AuditClient

    target = args.node or args.registry
    return AuditClient(identity, target, Role.NODE if args.node else Role.REGISTRY)


def _run_audit(coro_factory, identity, args) -> None:
    from xinyi.auditcli import AuditCommandError

    async def run():
        async with _audit_client(args, identity) as client:
            return await coro_factory(client, args)

    try:
        asyncio.run(_run_client(run()))
    except AuditCommandError as e:
        raise CommandError(str(e)) from None


def cmd_audit_online(args) -> None:
    from xinyi import auditcli

    commands = {"checkpoint": auditcli.cmd_checkpoint, "entries": auditcli.cmd_entries, "proof": auditcli.cmd_proof,
                "consistency": auditcli.cmd_consistency, "export": auditcli.cmd_export, "compare": auditcli.cmd_compare}
    _run_audit(commands[args.audit_cmd], _identity(args.identity), args)


def cmd_audit_verify(args) -> None:
    from xinyi import auditcli

    identity = _identity(args.identity)
    if args.offline:
        try:
            auditcli.verify_offline(identity, args)
        except auditcli.AuditCommandError as e:
            raise CommandError(str(e)) from None
        return
    if not (args.node or args.registry):
        raise CommandError("audit verify: give --node HOST:PORT, --registry HOST:PORT or --offline DIR", EXIT_USAGE)
    _run_audit(auditcli.cmd_verify, identity, args)


def cmd_audit_reconcile(args) -> None:
    from xinyi.auditcli import reconcile

    report = asyncio.run(_run_client(reconcile(_identity(args.identity), args.registry)))
    if args.json:
        _print_json(report)
    else:
        print(f"{report['routings_checked']} routings and {report['node_entries_checked']} node answers checked")
        for m in report["missing_on_nodes"]:
            print(f"missing on node {m['node']}: request {m['request_hash'][:16]}… (registry entry {m['registry_index']})")
        for m in report["missing_on_registry"]:
            print(f"missing on registry: node {m['node']} entry {m['node_index']} request {m['request_hash'][:16]}…")
        for node, why in report["unreachable_nodes"].items():
            print(f"node {node} could not be read: {why}")
    if report["missing_on_nodes"] or report["missing_on_registry"] or report["unreachable_nodes"]:
        raise CommandError("the logs do not reconcile; see the list above")
    if not args.json:
        print("every routing appears in the logs of the nodes that answered, and every relayed answer in the registry's")


def cmd_access_list(args) -> None:
    from xinyi.client import EnterpriseClient

    identity = _identity(args.identity, Role.ENTERPRISE)

    async def run():
        async with EnterpriseClient(identity, args.registry) as client:
            return await client.accesses()

    accesses, problems = asyncio.run(_run_client(run()))
    if args.json:
        _print_json({"uscc": identity.principal.id, "accesses": [a.to_json() for a in accesses], "unverified_nodes": problems})
    else:
        import datetime as dt

        print(f"accesses to {identity.principal.id}'s data, each proven against its node's signed checkpoint")
        for a in accesses:
            j = a.to_json()
            when = dt.datetime.fromtimestamp(j["at_ms"] / 1000, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
            print(f"{when} node {a.node} #{j['index']:<5} {j['decision']:<5} {j['action']:<15} {j['institution']:<28} "
                  f"{j['purpose']:<17} {','.join(j['categories']):<24} {j['consent_id'][:12]}")
        for node, why in problems.items():
            print(f"node {node}: not verified: {why}", file=sys.stderr)
    if problems:
        raise CommandError(f"{len(problems)} node(s) gave no verifiable access list")


# --- parser ----------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="xinyi", description="Xinyi Loan federated credit-information network")
    p.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    pki = sub.add_parser("pki", help="national root CA and identity bundles").add_subparsers(dest="pki", required=True)
    a = pki.add_parser("init", help="create the national root CA in DIR/ca")
    a.add_argument("--dir", required=True, help="directory for the PKI (e.g. certs)")
    a.set_defaults(func=cmd_pki_init)
    a = pki.add_parser("issue", help="issue an identity bundle into DIR/ROLE-ID")
    a.add_argument("--dir", required=True, help="directory holding ca/ (from `pki init`)")
    a.add_argument("--role", required=True, choices=[r.value for r in Role])
    a.add_argument("--id", required=True, help="node: 6-digit area code; bank, guarantor, enterprise: USCC; registry, auditor: a name")
    a.add_argument("--days", type=int, default=0, help="validity in days (default 365)")
    a.add_argument("--licence", help="bank or guarantor: its financial licence number (required for them)")
    a.set_defaults(func=cmd_pki_issue)

    reg = sub.add_parser("registry", help="run the national registry").add_subparsers(dest="registry_cmd", required=True)
    a = reg.add_parser("serve", help="serve the registry over mutual TLS")
    a.add_argument("--identity", required=True, help="registry identity directory, e.g. certs/registry-national")
    a.add_argument("--listen", required=True, help="HOST:PORT to listen on")
    a.add_argument("--db", required=True, help="sqlite:///FILE or postgresql+psycopg://USER@HOST/DB")
    a.add_argument("--policies", help="Cedar policy directory (default: the bundled policies/)")
    a.set_defaults(func=cmd_registry_serve)

    node = sub.add_parser("node", help="run or load a regional node").add_subparsers(dest="node_cmd", required=True)
    a = node.add_parser("serve", help="serve a node over mutual TLS and register with the registry")
    a.add_argument("--identity", required=True, help="node identity directory, e.g. certs/node-510100")
    a.add_argument("--listen", required=True, help="HOST:PORT to listen on")
    a.add_argument("--registry", required=True, help="registry HOST:PORT")
    a.add_argument("--db", required=True, help="sqlite:///FILE or postgresql+psycopg://USER@HOST/DB")
    a.add_argument("--advertise", help="HOST:PORT the registry and banks use to reach this node (default: --listen)")
    a.add_argument("--policies", help="Cedar policy directory (default: the bundled policies/)")
    a.add_argument("--workers", type=int, default=1,
                   help="serving processes sharing the port (default 1); the audit log stays one sequence")
    a.add_argument("--sequencer", help=argparse.SUPPRESS)  # set by --workers for its worker processes
    a.set_defaults(func=cmd_node_serve)
    a = node.add_parser("ingest", help="load JSON Lines (or CSV with --category) into a node's store")
    a.add_argument("--db", required=True, help="the node's database URL")
    a.add_argument("--category", help="the category of every line (required for CSV)")
    a.add_argument("file", help="a .jsonl or .csv file")
    a.set_defaults(func=cmd_node_ingest)

    consent = sub.add_parser("consent", help="an enterprise's consents").add_subparsers(dest="action", required=True)
    for name, text in (("grant", "sign and grant a consent; prints its id"), ("pause", "pause a consent (signed)"),
                       ("resume", "resume a paused consent (signed)"), ("revoke", "revoke a consent for good (signed)"),
                       ("list", "this enterprise's consents: state, uses, last use, accesses"),
                       ("status", "show one consent's status")):
        a = consent.add_parser(name, help=text)
        a.add_argument("--identity", required=True, help="enterprise (or, for grant, representative) identity directory")
        a.add_argument("--registry", required=True, help="registry HOST:PORT")
        a.add_argument("--json", action="store_true", help="print JSON")
        if name == "grant":
            a.add_argument("--grantee", required=True, help="USCC of the bank or guarantor")
            a.add_argument("--purpose", required=True, help="credit_assessment, loan_monitoring or guarantee")
            a.add_argument("--categories", required=True, help="comma-separated, e.g. registration,tax")
            a.add_argument("--days", type=int, required=True, help="how long the consent lasts")
            a.add_argument("--detail", choices=["summary", "detail"], default="detail",
                           help="summary: indicators only; detail: the records, personal identifiers masked")
            a.add_argument("--history-months", type=int, default=12, help="how far back the data may go (default 12)")
            a.add_argument("--fetch", choices=["once", "periodic"], default="once", help="once, or periodic with a ceiling")
            a.add_argument("--max-fetches", type=int, default=0, help="periodic: at most this many fetches per --period")
            a.add_argument("--period", choices=["day", "month"], default="", help="periodic: the fetch period")
            a.add_argument("--for", dest="for_uscc", help="a representative: the enterprise it signs for")
            a.add_argument("--co-grantee", default="", help="a second institution for the same loan (e.g. the bank beside a guarantor)")
        if name in ("pause", "resume", "revoke", "status"):
            a.add_argument("--consent", required=True, help="the consent id")
        a.set_defaults(func=cmd_consent)
    a = consent.add_parser("delegate", help="name a representative who may sign consents for this enterprise")
    a.add_argument("--identity", required=True, help="enterprise identity directory")
    a.add_argument("--registry", required=True, help="registry HOST:PORT")
    a.add_argument("--representative", required=True, help="the representative's id (its certificate's id)")
    a.add_argument("--days", type=int, default=365, help="how long the delegation lasts")
    a.add_argument("--revoke", action="store_true", help="end the delegation now")
    a.set_defaults(func=cmd_delegate)

    dispute = sub.add_parser("dispute", help="disputes about records (enterprises file, node operators resolve)")
    dispute = dispute.add_subparsers(dest="dispute_cmd", required=True)
    a = dispute.add_parser("file", help="an enterprise objects to one of its records")
    a.add_argument("--identity", required=True, help="enterprise identity directory")
    a.add_argument("--registry", required=True, help="registry HOST:PORT")
    a.add_argument("--node", dest="node_id", required=True, help="the node holding the record, e.g. 510100")
    a.add_argument("--record", required=True, help="the record id, as shown in an answer")
    a.add_argument("--reason", required=True, help="what is wrong")
    a.add_argument("--json", action="store_true")
    a.set_defaults(func=cmd_dispute)
    for name, text in (("list", "the node's disputes (operator, with the node's identity)"),
                       ("resolve", "answer a dispute: corrected or confirmed, with a written reason")):
        a = dispute.add_parser(name, help=text)
        a.add_argument("--identity", required=True, help="the node's own identity directory, e.g. certs/node-510100")
        a.add_argument("--node", required=True, help="the node's HOST:PORT")
        a.add_argument("--json", action="store_true")
        if name == "list":
            a.add_argument("--open", action="store_true", help="open disputes only")
            a.add_argument("--overdue", action="store_true", help="open disputes past their 20-day reply date")
        else:
            a.add_argument("--dispute", required=True, help="the dispute id")
            a.add_argument("--outcome", required=True, choices=["corrected", "confirmed"])
            a.add_argument("--reason", required=True, help="the written reply to the enterprise")
            a.add_argument("--fields", help="corrected: the record's fields as JSON, as they should be")
        a.set_defaults(func=cmd_dispute)

    a = sub.add_parser("query", help="a bank's signed query through the registry")
    a.add_argument("--identity", required=True, help="bank or guarantor identity directory")
    a.add_argument("--registry", required=True, help="registry HOST:PORT")
    a.add_argument("--uscc", required=True, help="the enterprise's 18-character USCC")
    a.add_argument("--purpose", required=True, help="credit_assessment, loan_monitoring or guarantee")
    a.add_argument("--categories", required=True, help="comma-separated, e.g. registration,tax")
    a.add_argument("--consent", required=True, help="the consent id the enterprise gave you")
    a.add_argument("--timeout-ms", type=int, default=0, help="per-node deadline (default 3000)")
    a.add_argument("--json", action="store_true", help="print one JSON object")
    a.set_defaults(func=cmd_query)

    audit = sub.add_parser("audit", help="auditors: read and verify audit logs").add_subparsers(dest="audit_cmd", required=True)

    def audit_command(name: str, text: str, func, *, target_required: bool = True):
        a = audit.add_parser(name, help=text)
        a.add_argument("--identity", required=True, help="auditor identity directory, e.g. certs/auditor-NAME")
        where = a.add_mutually_exclusive_group(required=target_required)
        where.add_argument("--node", help="node HOST:PORT")
        where.add_argument("--registry", help="registry HOST:PORT")
        a.add_argument("--json", action="store_true", help="print JSON (RFC 6962 shapes where they exist)")
        a.set_defaults(func=func)
        return a

    a = audit_command("log", "list a node's or the registry's audit records", cmd_audit_log)
    a.add_argument("--uscc", help="only records about this enterprise")
    a.add_argument("--start", type=int, default=0, help="first index (the log starts at 0)")
    a.add_argument("--limit", type=int, default=0, help="at most this many (default: all)")
    audit_command("checkpoint", "the latest signed checkpoint (get-sth)", cmd_audit_online)
    a = audit_command("entries", "raw entries START..END inclusive (get-entries)", cmd_audit_online)
    a.add_argument("--start", type=int, required=True)
    a.add_argument("--end", type=int, required=True)
    a = audit_command("proof", "inclusion proof of an entry (get-proof-by-hash)", cmd_audit_online)
    which = a.add_mutually_exclusive_group(required=True)
    which.add_argument("--index", type=int, help="the entry's index")
    which.add_argument("--hash", help="base64 leaf hash, SHA-256(0x00 || entry)")
    a.add_argument("--size", type=int, required=True, help="tree size the proof is for")
    a = audit_command("consistency", "consistency proof between two tree sizes (get-sth-consistency)", cmd_audit_online)
    a.add_argument("--first", type=int, required=True)
    a.add_argument("--second", type=int, required=True)
    a = audit_command("verify", "recompute every hash and check the signed checkpoint and your last one",
                      cmd_audit_verify, target_required=False)
    a.add_argument("--state", help="where this auditor remembers the log (default ~/.local/state/xinyi/audit/)")
    a.add_argument("--offline", metavar="DIR", help="verify an archive written by `xinyi audit export`")
    a = audit_command("export", "write entries and the signed checkpoint to DIR, for archiving", cmd_audit_online)
    a.add_argument("--out", required=True, help="directory to write")
    a = audit_command("compare", "prove a split view from two checkpoints of one log", cmd_audit_online)
    a.add_argument("first_note", help="a checkpoint note file")
    a.add_argument("second_note", help="another checkpoint note file of the same log")
    a = audit.add_parser("reconcile", help="every routing in the registry's log against each node's log")
    a.add_argument("--identity", required=True, help="auditor identity directory")
    a.add_argument("--registry", required=True, help="registry HOST:PORT")
    a.add_argument("--json", action="store_true", help="print JSON")
    a.set_defaults(func=cmd_audit_reconcile)

    from xinyi import alertscli, modelcli, statscli

    modelcli.add_parser(sub)
    alertscli.add_parser(sub)
    statscli.add_parser(sub)

    access = sub.add_parser("access", help="enterprises: who accessed my data").add_subparsers(dest="access_cmd", required=True)
    a = access.add_parser("list", help="every access to this enterprise's data across all nodes, each proven")
    a.add_argument("--identity", required=True, help="enterprise identity directory")
    a.add_argument("--registry", required=True, help="registry HOST:PORT")
    a.add_argument("--json", action="store_true", help="print JSON")
    a.set_defaults(func=cmd_access_list)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        args.func(args)
    except CommandError as e:
        print(f"xinyi: {e}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # noqa: BLE001 - a person sees one line, not a traceback
        from xinyi.db import StoreError
        from xinyi.policy import PolicyError
        from xinyi.rpc.server import ServerStartError

        if isinstance(e, (StoreError, PolicyError, ServerStartError)):  # PolicyError covers fair use and minimization
            print(f"xinyi: {e}", file=sys.stderr)
            return EXIT_USAGE
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
