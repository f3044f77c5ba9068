"""`xinyi registry serve`, `xinyi node serve` and `xinyi node ingest`: the operators' commands that run
the services and load a node's data; `xinyi registry claims`: the platform operator's review of
what nodes claim to hold outside their own area."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

from xinyi.cli.common import EXIT_USAGE, CommandError, add_registry_argument, load_identity, print_json, run_client
from xinyi.crypto.identity import Role


def settle_garbage_collector() -> None:
    """A server's start-up objects (policies, the Merkle tree, caches) live as long as it does:
    freeze them out of the collector's scans, and collect young objects less often (a query
    allocates thousands; the default threshold of 700 ran a collection every few queries)."""
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)


def _serve(server) -> None:
    """Run a server until SIGINT or SIGTERM, then stop it gracefully. SIGHUP reloads policies
    and the identity bundle (after `xinyi pki renew`), each refused on its own when invalid."""
    from xinyi.crypto.pki import PKIError
    from xinyi.policy import PolicyError

    def reload() -> None:
        try:
            server.reload_policies()
        except PolicyError as e:
            logging.getLogger("xinyi").error("policies NOT reloaded, the old ones stay in force: %s", e)
        try:
            server.reload_identity()
        except PKIError as e:
            logging.getLogger("xinyi").error("identity NOT reloaded, the old one stays in use: %s", e)

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
        warner = asyncio.create_task(warn_before_expiry(server.identity))
        # A node the registry will never accept stops too, and says why (exit 1).
        refused = getattr(server, "refused", None)
        waits = [asyncio.create_task(stop.wait()), *([asyncio.create_task(refused.wait())] if refused else [])]
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for task in (warner, *waits):
            task.cancel()
        await server.stop()
        if refused is not None and refused.is_set():
            raise CommandError(server.refused_reason)

    asyncio.run(main())


EXPIRY_WARNING_DAYS = 30


async def warn_before_expiry(identity, every_seconds: float = 86400.0) -> None:
    """From 30 days before the identity's first certificate expires, a warning in the log every
    day, so that an operator renews before the network refuses the service."""
    import datetime as dt

    while True:
        expires = identity.expires_at()
        left = expires - dt.datetime.now(dt.timezone.utc)
        if left < dt.timedelta(0):  # it expired while the service ran: peers refuse it now
            logging.getLogger("xinyi").error(
                "%s: a certificate of this identity expired on %s UTC; the network refuses this service's "
                "connections until it is renewed: `xinyi pki renew --id %s`, then send SIGHUP", identity.principal,
                f"{expires:%Y-%m-%d %H:%M}", identity.dirname)
        elif left <= dt.timedelta(days=EXPIRY_WARNING_DAYS):
            logging.getLogger("xinyi").warning(
                "%s: a certificate of this identity expires on %s UTC (in %d days); renew it with "
                "`xinyi pki renew --id %s` and send SIGHUP", identity.principal, f"{expires:%Y-%m-%d %H:%M}",
                left.days, identity.dirname)
        await asyncio.sleep(every_seconds)


def _metrics_listen(args) -> str | None:
    """--metrics-listen, checked before anything starts."""
    if args.metrics_listen is None:
        return None
    from xinyi.metrics import MetricsError, parse_listen

    try:
        parse_listen(args.metrics_listen)
    except MetricsError as e:
        raise CommandError(f"--metrics-listen: {e}", EXIT_USAGE) from None
    return args.metrics_listen


def cmd_registry_serve(args) -> None:
    from registry.server import RegistryConfig, RegistryServer

    metrics_listen = _metrics_listen(args)
    identity = load_identity(args.identity, Role.REGISTRY)
    _serve(RegistryServer(RegistryConfig(identity, args.listen, args.db, identity_dir=Path(args.identity),
                                         metrics_listen=metrics_listen, **_policy_dir(args))))


def cmd_node_serve(args) -> None:
    identity = load_identity(args.identity, Role.NODE)
    if args.workers < 1:
        raise CommandError(f"--workers: must be at least 1, got {args.workers}", EXIT_USAGE)
    metrics_listen = _metrics_listen(args)
    if metrics_listen and args.workers > 1:
        # Each worker counts only the queries it serves, and they cannot share one metrics port.
        raise CommandError("--metrics-listen: not available with --workers above 1 yet; run one process per "
                           "node to scrape it", EXIT_USAGE)
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

        serve_args = ["--identity", args.identity, "--listen", args.listen, "--db", args.db]
        serve_args += [arg for registry in args.registry for arg in ("--registry", registry)]
        serve_args += ["--advertise", args.advertise] if args.advertise else []
        serve_args += ["--policies", args.policies] if args.policies else []
        pool, sequencer = start_workers(serve_args, args.workers)  # before any gRPC object exists

    from node.server import NodeConfig, NodeServer

    server = NodeServer(NodeConfig(identity, args.listen, args.db, registry=tuple(args.registry), advertise=args.advertise,
                                   sequencer=sequencer, worker=worker, identity_dir=Path(args.identity),
                                   metrics_listen=metrics_listen, **_policy_dir(args)))
    if pool is not None:
        pool.attach(server)
    _serve(pool or server)


def _policy_dir(args) -> dict:
    return {"policy_dir": Path(args.policies)} if args.policies else {}


# `xinyi node ingest` exit codes; the help and the README list them.
EXIT_LOADED_WITH_REJECTS = 3
INGEST_EXIT_CODES = f"""exit status:
  0  every record line loaded (or was already present)
  1  an unexpected failure
  {EXIT_USAGE}  nothing loaded: every line was bad, or the file, the options or the database could not be used
  {EXIT_LOADED_WITH_REJECTS}  the good lines loaded, the bad ones did not (each is reported on stderr as
     file:line: field: reason); fix them and load the file again
"""


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
    if report.error_count:
        # Not 0: a script loading a department's export must notice that part of it is missing.
        raise CommandError(f"{args.file}: loaded, but {report.error_count} bad lines were not; "
                           "fix them and load the file again (the loaded lines are not loaded twice)", EXIT_LOADED_WITH_REJECTS)




def cmd_registry_claims(args) -> None:
    """List, approve or reject nodes' claims to hold records outside their own area."""
    import datetime as dt

    from xinyi.client import OperatorHoldings
    from xinyi.v1 import registry_pb2

    identity = load_identity(args.identity, Role.REGISTRY)

    async def run():
        async with OperatorHoldings(identity, args.registry) as operator:
            if args.claims_cmd == "list":
                return await operator.claims(args.node or "", args.state or "")
            return await operator.review(args.node, args.uscc, approve=args.claims_cmd == "approve")

    result = asyncio.run(run_client(run()))
    state = {v: k for k, v in OperatorHoldings.STATES.items()}

    def day(ms: int) -> str:
        return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC") if ms else ""

    if args.claims_cmd != "list":
        c: registry_pb2.HoldingClaim = result.claim
        routed = "routed to it" if state[c.state] == "approved" else "not routed to it"
        print(f"{state[c.state]}: node {c.node_id} holds records of {c.uscc}; {routed} "
              f"(directory version {result.directory_version})")
        return
    rows = [{"node": c.node_id, "uscc": c.uscc, "state": state[c.state], "claimed": day(c.claimed_at_ms),
             "decided": day(c.decided_at_ms)} for c in result]
    if args.json:
        print_json(rows)
        return
    for r in rows:
        print(f"{r['node']}  {r['uscc']}  {r['state']:<8}  claimed {r['claimed']}"
              + (f", decided {r['decided']}" if r["decided"] else ""))
    if not rows:
        print("no holding claims")


def cmd_registry_nodes(args) -> None:
    """The platform operator's list of nodes: where each is, since when, with which key, and
    whether two processes claim it."""
    import datetime as dt

    from xinyi.client import OperatorHoldings

    identity = load_identity(args.identity, Role.REGISTRY)

    async def run():
        async with OperatorHoldings(identity, args.registry) as operator:
            return await operator.nodes()

    nodes = asyncio.run(run_client(run()))

    def at(ms: int) -> str:
        return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC") if ms else ""

    rows = [{"node": n.node_id, "endpoint": n.endpoint, "registered": at(n.registered_at_ms),
             "signing_key_sha256": n.signing_key_sha256, "previous_endpoint": n.previous_endpoint,
             "endpoint_changed": at(n.endpoint_changed_at_ms), "conflict": n.conflict} for n in nodes]
    if args.json:
        print_json(rows)
        return
    for r in rows:
        print(f"{r['node']}  {r['endpoint']}  registered {r['registered']}  key sha256 {r['signing_key_sha256'][:16]}")
        if r["endpoint_changed"]:
            print(f"        moved from {r['previous_endpoint']} at {r['endpoint_changed']}")
        if r["conflict"]:
            print(f"        CONFLICT: {r['conflict']}")
    if not rows:
        print("no nodes registered")


def _add_metrics_argument(a) -> None:
    a.add_argument("--metrics-listen", metavar="HOST:PORT",
                   help="serve Prometheus metrics at http://HOST:PORT/metrics (plain HTTP: bind it to a private "
                        "address); without it, none are kept")


def add_parser(sub) -> None:
    reg = sub.add_parser("registry", help="run the national registry; review nodes' holding claims")
    reg = reg.add_subparsers(dest="registry_cmd", required=True)
    a = reg.add_parser("serve", help="serve the registry over mutual TLS")
    a.add_argument("--identity", required=True, help="registry identity directory, e.g. certs/registry-national")
    a.add_argument("--listen", required=True, help="HOST:PORT to listen on")
    a.add_argument("--db", required=True, help="sqlite:///FILE or postgresql+psycopg://USER@HOST/DB")
    a.add_argument("--policies", help="Cedar policy directory (default: the bundled policies/)")
    _add_metrics_argument(a)
    a.set_defaults(func=cmd_registry_serve)
    claims = reg.add_parser("claims", help="the platform operator reviews what nodes claim to hold outside their area")
    claims = claims.add_subparsers(dest="claims_cmd", required=True)
    for name, text in (("list", "claims, pending, approved and rejected"),
                       ("approve", "publish a claim in the signed directory: routing reaches the node for the firm"),
                       ("reject", "refuse a claim (or withdraw an approval): the node is not routed to for the firm")):
        a = claims.add_parser(name, help=text)
        a.add_argument("--identity", required=True, help="the registry's own identity directory (the platform operator)")
        add_registry_argument(a)
        a.add_argument("--node", required=name != "list",
                       help="the node's id (area code)" + (", to list only its claims" if name == "list" else ""))
        if name == "list":
            a.add_argument("--state", choices=("pending", "approved", "rejected"))
            a.add_argument("--json", action="store_true")
        else:
            a.add_argument("--uscc", required=True, help="the enterprise the node claims to hold records of")
        a.set_defaults(func=cmd_registry_claims)
    a = reg.add_parser("nodes", help="the platform operator lists nodes: endpoint, last registration, signing key, "
                                     "address changes, conflicts")
    a.add_argument("--identity", required=True, help="the registry's own identity directory (the platform operator)")
    add_registry_argument(a)
    a.add_argument("--json", action="store_true")
    a.set_defaults(func=cmd_registry_nodes)

    node = sub.add_parser("node", help="run or load a regional node").add_subparsers(dest="node_cmd", required=True)
    a = node.add_parser("serve", help="serve a node over mutual TLS and register with the registry")
    a.add_argument("--identity", required=True, help="node identity directory, e.g. certs/node-510100")
    a.add_argument("--listen", required=True, help="HOST:PORT to listen on")
    add_registry_argument(a)
    a.add_argument("--db", required=True, help="sqlite:///FILE or postgresql+psycopg://USER@HOST/DB")
    a.add_argument("--advertise", help="HOST:PORT the registry and banks use to reach this node (default: --listen)")
    a.add_argument("--policies", help="Cedar policy directory (default: the bundled policies/)")
    a.add_argument("--workers", type=int, default=1,
                   help="serving processes sharing the port (default 1); the audit log stays one sequence")
    a.add_argument("--sequencer", help=argparse.SUPPRESS)  # set by --workers for its worker processes
    _add_metrics_argument(a)
    a.set_defaults(func=cmd_node_serve)
    a = node.add_parser("ingest", help="load JSON Lines (or CSV with --category) into a node's store",
                        epilog=INGEST_EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    a.add_argument("--db", required=True, help="the node's database URL")
    a.add_argument("--category", help="the category of every line (required for CSV)")
    a.add_argument("file", help="a .jsonl or .csv file")
    a.set_defaults(func=cmd_node_ingest)
