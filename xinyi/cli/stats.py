"""`xinyi stats`: a government department's differentially private statistics.

    xinyi stats --identity certs/government-ID --registry HOST:PORT --metric count --by area --epsilon 0.5

Prints one line per cell (group, noisy value, +-error at 95%, suppressed) and, per node, what the
query cost and the budget left there; --json prints the same as JSON. Exit 1 with one line when
the registry refuses the query or no node answered; exit 2 for a usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from xinyi.cli.common import EXIT_USAGE, CommandError, add_registry_argument, load_identity

# As xinyi.compute.stats.METRICS and GROUPINGS (tests check): not imported here, so that building the
# `xinyi` parser stays fast.
METRIC_CHOICES = ("count", "sum_tax_paid_12m", "sum_insured_headcount")
GROUPING_CHOICES = ("none", "area", "tax_rating", "headcount_band")


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the `stats` command to the `xinyi` command's subparsers."""
    a = subparsers.add_parser("stats", help="a government department's differentially private statistics",
                              description=__doc__.split("\n\n")[0])
    a.add_argument("--identity", required=True, help="government identity directory, e.g. certs/government-ID")
    add_registry_argument(a)
    a.add_argument("--metric", required=True, choices=METRIC_CHOICES,
                   help="count: enterprises; sum_tax_paid_12m: yuan; sum_insured_headcount: employees")
    a.add_argument("--by", required=True, choices=GROUPING_CHOICES, dest="group_by",
                   help="area: the USCC's area code; tax_rating; headcount_band; none: one cell")
    a.add_argument("--epsilon", required=True, type=float,
                   help="privacy loss charged at every node (smaller: more noise), e.g. 0.5")
    a.add_argument("--json", action="store_true", help="print JSON")
    a.set_defaults(func=cmd_stats)
    return a


def cmd_stats(args) -> None:
    from xinyi import telemetry
    from xinyi.crypto.identity import Role
    from xinyi.errors import Refusal

    identity = load_identity(args.identity, Role.GOVERNMENT)
    telemetry.setup("xinyi-cli")
    try:
        response = asyncio.run(ask(identity, args.registry, metric=args.metric, group_by=args.group_by,
                                   epsilon=args.epsilon))
    except Refusal as e:
        raise CommandError(e.message, EXIT_USAGE) from None
    except StatsCallError as e:
        raise CommandError(str(e)) from None
    result = to_json(response, args.metric, args.group_by, args.epsilon)
    answered = any(n["status"] == "ok" for n in result["nodes"])
    if args.json:
        print(json.dumps(result, ensure_ascii=False, indent=2))
    elif answered:
        print_table(result)
    if not answered:
        reasons = "; ".join(f"{n['node']}: {n['code']} {n['reason']}: {n['message']}" for n in result["nodes"])
        raise CommandError(f"no node answered: {reasons or 'no node is registered'}")


class StatsCallError(Exception):
    """The registry refused the query or could not be reached: "CODE: message"."""


async def ask(identity, registry: str | list[str], *, metric: str, group_by: str, epsilon: float):
    """Sign a query and ask the registry; returns the AskStatisticsResponse."""
    import grpc

    from xinyi.clock import now_ms
    from xinyi.compute import stats
    from xinyi.crypto.identity import Role
    from xinyi.rpc.channels import FailoverChannel
    from xinyi.rpc.status import RpcFailure
    from xinyi.v1 import stats_pb2, stats_pb2_grpc

    envelope = stats.build_stats_query(identity, metric=metric, group_by=group_by, epsilon=epsilon, now_ms=now_ms())
    channel = FailoverChannel(identity, registry, Role.REGISTRY)
    try:
        stub = channel.stub(stats_pb2_grpc.StatisticsServiceStub)
        return await stub.Ask(stats_pb2.AskStatisticsRequest(query=envelope), timeout=60)
    except grpc.aio.AioRpcError as e:
        f = RpcFailure.from_error(e)
        hint = " (is the registry running, and is this the right address?)" if f.code == "UNAVAILABLE" else ""
        raise StatsCallError(f"{f.code}: {f.message}{hint}") from None
    finally:
        await channel.close()


def _status(value: int) -> str:
    from xinyi.v1 import stats_pb2

    try:
        return stats_pb2.NodeStatsStatus.Name(value).removeprefix("NODE_STATS_STATUS_").lower()
    except ValueError:
        return "unknown"


def to_json(response, metric: str, group_by: str, epsilon: float) -> dict:
    return {
        "metric": metric,
        "group_by": group_by,
        "epsilon": epsilon,
        "request_hash": response.request_hash.hex(),
        "cells": [
            {"group": c.group, "value": None if c.suppressed else c.value,
             "error_95": None if c.suppressed else c.error_95, "suppressed": c.suppressed, "nodes": list(c.nodes)}
            for c in response.cells
        ],
        "nodes": [
            {"node": n.node_id, "status": _status(n.status), "code": n.code, "reason": n.reason,
             "message": n.message, "epsilon_charged": n.epsilon_charged,
             "budget_remaining": n.budget_remaining if n.HasField("budget_remaining") else None}
            for n in response.nodes
        ],
    }


def _value(v: float, metric: str) -> str:
    return f"{v:,.0f}" if metric != "sum_tax_paid_12m" else f"{v:,.2f}"


def print_table(result: dict, out=None) -> None:
    out = out or sys.stdout
    metric = result["metric"]
    rows = [("group", "value", "±95%", "suppressed", "nodes")]
    for c in result["cells"]:
        if c["suppressed"]:
            rows.append((c["group"], "-", "-", "yes", ""))
        else:
            rows.append((c["group"], _value(c["value"], metric), "±" + _value(c["error_95"], metric), "",
                         ",".join(c["nodes"])))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    right = (False, True, True, False, False)
    print(f"{metric} by {result['group_by']}, epsilon {result['epsilon']:g} at each node", file=out)
    for r in rows:
        print("  ".join(v.rjust(w) if ra else v.ljust(w) for v, w, ra in zip(r, widths, right)).rstrip(), file=out)
    print(file=out)
    for n in result["nodes"]:
        left = f"{n['budget_remaining']:g}" if n["budget_remaining"] is not None else "?"
        if n["status"] == "ok":
            print(f"node {n['node']}: charged epsilon {n['epsilon_charged']:g}, budget left {left}", file=out)
        else:
            print(f"node {n['node']}: {n['status']} {n['code']} {n['reason']}: {n['message']} (budget left {left})",
                  file=out)
