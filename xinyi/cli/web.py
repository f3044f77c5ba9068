"""`xinyi web`: the web app for enterprises, auditors and node operators, served from this machine
(the identity's private key never leaves it). It prints a one-time login link, as Jupyter does."""

from __future__ import annotations

import ipaddress
import sys
from pathlib import Path

from xinyi.cli.common import EXIT_USAGE, CommandError, add_registry_argument, load_identity

DEFAULT_LISTEN = "127.0.0.1:8443"


def listen_address(text: str) -> tuple[str, int]:
    """HOST:PORT on a loopback address: the app holds the identity's key, so it serves only the
    machine it runs on (reach it from elsewhere through an SSH tunnel)."""
    host, _, port = text.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise CommandError(f"--listen {text!r}: give HOST:PORT, e.g. {DEFAULT_LISTEN}", EXIT_USAGE)
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise CommandError(f"--listen {text!r}: the web app serves only this machine (127.0.0.1, ::1 or localhost), "
                           "since it signs with the identity's key; use an SSH tunnel to reach it from elsewhere",
                           EXIT_USAGE)
    return host, int(port)


def cmd_web(args) -> None:
    import uvicorn

    from xinyi import telemetry
    from xinyi.web.app import WebConfig, create_app

    host, port = listen_address(args.listen)
    identity = load_identity(args.identity)
    config = WebConfig(identity=identity, registry=args.registry, host=host, port=port, node=args.node or "",
                       state_dir=Path(args.state) if args.state else None)
    telemetry.setup("xinyi-web")
    app, web = create_app(config)
    link = web.login_link()
    print(f"xinyi web: {identity.principal} at http://{host}:{port}/\n"
          f"open this link once to log in (it works once; restart for a new one):\n    {link}", flush=True)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                                           lifespan="on", server_header=False,
                                           proxy_headers=False))  # never behind a proxy: the client is the socket's
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    if not server.started:
        print(f"xinyi web: could not serve on {host}:{port} (in use?); choose another with --listen", file=sys.stderr)
        raise SystemExit(1)


def add_parser(sub) -> None:
    a = sub.add_parser("web", help="enterprises, auditors and node operators: the web app, on this machine")
    a.add_argument("--identity", required=True, help="the identity bundle the app acts as (its key stays here)")
    add_registry_argument(a)
    a.add_argument("--listen", default=DEFAULT_LISTEN, metavar="HOST:PORT",
                   help=f"loopback address to serve on (default {DEFAULT_LISTEN})")
    a.add_argument("--node", metavar="HOST:PORT", help="a node identity's own node (default: its address in the directory)")
    a.add_argument("--state", metavar="DIR", help="where an auditor keeps what it verified of each log "
                   "(default: as `xinyi audit verify`)")
    a.set_defaults(func=cmd_web)
