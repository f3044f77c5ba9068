"""`xinyi dispute ...`: an enterprise files a dispute about one of its records and follows its
disputes to their answers; the node's operator lists and answers them."""

from __future__ import annotations

import asyncio

from xinyi.cli.common import EXIT_USAGE, CommandError, add_registry_argument, load_identity, print_json, run_client
from xinyi.crypto.identity import Role
from xinyi.records.categories import RecordError, parse_record_json


def _dispute_row(d) -> dict:
    from xinyi.v1 import dispute_pb2

    return {"dispute_id": d.dispute_id, "uscc": d.uscc, "node": d.node_id, "record_id": d.record_id,
            "status": dispute_pb2.DisputeStatus.Name(d.status).removeprefix("DISPUTE_STATUS_").lower(),
            "reason": d.reason, "filed_by": d.filed_by, "filed_at_ms": d.filed_at_ms, "due_ms": d.due_ms,
            "overdue": d.overdue, "resolution": d.resolution, "resolved_at_ms": d.resolved_at_ms or None,
            "corrected_record_id": d.corrected_record_id or None}


def _day(ms: int) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).strftime("%Y-%m-%d")


def cmd_my_disputes(args) -> None:
    """`dispute list --registry`: the enterprise's own disputes at every node, each node's list
    verified as that node's signed answer."""
    import sys

    from xinyi.client import EnterpriseClient

    identity = load_identity(args.identity, Role.ENTERPRISE)

    async def run():
        async with EnterpriseClient(identity, args.registry) as client:
            return await client.disputes()

    disputes, problems = asyncio.run(run_client(run()))
    rows = [r for r in map(_dispute_row, disputes)
            if not (args.open and r["status"] != "open") and not (args.overdue and not r["overdue"])]
    if args.json:
        print_json({"uscc": identity.principal.id, "disputes": rows, "unverified_nodes": problems})
    else:
        print(f"disputes of {identity.principal.id}, newest filed first, each node's list signed by the node")
        if not rows:
            print("no disputes")
        for r in rows:
            state = r["status"] + (" OVERDUE" if r["overdue"] else "")
            print(f"{r['dispute_id']}  node {r['node']}  {state:<17} filed {_day(r['filed_at_ms'])}, "
                  f"reply due {_day(r['due_ms'])}  record {r['record_id'][:16]}…: {r['reason'][:60]}")
            if r["status"] != "open":
                fixed = f" (corrected record {r['corrected_record_id'][:16]}…)" if r["corrected_record_id"] else ""
                print(f"    answered {_day(r['resolved_at_ms'] or 0)}: {r['resolution']}{fixed}")
        for node, why in problems.items():
            print(f"node {node}: not verified: {why}", file=sys.stderr)
    if problems:
        raise CommandError(f"{len(problems)} node(s) gave no verifiable dispute list")


def cmd_dispute(args) -> None:
    from xinyi.client import EnterpriseClient, OperatorClient

    if args.dispute_cmd == "list":
        if bool(args.registry) == bool(args.node):
            raise CommandError("dispute list: give --registry HOST:PORT (an enterprise, its own disputes) or --node "
                               "HOST:PORT (a node's operator, the node's disputes), not both", EXIT_USAGE)
        if args.registry:
            return cmd_my_disputes(args)

    async def run():
        if args.dispute_cmd == "file":
            async with EnterpriseClient(load_identity(args.identity, Role.ENTERPRISE), args.registry) as client:
                return [await client.dispute(args.node_id, args.record, args.reason)]
        async with OperatorClient(load_identity(args.identity, Role.NODE), args.node) as client:
            if args.dispute_cmd == "list":
                return await client.disputes(open_only=args.open, overdue_only=args.overdue)
            fields = None
            if args.fields:
                try:
                    fields = parse_record_json(args.fields)  # a key given twice is refused, not sent as its last value
                except RecordError as e:
                    raise CommandError(f"--fields: {e}", EXIT_USAGE) from None
            return [await client.resolve(args.dispute, args.outcome, args.reason, fields)]

    rows = [_dispute_row(d) for d in asyncio.run(run_client(run()))]
    if args.json:
        print_json(rows if args.dispute_cmd == "list" else rows[0])
        return
    day = _day
    if not rows:
        print("no disputes")
    for r in rows:
        late = " OVERDUE" if r["overdue"] else ""
        print(f"{r['dispute_id']}  {r['status']:<9}{late} {r['uscc']} record {r['record_id'][:16]}…  filed {day(r['filed_at_ms'])}, "
              f"reply due {day(r['due_ms'])}: {r['reason'][:60]}" + (f"  -> {r['resolution']}" if r["resolution"] else ""))




def add_parser(sub) -> None:
    dispute = sub.add_parser("dispute", help="disputes about records (enterprises file and follow them, node operators resolve)")
    dispute = dispute.add_subparsers(dest="dispute_cmd", required=True)
    a = dispute.add_parser("file", help="an enterprise objects to one of its records")
    a.add_argument("--identity", required=True, help="enterprise identity directory")
    add_registry_argument(a)
    a.add_argument("--node", dest="node_id", required=True, help="the node holding the record, e.g. 510100")
    a.add_argument("--record", required=True, help="the record id, as shown in an answer")
    a.add_argument("--reason", required=True, help="what is wrong")
    a.add_argument("--json", action="store_true")
    a.set_defaults(func=cmd_dispute)
    for name, text in (("list", "an enterprise's own disputes at every node (--registry), or a node's disputes "
                                "(its operator, with the node's identity: --node)"),
                       ("resolve", "answer a dispute: corrected or confirmed, with a written reason")):
        a = dispute.add_parser(name, help=text)
        node_identity = "the node's own identity directory, e.g. certs/node-510100"
        a.add_argument("--identity", required=True, help=f"with --registry: the enterprise's identity directory; "
                       f"with --node: {node_identity}" if name == "list" else node_identity)
        a.add_argument("--node", required=name != "list", help="the node's HOST:PORT (its operator)")
        a.add_argument("--json", action="store_true")
        if name == "list":
            add_registry_argument(a, required=False)
            a.add_argument("--open", action="store_true", help="open disputes only")
            a.add_argument("--overdue", action="store_true", help="open disputes past their 20-day reply date")
        else:
            a.add_argument("--dispute", required=True, help="the dispute id")
            a.add_argument("--outcome", required=True, choices=["corrected", "confirmed"])
            a.add_argument("--reason", required=True, help="the written reply to the enterprise")
            a.add_argument("--fields", help="corrected: the record's fields as JSON, as they should be")
        a.set_defaults(func=cmd_dispute)
