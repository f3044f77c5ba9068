"""A node operator's pages (the web app run with the node's own identity): the data quality the
node computes (records per category and source, stale sources flagged, lines rejected at the
last loads, share of enterprises per category), the disputes queue with its 20-day deadlines,
overdue first, the consent-sync lag and registration state, and queries by outcome."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from xinyi.crypto.identity import Role
from xinyi.v1 import dispute_pb2
from xinyi.web.app import Web, role_only


def dispute_row(d) -> dict:
    return {"id": d.dispute_id, "uscc": d.uscc, "record": d.record_id, "reason": d.reason,
            "filed_at_ms": d.filed_at_ms, "due_ms": d.due_ms, "overdue": d.overdue,
            "state": dispute_pb2.DisputeStatus.Name(d.status).removeprefix("DISPUTE_STATUS_").lower()}


@role_only(Role.NODE)
async def overview(request: Request, web: Web) -> Response:
    client = await web.network()
    report = (await client.report()).to_json()
    queue = sorted((dispute_row(d) for d in await client.disputes(open_only=True)),
                   key=lambda d: (not d["overdue"], d["due_ms"]))
    return web.render(request, "operator.html", report=report, disputes=queue)


def routes() -> list[Route]:
    return [Route("/operator", overview)]
