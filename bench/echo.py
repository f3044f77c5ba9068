"""The baseline: the same processes, hops and mutual-TLS channels as the product, with a handler
that only echoes. `bench/run.py` starts it beside the real network and measures both.

Bare: a plain grpc.aio server and channels with mutual TLS and the product's channel and server
options, and nothing else - no interceptors (tracing, authentication, the request guard), no
health or reflection - so the product's own cost shows in the ratios instead of flattering them.

    python bench/echo.py --identity D/node-310000 --listen 127.0.0.1:P                # an echoing "node"
    python bench/echo.py --identity D/registry-national --listen 127.0.0.1:P \\
                         --forward 127.0.0.1:Q --forward-id 310000                       # a relaying "registry"
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from pathlib import Path

import grpc

from xinyi.crypto.identity import Principal, Role
from xinyi.crypto.pki import Identity
from xinyi.rpc.channels import channel_credentials, channel_options, server_credentials
from xinyi.rpc.server import server_options

METHOD = "/bench.Echo/Echo"


def _raw(handler):
    return grpc.method_handlers_generic_handler(
        "bench.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(handler)}  # bytes in, bytes out
    )


def bare_channel(identity: Identity, target: str, expect: Principal | Role) -> grpc.aio.Channel:
    """The product's channel (xinyi.rpc.channels.secure_channel) without its client interceptors."""
    return grpc.aio.secure_channel(target, channel_credentials(identity), options=channel_options(expect))


async def serve(identity: Identity, listen: str, forward: str | None, forward_id: str | None) -> None:
    upstream = None
    if forward:
        channel = bare_channel(identity, forward, Principal(Role.NODE, forward_id))
        upstream = channel.unary_unary(METHOD)

    async def echo(request: bytes, context) -> bytes:
        if upstream is not None:
            return await upstream(request, timeout=10)
        return request

    server = grpc.aio.server(options=server_options())
    server.add_generic_rpc_handlers((_raw(echo),))
    port = server.add_secure_port(listen, server_credentials(identity))
    await server.start()
    print(f"echo listening on port {port}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--identity", required=True)
    parser.add_argument("--listen", required=True)
    parser.add_argument("--forward")
    parser.add_argument("--forward-id")
    args = parser.parse_args()
    asyncio.run(serve(Identity.load(Path(args.identity)), args.listen, args.forward, args.forward_id))


if __name__ == "__main__":
    main()
