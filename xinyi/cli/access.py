"""`xinyi access list`: an enterprise sees the accesses to its data, newest first, each proven
against the node's signed checkpoint. The nodes answer a page at a time; this follows the pages."""

from __future__ import annotations

import asyncio
import sys
import time

from xinyi.cli.common import EXIT_USAGE, CommandError, add_registry_argument, load_identity, print_json, run_client
from xinyi.crypto.identity import Role

DEFAULT_LIMIT = 100


class _Progress:
    """'fetched N of M entries' on stderr while a long listing runs: in place on a terminal,
    a line every few seconds otherwise."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.started = self.shown = time.monotonic()
        self.printed = False

    def __call__(self, fetched: int, total: int) -> None:
        now = time.monotonic()
        if now - self.started < 1 or (not self.tty and now - self.shown < 5):
            return
        self.shown, self.printed = now, True
        of = f" of {total:,}" if total else ""
        start, end = ("\r", "") if self.tty else ("", "\n")
        print(f"{start}fetched {fetched:,}{of} entries, each proven…", end=end, file=sys.stderr, flush=True)

    def done(self) -> None:
        if self.printed and self.tty:
            print(file=sys.stderr)


def cmd_access_list(args) -> None:
    from xinyi.client import EnterpriseClient

    identity = load_identity(args.identity, Role.ENTERPRISE)
    if args.limit is not None and args.limit < 1:
        raise CommandError("--limit: must be at least 1", EXIT_USAGE)
    limit = 0 if args.all else (args.limit or DEFAULT_LIMIT)
    progress = _Progress()

    async def run():
        async with EnterpriseClient(identity, args.registry) as client:
            try:
                # Counting costs each node a pass over the enterprise's index: only for --all's progress.
                return await client.access_listing(limit=limit, oldest_first=args.oldest_first, count_total=args.all,
                                                   progress=progress)
            finally:
                progress.done()

    listing = asyncio.run(run_client(run()))
    order = "oldest first" if args.oldest_first else "newest first"
    if args.json:
        print_json({"uscc": identity.principal.id, "order": order, "accesses": [a.to_json() for a in listing.accesses],
                    "complete": not listing.more, "totals": listing.totals, "unverified_nodes": listing.problems})
    else:
        import datetime as dt

        print(f"accesses to {identity.principal.id}'s data, {order}, each proven against its node's signed checkpoint")
        for a in listing.accesses:
            j = a.to_json()
            when = dt.datetime.fromtimestamp(j["at_ms"] / 1000, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
            if a.withheld_bytes:
                print(f"{'(time unknown)':<19} node {a.node} #{j['index']:<5} {j['reason']}")
                continue
            who = "you (self-access)" if a.self_access else j["institution"]
            print(f"{when} node {a.node} #{j['index']:<5} {j['decision']:<5} {j['action']:<15} {who:<28} "
                  f"{j['purpose']:<17} {','.join(j['categories']):<24} {j['consent_id'][:12]}")
        if listing.more:
            print(f"showing the {len(listing.accesses)} {order.split()[0]}; there are more: --limit N for more, "
                  "--all for every one", file=sys.stderr)
        for node, why in listing.problems.items():
            print(f"node {node}: not verified: {why}", file=sys.stderr)
    if listing.problems:
        raise CommandError(f"{len(listing.problems)} node(s) gave no verifiable access list")


def add_parser(sub) -> None:
    access = sub.add_parser("access", help="enterprises: who accessed my data").add_subparsers(dest="access_cmd", required=True)
    a = access.add_parser("list", help="the accesses to this enterprise's data across all nodes, each proven")
    a.add_argument("--identity", required=True, help="enterprise identity directory")
    add_registry_argument(a)
    how_many = a.add_mutually_exclusive_group()
    how_many.add_argument("--limit", type=int, help=f"show this many (default {DEFAULT_LIMIT})")
    how_many.add_argument("--all", action="store_true", help="show every access (follows every page)")
    a.add_argument("--oldest-first", action="store_true", help="oldest first (default: newest first)")
    a.add_argument("--json", action="store_true", help="print JSON")
    a.set_defaults(func=cmd_access_list)
