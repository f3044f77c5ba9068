"""`xinyi pki ...`: the national root and identity bundles, on the operator's own machine."""

from __future__ import annotations

from pathlib import Path

from xinyi.cli.common import EXIT_USAGE, CommandError
from xinyi.crypto.identity import Role


def cmd_pki_init(args) -> None:
    from xinyi.crypto.pki import PKIError, init_root

    try:
        init_root(Path(args.dir))
    except PKIError as e:
        raise CommandError(str(e), EXIT_USAGE) from None
    print(f"root CA written to {Path(args.dir) / 'ca'} (keep ca.key offline)")


def cmd_pki_issue(args) -> None:
    import datetime as dt

    from xinyi.crypto.identity import IdentityError
    from xinyi.crypto.pki import PKIError, issue_identity

    validity = {}
    if args.days:
        now = dt.datetime.now(dt.timezone.utc)
        validity = {"not_before": now - dt.timedelta(minutes=5), "not_after": now + dt.timedelta(days=args.days)}
    from xinyi.crypto.identity import check_principal_id

    try:
        check_principal_id(Role(args.role), args.id)  # the id first: it is the likelier mistake
    except IdentityError as e:
        raise CommandError(f"--id: {e}", EXIT_USAGE) from None
    if Role(args.role) in (Role.BANK, Role.GUARANTOR) and not args.licence:
        raise CommandError("--licence: a bank or guarantor needs its financial licence number, e.g. B0014H144030001",
                           EXIT_USAGE)
    try:
        out = issue_identity(Path(args.dir), Role(args.role), args.id, licence=args.licence or "", **validity)
    except (PKIError, IdentityError) as e:
        raise CommandError(f"--id: {e}" if isinstance(e, IdentityError) else str(e), EXIT_USAGE) from None
    print(f"{args.role}/{args.id} identity written to {out}")




def add_parser(sub) -> None:
    pki = sub.add_parser("pki", help="national root CA and identity bundles").add_subparsers(dest="pki", required=True)
    a = pki.add_parser("init", help="create the national root CA in DIR/ca")
    a.add_argument("--dir", required=True, help="directory for the PKI (e.g. certs)")
    a.set_defaults(func=cmd_pki_init)
    a = pki.add_parser("issue", help="issue an identity bundle into DIR/ROLE-ID")
    a.add_argument("--dir", required=True, help="directory holding ca/ (from `pki init`)")
    a.add_argument("--role", required=True, choices=[r.value for r in Role])
    a.add_argument("--id", required=True, help="node: 6-digit area code; bank, guarantor, enterprise: USCC; registry, auditor: a name")
    a.add_argument("--days", type=int, default=0, help="validity in days (default 365)")
    a.add_argument("--licence", help="bank or guarantor: its financial licence number (required for them)")
    a.set_defaults(func=cmd_pki_issue)
