"""`xinyi consent ...`: an enterprise grants, pauses, resumes, revokes and lists its consents, and
names representatives who may sign for it."""

from __future__ import annotations

import asyncio
import sys

from xinyi.cli.common import (
    EXIT_USAGE,
    CommandError,
    add_registry_argument,
    area_label,
    load_identity,
    parse_categories,
    print_json,
    run_client,
)
from xinyi.crypto.identity import Role


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
        "nodes": [_node_row(n) for n in c.nodes],
    }


def _node_row(n) -> dict:
    from xinyi.v1 import consent_pb2, query_pb2

    return {
        "node": n.node_id,
        "delivered": n.delivered,
        "status": consent_pb2.ConsentStatus.Name(n.status).removeprefix("CONSENT_STATUS_").lower(),
        "answers": n.answers,
        "last_answered_ms": n.last_answered_ms or None,
        "last_outcome": (query_pb2.NodeOutcome.Name(n.last_outcome).removeprefix("NODE_OUTCOME_").lower()
                         if n.last_outcome else None),
        "last_asked_ms": n.last_asked_ms or None,
    }


def _node_line(n: dict) -> str:
    """One node's part in a consent, for `consent status`."""
    import datetime as dt

    at = lambda ms: dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")  # noqa: E731
    answered = (f"answered {n['answers']} {'query' if n['answers'] == 1 else 'queries'}, last {at(n['last_answered_ms'])}"
                if n["answers"] else "has answered nothing")
    last = f"; last asked {at(n['last_asked_ms'])}: {n['last_outcome']}" if n["last_outcome"] else ""
    delivered = "has the consent" if n["delivered"] else "does not have the consent yet"
    return f"  node {area_label(n['node'])}: {n['status']}, {delivered}, {answered}{last}"


def cmd_consent(args) -> None:
    from xinyi.client import EnterpriseClient
    from xinyi.v1 import audit_pb2, consent_pb2

    identity = load_identity(args.identity, Role.ENTERPRISE, *((Role.REPRESENTATIVE,) if args.action == "grant" else ()))
    if args.action == "grant" and identity.principal.role is Role.REPRESENTATIVE and not args.for_uscc:
        raise CommandError("--for: a representative names the enterprise it signs for", EXIT_USAGE)

    async def run():
        async with EnterpriseClient(identity, args.registry) as client:
            if args.action == "grant":
                return [await client.grant(
                    args.grantee, args.purpose, parse_categories(args.categories), args.days, uscc=args.for_uscc,
                    detail_level=args.detail, history_months=args.history_months, fetch_type=args.fetch,
                    max_fetches=args.max_fetches, fetch_period=args.period, co_grantee=args.co_grantee,
                )], {}
            if args.action in ("pause", "resume", "revoke"):
                return [await client.change(args.consent, args.action)], {}
            if args.action == "status":
                return [await client.status(args.consent)], {}
            consents = await client.list()
            # Nothing older than the oldest consent was answered under one: the pages stop there
            # (less the five minutes clocks may differ by).
            since = min((consent_pb2.ConsentBody.FromString(c.consent.body).issued_at_ms for c in consents), default=0)
            accesses, _ = await client.accesses(since_ms=max(since - 5 * 60_000, 1)) if consents else ([], {})
            per_consent: dict[str, int] = {}
            for a in accesses:
                if a.record.action == "query" and a.record.consent_id and a.record.decision == audit_pb2.DECISION_ALLOW:
                    per_consent[a.record.consent_id] = per_consent.get(a.record.consent_id, 0) + 1
            return consents, per_consent

    consents, accesses = asyncio.run(run_client(run()))
    records = [_consent_row(c) for c in consents]
    for r in records:
        r["node_accesses"] = accesses.get(r["consent_id"], 0) if args.action == "list" else None
    if args.json:
        print_json(records if args.action == "list" else records[0])
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
            if args.action == "status":
                for n in r["nodes"]:
                    print(_node_line(n))


def cmd_delegate(args) -> None:
    from xinyi.client import EnterpriseClient

    identity = load_identity(args.identity, Role.ENTERPRISE)

    async def run():
        async with EnterpriseClient(identity, args.registry) as client:
            return await client.delegate(args.representative, args.days, revoke=args.revoke)

    result = asyncio.run(run_client(run()))
    state = "may now sign consents for" if result.active else "may no longer sign consents for"
    print(f"representative {result.representative} {state} {result.uscc}")


def _consent_note(r: dict) -> None:
    if r["delivered_to"]:
        print(f"delivered to nodes {', '.join(r['delivered_to'])}", file=sys.stderr)
    if r["pending"]:
        print(f"nodes {', '.join(r['pending'])} were unreachable; they pull it within seconds of coming back", file=sys.stderr)




def add_parser(sub) -> None:
    consent = sub.add_parser("consent", help="an enterprise's consents").add_subparsers(dest="action", required=True)
    for name, text in (("grant", "sign and grant a consent; prints its id"), ("pause", "pause a consent (signed)"),
                       ("resume", "resume a paused consent (signed)"), ("revoke", "revoke a consent for good (signed)"),
                       ("list", "this enterprise's consents: state, uses, last use, accesses"),
                       ("status", "show one consent's status")):
        a = consent.add_parser(name, help=text)
        a.add_argument("--identity", required=True, help="enterprise (or, for grant, representative) identity directory")
        add_registry_argument(a)
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
    add_registry_argument(a)
    a.add_argument("--representative", required=True, help="the representative's id (its certificate's id)")
    a.add_argument("--days", type=int, default=365, help="how long the delegation lasts")
    a.add_argument("--revoke", action="store_true", help="end the delegation now")
    a.set_defaults(func=cmd_delegate)
