"""`xinyi access list`: an enterprise sees every access to its data, each proven against the
node's signed checkpoint."""

from __future__ import annotations

import asyncio
import sys

from xinyi.cli.common import CommandError, load_identity, print_json, run_client
from xinyi.crypto.identity import Role


def cmd_access_list(args) -> None:
    from xinyi.client import EnterpriseClient

    identity = load_identity(args.identity, Role.ENTERPRISE)

    async def run():
        async with EnterpriseClient(identity, args.registry) as client:
            return await client.accesses()

    accesses, problems = asyncio.run(run_client(run()))
    if args.json:
        print_json({"uscc": identity.principal.id, "accesses": [a.to_json() for a in accesses], "unverified_nodes": problems})
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




def add_parser(sub) -> None:
    access = sub.add_parser("access", help="enterprises: who accessed my data").add_subparsers(dest="access_cmd", required=True)
    a = access.add_parser("list", help="every access to this enterprise's data across all nodes, each proven")
    a.add_argument("--identity", required=True, help="enterprise identity directory")
    a.add_argument("--registry", required=True, help="registry HOST:PORT")
    a.add_argument("--json", action="store_true", help="print JSON")
    a.set_defaults(func=cmd_access_list)
