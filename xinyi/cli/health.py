"""`xinyi health`: an operator's check that a node or the registry is up and serving
(grpc.health.v1 over the same mutual TLS as everything else), for scripts and monitors:
exit 0 when SERVING, 1 otherwise. It also says when the server's certificate expires, read
from a plain TLS handshake, and warns within 30 days.

With --target HOST:PORT the server's role is read from its certificate, and the status of every
service it registers (the server as a whole, "", and each named one) is printed; exit 0 only
when all are SERVING."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

from xinyi.cli.common import CommandError, load_identity, print_json, run_client
from xinyi.crypto.identity import Role

EXPIRY_WARNING_DAYS = 30


def cmd_health(args) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from xinyi.client import ClientError
    from xinyi.crypto.pki import tls_role_name
    from xinyi.rpc.channels import peer_certificate, secure_channel
    from xinyi.rpc.status import RpcFailure

    identity = load_identity(args.identity)
    if args.target:
        return _check_every_service(args, identity)
    target, role = (args.node, Role.NODE) if args.node else (args.registry, Role.REGISTRY)

    async def run() -> str:
        channel = secure_channel(identity, target, role, tls_name=args.tls_name)
        try:
            stub = health_pb2_grpc.HealthStub(channel)
            response = await stub.Check(health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout)
            return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
        except grpc.aio.AioRpcError as e:
            if e.code() == grpc.StatusCode.NOT_FOUND:  # the server has no such service
                return "SERVICE_UNKNOWN"
            raise ClientError(RpcFailure.from_error(e)) from None
        finally:
            await channel.close()

    status = asyncio.run(run_client(run()))
    service = args.service or "(the server as a whole)"
    try:
        cert = peer_certificate(identity, Path(args.identity), target, args.tls_name or tls_role_name(role),
                                  args.timeout)
    except (OSError, ValueError) as e:
        raise CommandError(f"{role} at {target}: its certificate could not be read: {e}") from None
    expires = cert.not_valid_after_utc
    days_left = (expires - dt.datetime.now(dt.timezone.utc)).days
    expiring = days_left <= EXPIRY_WARNING_DAYS
    if args.json:
        print_json({"target": target, "role": str(role), "service": args.service, "status": status,
                    "certificate": {"subject": cert.subject.rfc4514_string(), "serial": f"{cert.serial_number:x}",
                                    "not_after": expires.isoformat(), "days_left": days_left,
                                    "expiring": expiring}})
    else:
        print(f"server certificate expires on {expires:%Y-%m-%d %H:%M} UTC (in {days_left} days)"
              + (f"; WARNING: within {EXPIRY_WARNING_DAYS} days, its operator must renew it (`xinyi pki renew`)"
                 if expiring else ""))
        print(f"{role} at {target}, {service}: {status}")  # last: scripts read the status from the last line
    if status != "SERVING":
        raise CommandError(f"{role} at {target}, {service}: {status}")


WHOLE_SERVER = "(the server as a whole)"


def _server_certificate(identity, bundle: Path, target: str, tls_name: str | None, timeout: float):
    """The certificate of the server at `target`, verified against the national root, and the
    role it names. Without --tls-name the server is verified as a registry, then as a node: the
    two roles that serve."""
    import ssl

    from xinyi.crypto.pki import PKIError, principal_of, tls_role_name
    from xinyi.rpc.channels import peer_certificate

    names = [tls_name] if tls_name else [tls_role_name(Role.REGISTRY), tls_role_name(Role.NODE)]
    for name in names:
        try:
            cert = peer_certificate(identity, bundle, target, name, timeout)
        except ssl.SSLCertVerificationError as e:
            if e.verify_code == 62 and name != names[-1]:  # X509_V_ERR_HOSTNAME_MISMATCH: try the other role
                continue
            raise CommandError(f"--target {target}: its certificate is not one of this network's "
                               f"{'(' + name + ')' if tls_name else 'registry or nodes'}: {e.verify_message}") from None
        except (OSError, ValueError) as e:
            raise CommandError(f"--target {target}: its certificate could not be read: {e}") from None
        try:
            principal = principal_of(cert)
        except PKIError as e:
            raise CommandError(f"--target {target}: {e}") from None
        if principal.role not in (Role.NODE, Role.REGISTRY):
            raise CommandError(f"--target {target}: the server is {principal}, neither a node nor the registry")
        return cert, principal
    raise AssertionError("unreachable")


async def _reflected_services(channel, timeout: float) -> list[str]:
    """The services a server lists through gRPC reflection, but health and reflection themselves."""
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    names: list[str] = []
    async for response in stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                                    timeout=timeout):
        names += [s.name for s in response.list_services_response.service]
    return sorted(n for n in names if not n.startswith(("grpc.health.", "grpc.reflection.")))


def _check_every_service(args, identity) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from xinyi.client import ClientError
    from xinyi.rpc.channels import secure_channel
    from xinyi.rpc.status import RpcFailure

    target = args.target
    cert, principal = _server_certificate(identity, Path(args.identity), target, args.tls_name, args.timeout)
    name = health_pb2.HealthCheckResponse.ServingStatus.Name

    async def run() -> dict[str, str]:
        channel = secure_channel(identity, target, principal, tls_name=args.tls_name)
        try:
            stub = health_pb2_grpc.HealthStub(channel)
            if args.service:
                try:
                    response = await stub.Check(health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout)
                    return {args.service: name(response.status)}
                except grpc.aio.AioRpcError as e:
                    if e.code() == grpc.StatusCode.NOT_FOUND:
                        return {args.service: "SERVICE_UNKNOWN"}
                    raise
            try:
                listed = await stub.List(health_pb2.HealthListRequest(), timeout=args.timeout)
                return {service: name(status.status) for service, status in sorted(listed.statuses.items())}
            except grpc.aio.AioRpcError as e:
                if e.code() not in (grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL):
                    raise
            # A server of an earlier release, without Health.List: its services from reflection, each checked.
            statuses = {}
            for service in ["", *await _reflected_services(channel, args.timeout)]:
                try:
                    response = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=args.timeout)
                    statuses[service] = name(response.status)
                except grpc.aio.AioRpcError as e:
                    if e.code() != grpc.StatusCode.NOT_FOUND:
                        raise
                    statuses[service] = "SERVICE_UNKNOWN"
            return statuses
        except grpc.aio.AioRpcError as e:
            raise ClientError(RpcFailure.from_error(e)) from None
        finally:
            await channel.close()

    statuses = asyncio.run(run_client(run()))
    expires = cert.not_valid_after_utc
    days_left = (expires - dt.datetime.now(dt.timezone.utc)).days
    expiring = days_left <= EXPIRY_WARNING_DAYS
    failing = [service or WHOLE_SERVER for service, status in statuses.items() if status != "SERVING"]
    if not statuses:
        failing = [WHOLE_SERVER]
    role = principal.role
    if args.json:
        print_json({"target": target, "role": str(role), "server": str(principal), "services": statuses,
                    "serving": not failing,
                    "certificate": {"subject": cert.subject.rfc4514_string(), "serial": f"{cert.serial_number:x}",
                                    "not_after": expires.isoformat(), "days_left": days_left, "expiring": expiring}})
    else:
        print(f"server certificate expires on {expires:%Y-%m-%d %H:%M} UTC (in {days_left} days)"
              + (f"; WARNING: within {EXPIRY_WARNING_DAYS} days, its operator must renew it (`xinyi pki renew`)"
                 if expiring else ""))
        print(f"{principal} at {target}:")
        for service, status in statuses.items():
            print(f"  {service or WHOLE_SERVER}: {status}")
        # last: scripts read the verdict from the last line
        print(f"{role} at {target}: " + (f"NOT_SERVING ({', '.join(failing)})" if failing
                                          else f"SERVING (all {len(statuses)})"))
    if failing:
        raise CommandError(f"{role} at {target}: not serving: " + ", ".join(
            f"{s} {statuses.get('' if s == WHOLE_SERVER else s, 'no answer')}" for s in failing))


def add_parser(sub) -> None:
    a = sub.add_parser("health", help="operators: is a node or the registry serving? (exit 0 if so, 1 if not)",
                       description="Exit 0 when the server (with --target: every service it serves) is SERVING, 1 otherwise.")
    a.add_argument("--identity", required=True, help="any identity of the network (the check runs over mutual TLS)")
    where = a.add_mutually_exclusive_group(required=True)
    where.add_argument("--node", help="node HOST:PORT")
    where.add_argument("--registry", help="registry HOST:PORT")
    where.add_argument("--target", help="HOST:PORT of a node or the registry (its role is read from its certificate): "
                                        "the status of every service it serves")
    a.add_argument("--service", default="", help="one service, e.g. xinyi.v1.NodeService (default: the whole server; "
                                                 "with --target, every service)")
    a.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the answer (default 5)")
    a.add_argument("--tls-name", help="verify the server by this host name or IP address (one its certificate was "
                                      "issued with, `pki issue --dns/--ip`) instead of by its role (`registry.xinyi`)")
    a.add_argument("--json", action="store_true", help="print JSON")
    a.set_defaults(func=cmd_health)
