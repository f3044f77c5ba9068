"""An auditor's pages: every log (the registry's and each node's) with its latest signed
checkpoint and the witness's cosignature; verify a log (progress while it runs, the first bad
index when it fails); reconcile the registry's routings with the nodes' logs; search entries;
download an evidence bundle that `xinyi audit verify --offline` accepts."""

from __future__ import annotations

import datetime as dt
import io
import zipfile

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from xinyi.audit.checkpoint import NoteError, parse_note
from xinyi.audit.verify import verify_checkpoint
from xinyi.auditing import (
    evidence_bundle,
    fetch_log,
    log_key,
    reconcile,
    state_file,
    verify_and_remember,
)
from xinyi.crypto.identity import Principal, Role
from xinyi.directory import Directory
from xinyi.v1 import audit_pb2
from xinyi.web.app import SECURITY_HEADERS, Job, Web, enum_text, error_text, role_only

REGISTRY_LOG = "registry"
SEARCH_LIMIT = 500  # rows shown; the search says when there were more


async def _directory(web: Web) -> Directory:
    return await (await web.network()).directory(refresh=True)


def _audit_client(web: Web, directory: Directory, log: str):
    """A client of one log: "registry", or a node id from the signed directory."""
    from xinyi.client import AuditClient

    if log == REGISTRY_LOG:
        return AuditClient(web.config.identity, web.config.registry, Role.REGISTRY)
    entry = directory.nodes.get(log)
    if entry is None:
        raise ValueError(f"log: {log!r} is neither the registry nor a node in the signed directory")
    return AuditClient(web.config.identity, entry.endpoint, Principal(Role.NODE, log))


async def _log_summary(web: Web, directory: Directory, log: str) -> dict:
    out = {"log": log, "size": None, "at_ms": 0, "root": "", "signed": False, "cosigned": False, "error": ""}
    try:
        async with _audit_client(web, directory, log) as client:
            response = await client.checkpoint()
        origin = parse_note(response.checkpoint).checkpoint.origin
        checkpoint = verify_checkpoint(response.checkpoint, origin, log_key(directory, origin))
        out.update(size=checkpoint.size, at_ms=response.timestamp_ms, root=checkpoint.root.hex()[:16], signed=True,
                   cosigned=bool(response.cosigned_checkpoint))
    except NoteError as e:
        out["error"] = f"the checkpoint does not verify: {e}"
    except Exception as e:  # noqa: BLE001 - one log unreachable is a row, not a failed page
        out["error"] = error_text(e)
    return out


@role_only(Role.AUDITOR)
async def logs(request: Request, web: Web) -> Response:
    directory = await _directory(web)
    rows = [await _log_summary(web, directory, log) for log in (REGISTRY_LOG, *sorted(directory.nodes))]
    return web.render(request, "audit_logs.html", logs=rows)


@role_only(Role.AUDITOR)
async def verify(request: Request, web: Web) -> Response:
    log = (await request.form()).get("log", "")
    directory = await _directory(web)
    client = _audit_client(web, directory, log)

    async def work(job: Job) -> dict:
        async with client:
            response, directory_then, entries = await fetch_log(client, progress=job.progress)
            origin = parse_note(response.checkpoint).checkpoint.origin
            report = await verify_and_remember(client, response, directory_then, entries,
                                               state_file(origin, web.config.state_dir))
        return report.to_json()

    job = web.start_job("verify", log, work)
    return RedirectResponse(f"/jobs/{job.id}", status_code=303, headers=SECURITY_HEADERS)


@role_only(Role.AUDITOR)
async def reconcile_logs(request: Request, web: Web) -> Response:
    async def work(job: Job) -> dict:
        job.progress(0, 1)
        report = await reconcile(web.config.identity, web.config.registry)
        job.progress(1, 1)
        return report

    job = web.start_job("reconcile", "reconcile", work)
    return RedirectResponse(f"/jobs/{job.id}", status_code=303, headers=SECURITY_HEADERS)


def _millis(text: str, field: str, end: bool = False) -> int:
    if not text:
        return 0
    try:
        day = dt.datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=dt.timezone.utc)
    except ValueError:
        raise ValueError(f"{field}: {text!r} is not a date (YYYY-MM-DD)") from None
    return int((day + dt.timedelta(days=1 if end else 0)).timestamp() * 1000)


@role_only(Role.AUDITOR)
async def search(request: Request, web: Web) -> Response:
    q = request.query_params
    directory = await _directory(web)
    criteria = {k: q.get(k, "").strip() for k in ("log", "uscc", "institution", "decision", "from", "to")}
    rows, more = [], False
    if criteria["log"]:
        since, until = _millis(criteria["from"], "from"), _millis(criteria["to"], "to", end=True)
        async with _audit_client(web, directory, criteria["log"]) as client:
            records = await client.records(uscc=criteria["uscc"])
        for r in records:
            decision = enum_text(audit_pb2.Decision, r.decision, "DECISION_")
            if criteria["institution"] and criteria["institution"] not in (r.caller_id, f"{r.caller_role}/{r.caller_id}"):
                continue
            if criteria["decision"] and decision != criteria["decision"]:
                continue
            if (since and r.at_ms < since) or (until and r.at_ms >= until):
                continue
            if len(rows) == SEARCH_LIMIT:
                more = True
                break
            rows.append({"index": r.index, "at_ms": r.at_ms, "caller": f"{r.caller_role}/{r.caller_id}",
                         "action": r.action, "decision": decision, "uscc": r.uscc, "purpose": r.purpose,
                         "categories": list(r.categories), "reason": r.reason})
    return web.render(request, "audit_search.html", logs=(REGISTRY_LOG, *sorted(directory.nodes)),
                      criteria=criteria, rows=rows, more=more, searched=bool(criteria["log"]))


@role_only(Role.AUDITOR)
async def export(request: Request, web: Web) -> Response:
    log = request.query_params.get("log", "")
    directory = await _directory(web)
    async with _audit_client(web, directory, log) as client:
        response, _, entries = await fetch_log(client)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in evidence_bundle(response, entries).items():
            archive.writestr(f"evidence-{log}/{name}", data)
    headers = dict(SECURITY_HEADERS, **{"content-disposition": f'attachment; filename="evidence-{log}.zip"'})
    return Response(buffer.getvalue(), media_type="application/zip", headers=headers)


def routes() -> list[Route]:
    return [
        Route("/audit", logs),
        Route("/audit/verify", verify, methods=["POST"]),
        Route("/audit/reconcile", reconcile_logs, methods=["POST"]),
        Route("/audit/search", search),
        Route("/audit/export", export),
    ]
