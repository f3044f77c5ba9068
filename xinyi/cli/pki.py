"""`xinyi pki ...`: the national root and identity bundles, on the operator's own machine."""

from __future__ import annotations

from pathlib import Path

from xinyi.cli.common import EXIT_FAILED, EXIT_USAGE, CommandError, add_registry_argument, print_json
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
        out = issue_identity(Path(args.dir), Role(args.role), args.id, licence=args.licence or "", ca=args.ca or "",
                             dns_names=tuple(args.dns or ()), ip_addresses=tuple(args.ip or ()), **validity)
    except (PKIError, IdentityError) as e:
        raise CommandError(f"--id: {e}" if isinstance(e, IdentityError) else str(e), EXIT_USAGE) from None
    issuer = f"issuing CA {args.ca}" if args.ca else "the root"
    print(f"{args.role}/{args.id} identity written to {out} (issued by {issuer})")


def cmd_pki_ca(args) -> None:
    from xinyi.crypto.pki import PKIError, create_issuing_ca

    try:
        out = create_issuing_ca(Path(args.dir), args.id, days=args.days)
    except PKIError as e:
        raise CommandError(f"--id: {e}" if "CA name" in str(e) else str(e), EXIT_USAGE) from None
    print(f"issuing CA {args.id} written to {out}; issue from it with `xinyi pki issue --ca {args.id}` "
          "(the root's key can now go offline)")


def cmd_pki_revoke(args) -> None:
    from xinyi.crypto.pki import PKIError, revoke_ca, revoke_identity

    if bool(args.id) == bool(args.ca):
        raise CommandError("give --id ROLE-ID (an identity) or --ca NAME (an issuing CA)", EXIT_USAGE)
    if args.previous and not args.id:
        raise CommandError("--previous: goes with --id ROLE-ID (the certificates `pki renew` replaced)", EXIT_USAGE)
    try:
        if args.id:
            serials = revoke_identity(Path(args.dir), args.id, args.reason, previous_only=args.previous)
            which = "replaced certificates (its current ones stay valid)" if args.previous else "certificates"
            print(f"revoked {args.id}: {len(serials)} {which} ({', '.join(f'{s:x}' for s in serials)})")
        else:
            serial = revoke_ca(Path(args.dir), args.ca, args.reason)
            print(f"revoked issuing CA {args.ca} (serial {serial:x}); every identity it issued stops verifying")
    except PKIError as e:
        raise CommandError(str(e), EXIT_USAGE) from None
    print(f"now hand the lists to the network: xinyi pki publish --dir {args.dir} --identity DIR --registry HOST:PORT")


def cmd_pki_renew(args) -> None:
    from xinyi.crypto.pki import PKIError, renew_identity

    try:
        out = renew_identity(Path(args.dir), args.id, days=args.days)
    except PKIError as e:
        raise CommandError(str(e), EXIT_USAGE) from None
    print(f"{args.id}: new keys and certificates in {out}; the old ones are in {out / 'previous'} and stay valid "
          "until they expire. Send SIGHUP to the service to switch without dropping connections.")


def cmd_pki_status(args) -> None:
    from xinyi.crypto.pki import PKIError, pki_status

    try:
        rows = pki_status(Path(args.dir))
    except PKIError as e:
        raise CommandError(str(e), EXIT_USAGE) from None
    if args.json:
        print_json([r.to_json() for r in rows])
    else:
        for r in rows:
            note = {"revoked": f"REVOKED: {r.revoked}", "expired": f"EXPIRED {-r.days_left} days ago",
                    "expiring": f"expires in {r.days_left} days", "valid": f"valid for {r.days_left} days"}[r.state]
            print(f"{r.what + (' (previous)' if r.previous else ''):<48} {r.not_after:%Y-%m-%d}  {note}")
    attention = [r for r in rows if r.state in ("expired", "expiring") and not r.previous]
    if attention:
        raise CommandError(f"{len(attention)} certificate(s) expired or expire within 30 days; renew them with "
                           "`xinyi pki renew`", EXIT_FAILED)



def cmd_pki_publish(args) -> None:
    import asyncio

    from cryptography.hazmat.primitives.serialization import Encoding

    from xinyi.cli.common import load_identity, run_client
    from xinyi.client import RevocationPublisher
    from xinyi.crypto.pki import PKIError, issuing_cas, revocation_lists

    try:
        authorities = [ca.cert.public_bytes(Encoding.DER) for ca in issuing_cas(Path(args.dir))]
        crls = [crl.public_bytes(Encoding.DER) for crl in revocation_lists(Path(args.dir))]
    except PKIError as e:
        raise CommandError(f"--dir: {e}", EXIT_USAGE) from None
    if not crls and not authorities:
        raise CommandError(f"--dir: {args.dir} holds no issuing CA and no revocation list to publish", EXIT_USAGE)
    identity = load_identity(args.identity)

    async def run():
        async with RevocationPublisher(identity, args.registry) as publisher:
            return await publisher.publish(authorities, crls)

    response = asyncio.run(run_client(run()))
    if args.json:
        print_json({"directory_version": response.directory_version, "accepted": list(response.accepted),
                    "unchanged": list(response.unchanged), "authorities": len(authorities)})
        return
    for line in response.accepted:
        print(f"published  {line}")
    for line in response.unchanged:
        print(f"unchanged  {line} (the registry holds this list or a newer one)")
    print(f"{len(authorities)} issuing CA(s) known; directory version {response.directory_version}: nodes and clients "
          "enforce it within seconds")


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
    a.add_argument("--ca", help="the issuing CA (from `pki ca`) to issue from (default: the root)")
    a.add_argument("--dns", action="append", metavar="NAME",
                   help="a host name the service is reached by, put in its TLS certificate (repeatable)")
    a.add_argument("--ip", action="append", metavar="ADDR",
                   help="an IP address the service is reached by, put in its TLS certificate (repeatable)")
    a.set_defaults(func=cmd_pki_issue)
    a = pki.add_parser("ca", help="make an issuing CA certified by the root, in DIR/cas/NAME")
    a.add_argument("--dir", required=True, help="directory holding ca/ (from `pki init`)")
    a.add_argument("--id", required=True, help="the CA's name, e.g. sichuan or banks (lowercase, digits, dashes)")
    a.add_argument("--days", type=int, default=0, help="validity in days (default 1825)")
    a.set_defaults(func=cmd_pki_ca)
    a = pki.add_parser("revoke", help="revoke an identity (or an issuing CA) in its CA's signed revocation list")
    a.add_argument("--dir", required=True, help="directory holding the CA that issued it")
    a.add_argument("--id", help="the identity, as its bundle folder: ROLE-ID, e.g. bank-91100000100003962T")
    a.add_argument("--ca", help="an issuing CA to revoke (in the root's list)")
    a.add_argument("--previous", action="store_true",
                   help="with --id: only the certificates `pki renew` replaced (after a leaked key: renew, SIGHUP, "
                        "then revoke the old ones)")
    from xinyi.crypto.revocation import REASONS

    a.add_argument("--reason", default="unspecified", choices=list(REASONS), help="why (default unspecified)")
    a.set_defaults(func=cmd_pki_revoke)
    a = pki.add_parser("renew", help="new keys and certificates for the same identity; the old stay valid for a while")
    a.add_argument("--dir", required=True, help="directory holding the CA that issued it")
    a.add_argument("--id", required=True, help="the identity, as its bundle folder: ROLE-ID")
    a.add_argument("--days", type=int, default=0, help="validity in days (default 365)")
    a.set_defaults(func=cmd_pki_renew)
    a = pki.add_parser("publish", help="hand every revocation list and issuing CA in DIR to the registry")
    a.add_argument("--dir", required=True, help="the PKI directory (its ca/crl.pem and cas/*/)")
    a.add_argument("--identity", required=True, help="any identity of the network to connect with, e.g. certs/registry-national")
    add_registry_argument(a)
    a.add_argument("--json", action="store_true", help="print JSON")
    a.set_defaults(func=cmd_pki_publish)
    a = pki.add_parser("status", help="every certificate in DIR: expiry (30-day warning) and revocation")
    a.add_argument("--dir", required=True, help="the PKI directory")
    a.add_argument("--json", action="store_true", help="print JSON")
    a.set_defaults(func=cmd_pki_status)
