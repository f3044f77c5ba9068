"""The `xinyi` command: one entry point for operators, banks, enterprises and auditors.

Each command group lives in a module of its own that adds its subcommands here; they share
xinyi.cli.common and never import each other.

Exit status 0 when the command did what was asked; otherwise a one-line reason on stderr and
status 1 (refused, unreachable) or 2 (usage or validation error); `node ingest` exits 3 when it
loaded the good lines of a file and left out bad ones.
"""

from __future__ import annotations

import argparse
import logging
import sys

from xinyi.cli import access, alerts, audit, consent, db, dispute, health, models, mydata, pki, quality, query, serve, stats, web
from xinyi.cli.common import EXIT_USAGE, CommandError, print_error_json, remember_args

# In the order `xinyi --help` lists them.
COMMAND_MODULES = (pki, serve, quality, db, health, consent, dispute, query, audit, models, alerts, stats, access, mydata,
                   web)


class _Parser(argparse.ArgumentParser):
    """argparse, except that under --json a usage error is also a JSON document on stdout."""

    json_errors = False

    def error(self, message: str):
        if not _Parser.json_errors:
            super().error(message)
        self.print_usage(sys.stderr)
        raise CommandError(f"{self.prog}: {message}", EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="xinyi", description="Xinyi Loan federated credit-information network")
    p.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    as_json = "--json" in argv
    _Parser.json_errors = as_json
    try:
        args = build_parser().parse_args(argv)
        logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                            format="%(asctime)s %(name)s %(levelname)s %(message)s")
        remember_args(args)
        try:
            args.func(args)
        except CommandError:
            raise
        except Exception as e:  # noqa: BLE001 - a person sees one line, not a traceback
            from xinyi.db import StoreError
            from xinyi.policy import PolicyError
            from xinyi.rpc.server import ServerStartError

            if isinstance(e, (StoreError, PolicyError, ServerStartError)):  # PolicyError covers fair use and minimization
                raise CommandError(str(e), EXIT_USAGE) from None
            raise
    except CommandError as e:
        print(f"xinyi: {e}", file=sys.stderr)
        if as_json:
            print_error_json(e)
        return e.code
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
