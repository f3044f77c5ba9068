"""`xinyi health`: an operator's check that a node or the registry is up and serving
(grpc.health.v1 over the same mutual TLS as everything else), for scripts and monitors:
exit 0 when SERVING, 1 otherwise. It also says when the server's certificate expires, read
from a plain TLS handshake, and warns within 30 days."""

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


def add_parser(sub) -> None:
    a = sub.add_parser("health", help="operators: is a node or the registry serving? (exit 0 if so, 1 if not)")
    a.add_argument("--identity", required=True, help="any identity of the network (the check runs over mutual TLS)")
    where = a.add_mutually_exclusive_group(required=True)
    where.add_argument("--node", help="node HOST:PORT")
    where.add_argument("--registry", help="registry HOST:PORT")
    a.add_argument("--service", default="", help="one service, e.g. xinyi.v1.NodeService (default: the whole server)")
    a.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the answer (default 5)")
    a.add_argument("--tls-name", help="verify the server by this host name or IP address (one its certificate was "
                                      "issued with, `pki issue --dns/--ip`) instead of by its role (`registry.xinyi`)")
    a.add_argument("--json", action="store_true", help="print JSON")
    a.set_defaults(func=cmd_health)
