"""`xinyi health`: an operator's check that a node or the registry is up and serving
(grpc.health.v1 over the same mutual TLS as everything else), for scripts and monitors:
exit 0 when SERVING, 1 otherwise."""

from __future__ import annotations

import asyncio

from xinyi.cli.common import CommandError, load_identity, print_json, run_client
from xinyi.crypto.identity import Role


def cmd_health(args) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from xinyi.client import ClientError
    from xinyi.rpc.channels import secure_channel
    from xinyi.rpc.status import RpcFailure

    identity = load_identity(args.identity)
    target, role = (args.node, Role.NODE) if args.node else (args.registry, Role.REGISTRY)

    async def run() -> str:
        channel = secure_channel(identity, target, role)
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
    if args.json:
        print_json({"target": target, "role": str(role), "service": args.service, "status": status})
    else:
        print(f"{role} at {target}, {service}: {status}")
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
    a.add_argument("--json", action="store_true", help="print JSON")
    a.set_defaults(func=cmd_health)
