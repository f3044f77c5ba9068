"""A node operator's pages (the web app run with the node's own identity): the data quality the
node computes (records per category and source, stale sources flagged, lines rejected at the
last loads, share of enterprises per category), the disputes queue with its 20-day deadlines,
overdue first, the consent-sync lag and registration state, and queries by outcome."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from xinyi.crypto.identity import Role
from xinyi.web.app import Web, role_only


@role_only(Role.NODE)
async def overview(request: Request, web: Web) -> Response:
    report = (await (await web.network()).report()).to_json()
    queries = [(q["day"][5:], (q["answered"], q["refused"])) for q in report["queries"]]
    return web.render(request, "operator.html", report=report, queries=queries)


def routes() -> list[Route]:
    return [Route("/operator", overview)]
