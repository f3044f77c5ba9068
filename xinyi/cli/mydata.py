"""`xinyi my-data`: an enterprise reads its own records from every node that holds them (a
self_access query: no consent, audited at each node, a few a day), each answer verified, each
record with the id `xinyi dispute file --record` takes."""

from __future__ import annotations

import asyncio
import json

from xinyi.cli.common import (
    EXIT_USAGE,
    CommandError,
    add_registry_argument,
    area_label,
    load_identity,
    print_json,
    run_client,
)
from xinyi.crypto.identity import Role

# Not a record's content: shown in its own columns, or as a flag.
_FRAME = ("category", "as_of", "source", "record_id", "disputed")


def cmd_my_data(args) -> None:
    from xinyi.client import EnterpriseClient
    from xinyi.records.vocab import category_problem

    identity = load_identity(args.identity, Role.ENTERPRISE)
    categories = [c.strip() for given in args.category or () for c in given.split(",") if c.strip()] or None
    for c in categories or ():
        problem = category_problem(c)
        if problem:
            raise CommandError(f"--category: {problem}", EXIT_USAGE)
    if categories and len(set(categories)) != len(categories):
        raise CommandError("--category: a category is named twice", EXIT_USAGE)

    async def run():
        async with EnterpriseClient(identity, args.registry) as firm:
            return await firm.my_records(categories, per_node_timeout_ms=args.timeout_ms)

    result = asyncio.run(run_client(run()))
    if args.json:
        print_json(result.to_json())
    else:
        _print(result)
    if not result.answered:
        reasons = "; ".join(f"{n.node}: {n.status}" + (f" ({n.error})" if n.error else "") for n in result.nodes)
        raise CommandError(f"no node answered: {reasons}")


def _print(result) -> None:
    print(f"records about {result.uscc} (self-access, request {result.request_hash[:16]}…), "
          "each node's answer verified against its key in the signed directory")
    for n in result.nodes:
        mark = "verified" if n.verified else "NOT verified"
        count = (f"{len(n.records)} record(s)" if n.records else "no records") if n.verified else n.status
        print(f"\nnode {area_label(n.node)}: {count} ({mark})" + (f" - {n.error}" if n.error else ""))
        for r in n.records:
            fields = ", ".join(f"{k}={json.dumps(v, ensure_ascii=False) if isinstance(v, (dict, list)) else v}"
                               for k, v in r.items() if k not in _FRAME)
            flag = "  [DISPUTED]" if r.get("disputed") else ""
            print(f"  record {r['record_id']}{flag}\n    {r['category']:<16} {r['as_of']}  {r['source']}\n    {fields}")
    print("\nto object to a record: xinyi dispute file --node NODE --record RECORD_ID --reason TEXT")


def add_parser(sub) -> None:
    a = sub.add_parser("my-data", help="enterprises: read my own records from every node (self-access)",
                       description="An enterprise's own records from every node that holds them, each answer "
                                   "verified; no consent needed. Audited at each node; a few a day (fair_use.toml "
                                   "[self_access]).")
    a.add_argument("--identity", required=True, help="the enterprise's identity directory (role enterprise)")
    add_registry_argument(a)
    a.add_argument("--category", action="append", metavar="C",
                   help="only this category (repeat, or comma-separated); default: every category")
    a.add_argument("--timeout-ms", type=int, default=0, help="per-node deadline (default 3000)")
    a.add_argument("--json", action="store_true", help="print one JSON object")
    a.set_defaults(func=cmd_my_data)
