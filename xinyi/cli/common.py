"""What every command module shares: exit codes, the one error type a person sees, and the
helpers that load an identity, print JSON and run a client call. Command modules import this
module and never each other."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from xinyi.crypto.identity import Role

EXIT_FAILED = 1
EXIT_USAGE = 2

AREA_NAMES = {
    "110000": "Beijing", "310000": "Shanghai", "440000": "Guangdong", "440300": "Shenzhen",
    "510000": "Sichuan", "510100": "Chengdu", "510104": "Jinjiang", "510700": "Mianyang",
}


class CommandError(Exception):
    """What a person sees when a command fails: one line on stderr and the exit status `code`;
    with --json also {"error": ...} on stdout (to_json), naming the gRPC status and reason when
    a call was refused."""

    def __init__(self, message: str, code: int = EXIT_FAILED, *, status: str = "", reason: str = "",
                 fields: tuple[tuple[str, str], ...] = (), detail: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.status = status or ("USAGE" if code == EXIT_USAGE else "FAILED")
        self.reason = reason
        self.fields = fields
        self.detail = detail  # the message alone, when `message` also names the status

    def to_json(self) -> dict:
        return {"error": {"code": self.status, "reason": self.reason, "message": self.detail or str(self),
                          "fields": [{"field": f, "description": d} for f, d in self.fields], "exit_status": self.code}}


REGISTRY_HELP = ("registry HOST:PORT; repeat it for each replica (calls move to the next one when a replica is "
                 "unreachable); a DNS name with several addresses is tried address by address")


def registry_address(text: str) -> str:
    """An address for --registry: one that names no host (empty, or a resolver scheme alone such
    as dns:///) is a usage error here, not a channel that fails every call and stops failover."""
    import argparse

    value = text.strip()
    if not value or not value.rsplit("/", 1)[-1].split(":")[0].strip(" ,"):
        raise argparse.ArgumentTypeError(f"{text!r} names no host: give HOST:PORT (once for each replica)")
    return value


def add_registry_argument(parser, *, required: bool = True) -> None:
    """--registry, repeatable: the registry's replicas, a list in `args.registry`."""
    parser.add_argument("--registry", action="append", required=required, type=registry_address, metavar="HOST:PORT",
                        help=REGISTRY_HELP)


def load_identity(path: str, *roles: Role):
    from xinyi.crypto.pki import Identity, PKIError

    try:
        identity = Identity.load(Path(path))
    except PKIError as e:
        raise CommandError(f"--identity: {e}", EXIT_USAGE) from None
    if roles and identity.principal.role not in roles:
        wanted = f"a {roles[0]} identity" if len(roles) == 1 else "one of: " + " or ".join(str(r) for r in roles)
        raise CommandError(f"--identity {path} is a {identity.principal.role} identity; this command needs {wanted}", EXIT_USAGE)
    return identity


def parse_categories(text: str) -> list[str]:
    return [c.strip() for c in text.split(",") if c.strip()]


class _Output:
    json_printed = False  # a command's JSON answer is on stdout: an error after it adds no second document


def print_json(obj: Any) -> None:
    """Every JSON document the CLI prints: readable Chinese (no \\uXXXX escapes), indented."""
    print(json.dumps(obj, ensure_ascii=False, indent=2, sort_keys=False))
    _Output.json_printed = True


def print_json_line(obj: Any) -> None:
    """One JSON object a line, for output that streams (alerts watch)."""
    print(json.dumps(obj, ensure_ascii=False), flush=True)


def print_error_json(error: CommandError) -> None:
    """With --json a failure is a JSON document on stdout too, unless the command's own JSON
    answer (which says what went wrong) is already there."""
    if not _Output.json_printed:
        print_json(error.to_json())


def subcommands_of(sub, name: str):
    """The subcommands of a command another module added: `xinyi node quality` is added, by its
    own module, to the `node` command of xinyi.cli.serve (which must come first)."""
    import argparse

    return next(a for a in sub.choices[name]._actions if isinstance(a, argparse._SubParsersAction))


def area_label(node_id: str) -> str:
    name = AREA_NAMES.get(node_id)
    return f"{node_id} {name}" if name else node_id


class _Invocation:
    args: Any = None  # the parsed command line (main() keeps it), for what an error needs to explain itself


def remember_args(args) -> None:
    _Invocation.args = args


def _targets_of(args) -> list[str]:
    """The HOST:PORT addresses a command was given (--registry, repeatable; --node; --target)."""
    found = []
    for name in ("registry", "node", "target"):
        value = getattr(args, name, None)
        for text in (value if isinstance(value, list) else [value]):
            if isinstance(text, str):
                for one in text.split(","):
                    one = one.strip().removeprefix("dns:///").removeprefix("ipv4:").removeprefix("ipv6:")
                    if ":" in one and one.rsplit(":", 1)[1].isdigit():
                        found.append(one)
    return found


def refused_identity(args) -> tuple[str, str] | None:
    """(target, identity directory) when a server this command dialled completes the TLS handshake
    and then closes the connection: it does not trust the identity's certificate. gRPC shows only
    "Socket closed" (TLS 1.3 servers send no alert), which reads as a server that is down."""
    identity_dir = getattr(args, "identity", None)
    if not isinstance(identity_dir, str):
        return None
    from xinyi.crypto.pki import Identity, PKIError
    from xinyi.rpc.channels import hangs_up_on

    try:
        identity = Identity.load(Path(identity_dir))
    except PKIError:
        return None
    for target in _targets_of(args):
        # Every certificate of the network names localhost: the probe checks the root, not the name.
        if hangs_up_on(identity, Path(identity_dir), target, "localhost", timeout=3.0):
            return target, identity_dir
    return None


def client_error(e) -> CommandError:
    f = e.failure
    if f.code == "UNAVAILABLE" and not f.reason and "Socket closed" in f.message and _Invocation.args is not None:
        refused = refused_identity(_Invocation.args)
        if refused is not None:
            message = (f"TLS handshake refused: the server at {refused[0]} closes every connection right after the "
                       f"handshake: it does not trust the certificate of --identity {refused[1]} (issued under "
                       "another root than the network's, or by a CA the network does not know)")
            return CommandError(f"UNAVAILABLE: {message}", status="UNAVAILABLE", reason="TLS_HANDSHAKE_FAILED",
                                detail=message)
    hints = {
        "UNAVAILABLE": "" if f.reason.startswith("TLS_") else " (is the server running, and is this the right address?)",
        "DEADLINE_EXCEEDED": " (the server did not answer in time)",
    }
    return CommandError(f"{f.code}: {f.message}{hints.get(f.code, '')}", status=f.code, reason=f.reason, fields=f.fields,
                        detail=f.message)


async def run_client(coro):
    from xinyi import telemetry
    from xinyi.client import ClientError
    from xinyi.crypto.pki import PKIError
    from xinyi.errors import Refusal

    telemetry.setup("xinyi-cli")
    try:
        return await coro
    except ClientError as e:
        raise client_error(e) from None
    except Refusal as e:
        raise CommandError(e.message, EXIT_USAGE, status=e.kind.value, reason=e.reason,
                           fields=tuple((v.field, v.description) for v in e.violations)) from None
    except PKIError as e:
        raise CommandError(f"--identity: {e}", EXIT_USAGE) from None


