"""`xinyi query`: a bank's or guarantor's signed query through the registry."""

from __future__ import annotations

import asyncio
import json

from xinyi.cli.common import (
    CommandError,
    add_registry_argument,
    area_label,
    load_identity,
    parse_categories,
    print_json,
    run_client,
)
from xinyi.crypto.identity import Role


def cmd_query(args) -> None:
    from xinyi.client import BankClient

    identity = load_identity(args.identity, Role.BANK, Role.GUARANTOR)
    categories = parse_categories(args.categories)

    async def run():
        async with BankClient(identity, args.registry) as bank:
            return await bank.query(args.uscc, categories, args.purpose, args.consent, per_node_timeout_ms=args.timeout_ms)

    result = asyncio.run(run_client(run()))
    if args.json:
        print_json(result.to_json())
    else:
        _print_query(result)
    if not result.answered:
        reasons = "; ".join(f"{n.node}: {n.status}" + (f" ({n.error})" if n.error else "") for n in result.nodes)
        raise CommandError(f"no node answered: {reasons}")


def _print_query(result) -> None:
    print(f"enterprise {result.uscc}   request {result.request_hash[:16]}…")
    for n in result.nodes:
        mark = "verified" if n.verified else "not verified"
        print(f"\nnode {area_label(n.node)}: {n.status} ({mark})" + (f" - {n.error}" if n.error else ""))
        for r in n.records:
            fields = ", ".join(f"{k}={v}" for k, v in r.items() if k not in ("category", "as_of", "source", "record_id", "disputed"))
            flag = "  [DISPUTED]" if r.get("disputed") else ""
            print(f"  {r['category']:<16} {r['as_of']}  {r['source']:<28} {fields}{flag}  (record {r['record_id'][:12]})")
        for i in n.indicators:
            print(f"  {i['category']:<16} {i['name']:<26} {json.dumps(i['value'], ensure_ascii=False):<22} as of {i['as_of']}")




def add_parser(sub) -> None:
    a = sub.add_parser("query", help="a bank's signed query through the registry")
    a.add_argument("--identity", required=True, help="bank or guarantor identity directory")
    add_registry_argument(a)
    a.add_argument("--uscc", required=True, help="the enterprise's 18-character USCC")
    a.add_argument("--purpose", required=True, help="credit_assessment, loan_monitoring or guarantee")
    a.add_argument("--categories", required=True, help="comma-separated, e.g. registration,tax")
    a.add_argument("--consent", required=True, help="the consent id the enterprise gave you")
    a.add_argument("--timeout-ms", type=int, default=0, help="per-node deadline (default 3000)")
    a.add_argument("--json", action="store_true", help="print one JSON object")
    a.set_defaults(func=cmd_query)
