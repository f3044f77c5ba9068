"""An enterprise's pages: its consents (pause, resume, revoke), a grant form that offers only
what fair use allows, its own records across every node (with a dispute from any record), its
disputes, and who accessed its data, each access proven against the node's signed checkpoint."""

from __future__ import annotations

import datetime as dt
from collections import Counter

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from xinyi.clock import DAY_MS, now_ms
from xinyi.crypto.identity import Role
from xinyi.errors import Refusal
from xinyi.privacy.fairuse import DETAIL_LEVELS, FETCH_PERIODIC, FETCH_TYPES, FairUse
from xinyi.records.vocab import CATEGORIES, PURPOSES
from xinyi.v1 import consent_pb2, dispute_pb2
from xinyi.web.app import SECURITY_HEADERS, Web, enum_text, error_text, role_only

ACTIONS = ("pause", "resume", "revoke")
CHART_DAYS = 30
RECORD_FRAME = ("category", "as_of", "source", "record_id", "disputed")  # shown apart from a record's fields  # the accesses chart: the last 30 days, one bar a day


def _state(record: consent_pb2.ConsentRecord) -> str:
    return enum_text(consent_pb2.ConsentStatus, record.status, "CONSENT_STATUS_")


def _fetches(record: consent_pb2.ConsentRecord) -> tuple[int, str]:
    """(used, left) as shown: a once consent has one fetch per node; a periodic one N per period."""
    if record.fetch_type == consent_pb2.FETCH_TYPE_PERIODIC:
        period = enum_text(consent_pb2.FetchPeriod, record.fetch_period, "FETCH_PERIOD_")
        return record.uses, f"{record.max_fetches}/{period}"
    return record.uses, "0" if _state(record) == "spent" else "1"


def consent_view(record: consent_pb2.ConsentRecord) -> dict:
    used, left = _fetches(record)
    return {
        "id": record.consent_id, "state": _state(record), "purpose": record.purpose, "grantee": record.grantee,
        "categories": list(record.categories), "valid_until_ms": record.valid_until_ms,
        "detail": enum_text(consent_pb2.DetailLevel, record.detail_level, "DETAIL_LEVEL_"),
        "used": used, "left": left, "reached": list(record.delivered_to), "pending": list(record.pending),
        "actions": [a for a in ACTIONS if _allowed(_state(record), a)],
    }


def _allowed(state: str, action: str) -> bool:
    return {"pause": state == "active", "resume": state == "paused", "revoke": state in ("active", "paused")}[action]


@role_only(Role.ENTERPRISE)
async def consents(request: Request, web: Web) -> Response:
    client = await web.network()
    rows = [consent_view(r) for r in await client.list()]
    rows.sort(key=lambda r: (r["state"] not in ("active", "paused"), -r["valid_until_ms"]))
    return web.render(request, "consents.html", consents=rows, done=request.query_params.get("done", ""))


@role_only(Role.ENTERPRISE)
async def confirm_change(request: Request, web: Web) -> Response:
    consent_id, action = request.path_params["consent_id"], request.path_params["action"]
    if action not in ACTIONS:
        return web.render(request, "refused.html", status=404, message_key="refused.not_found")
    client = await web.network()
    record = consent_view(await client.status(consent_id))
    if request.method == "GET":
        return web.render(request, "consent_change.html", consent=record, action=action)
    await client.change(consent_id, action)
    return RedirectResponse(f"/consents?done={action}", status_code=303, headers=SECURITY_HEADERS)


# --- granting ---------------------------------------------------------------------------------
def _rules() -> FairUse:
    return FairUse.from_dir()


def _form_values(form) -> dict:
    def number(name: str, default: int) -> int | str:
        text = (form.get(name) or "").strip()
        if not text:
            return default
        try:
            return int(text)
        except ValueError:
            return text  # shown back with the field's error
    return {
        "purpose": form.get("purpose", ""), "grantee": (form.get("grantee") or "").strip(),
        "categories": form.getlist("categories") if hasattr(form, "getlist") else [],
        "detail_level": form.get("detail_level", "summary"), "days": number("days", 30),
        "history_months": number("history_months", 12), "fetch_type": form.get("fetch_type", "once"),
        "max_fetches": number("max_fetches", 0), "fetch_period": form.get("fetch_period", ""),
    }


def check_grant(values: dict) -> list[tuple[str, str]]:
    """Problems with a grant, as (field, message): the form's own checks, then fair use's, whose
    message quotes the rule (the registry checks the same rules again when it is granted)."""
    problems = []
    if not values["grantee"]:
        problems.append(("grantee", "grantee: give the institution's USCC (the bank that asked you)"))
    for name in ("days", "history_months", "max_fetches"):
        if not isinstance(values[name], int):
            problems.append((name, f"{name}: must be a whole number, not {values[name]!r}"))
    if not values["categories"]:
        problems.append(("categories", "categories: choose at least one"))
    if problems:
        return problems
    if values["purpose"] not in PURPOSES:
        return [("purpose", f"purpose: choose one of {', '.join(PURPOSES)}")]
    start = now_ms()
    try:
        _rules().check(purpose=values["purpose"], categories=values["categories"], detail_level=values["detail_level"],
                       history_months=values["history_months"], valid_from_ms=start,
                       valid_until_ms=start + max(values["days"], 0) * DAY_MS, fetch_type=values["fetch_type"],
                       max_fetches=values["max_fetches"] if values["fetch_type"] == FETCH_PERIODIC else 0,
                       fetch_period=values["fetch_period"] if values["fetch_type"] == FETCH_PERIODIC else "")
    except Refusal as e:
        field = e.violations[0].field if getattr(e, "violations", None) else ""
        return [(field.removeprefix("consent.").replace("valid_until_ms", "days"), e.message)]
    if values["days"] < 1:
        return [("days", "days: must be at least 1")]
    return []


def _grant_form(request: Request, web: Web, values: dict, problems=(), status: int = 200) -> Response:
    rule = _rules().rule(values["purpose"]) if values["purpose"] in PURPOSES else None
    return web.render(request, "grant.html", status=status, purposes=PURPOSES, categories=CATEGORIES,
                      detail_levels=DETAIL_LEVELS, rule=rule, values=values,
                      problems=dict(problems), problem_list=list(problems))


@role_only(Role.ENTERPRISE)
async def grant_form(request: Request, web: Web) -> Response:
    purpose = request.query_params.get("purpose", "")
    values = _form_values({"purpose": purpose if purpose in PURPOSES else ""})
    if values["purpose"]:
        rule = _rules().rule(purpose)
        values.update(days=rule.max_days, history_months=min(12, rule.max_history_months),
                      detail_level=next(d for d in DETAIL_LEVELS if d in rule.detail_levels),
                      fetch_type=next(f for f in FETCH_TYPES if f in rule.fetch_types), max_fetches=rule.max_fetches or 0,
                      fetch_period=rule.fetch_period or "")
    return _grant_form(request, web, values)


@role_only(Role.ENTERPRISE)
async def grant_review(request: Request, web: Web) -> Response:
    values = _form_values(await request.form())
    problems = check_grant(values)
    if problems:
        return _grant_form(request, web, values, problems, status=400)
    until = now_ms() + values["days"] * DAY_MS
    return web.render(request, "grant_review.html", values=values, valid_until_ms=until,
                      uscc=web.config.identity.principal.id)


@role_only(Role.ENTERPRISE)
async def grant(request: Request, web: Web) -> Response:
    values = _form_values(await request.form())
    problems = check_grant(values)
    if problems:
        return _grant_form(request, web, values, problems, status=400)
    client = await web.network()
    periodic = values["fetch_type"] == FETCH_PERIODIC
    try:
        record = await client.grant(values["grantee"], values["purpose"], values["categories"], values["days"],
                                    detail_level=values["detail_level"], history_months=values["history_months"],
                                    fetch_type=values["fetch_type"], max_fetches=values["max_fetches"] if periodic else 0,
                                    fetch_period=values["fetch_period"] if periodic else "")
    except Exception as e:  # noqa: BLE001 - the registry's refusal, shown on the form
        return _grant_form(request, web, values, [("", error_text(e))], status=400)
    return RedirectResponse(f"/consents?done=granted&id={record.consent_id}", status_code=303, headers=SECURITY_HEADERS)


# --- my data, disputes, accesses ------------------------------------------------------------------
@role_only(Role.ENTERPRISE)
async def my_data(request: Request, web: Web) -> Response:
    """GET: what reading one's records means; POST: read them (a self-query, audited at each node)."""
    if request.method == "GET":
        return web.render(request, "my_data.html", result=None, frame=RECORD_FRAME)
    client = await web.network()
    result = await client.my_records()
    return web.render(request, "my_data.html", result=result, frame=RECORD_FRAME)


@role_only(Role.ENTERPRISE)
async def disputes(request: Request, web: Web) -> Response:
    client = await web.network()
    if request.method == "POST":
        form = await request.form()
        problems = [(f, f"{f}: required") for f in ("node_id", "record_id", "reason") if not (form.get(f) or "").strip()]
        if problems:
            return web.render(request, "failed.html", status=400, message="; ".join(p for _, p in problems))
        await client.dispute(form["node_id"].strip(), form["record_id"].strip(), form["reason"].strip())
        return RedirectResponse("/disputes?done=filed", status_code=303, headers=SECURITY_HEADERS)
    items, problems = await client.disputes()
    rows = [{"id": d.dispute_id, "node": d.node_id, "record": d.record_id, "reason": d.reason,
             "filed_at_ms": d.filed_at_ms, "due_ms": d.due_ms, "overdue": d.overdue,
             "state": enum_text(dispute_pb2.DisputeStatus, d.status, "DISPUTE_STATUS_"),
             "resolution": d.resolution, "resolved_at_ms": d.resolved_at_ms} for d in items]
    rows.sort(key=lambda r: (r["state"] != "open", -r["filed_at_ms"]))
    return web.render(request, "disputes.html", disputes=rows, problems=problems,
                      done=request.query_params.get("done", ""))


@role_only(Role.ENTERPRISE)
async def accesses(request: Request, web: Web) -> Response:
    client = await web.network()
    listing = await client.access_listing(limit=500)
    rows = [a.to_json() for a in listing.accesses]
    today = dt.datetime.now(dt.timezone.utc).date()
    days = [today - dt.timedelta(days=n) for n in range(CHART_DAYS - 1, -1, -1)]
    first_ms = int(dt.datetime.combine(days[0], dt.time(), dt.timezone.utc).timestamp() * 1000)
    # only the chart's days: a time a node sent out of any calendar's range is no failed page
    per_day = Counter(dt.datetime.fromtimestamp(r["at_ms"] / 1000, dt.timezone.utc).date() for r in rows
                      if first_ms <= r["at_ms"] < first_ms + (CHART_DAYS + 1) * DAY_MS)
    return web.render(request, "accesses.html", accesses=rows, problems=listing.problems, more=listing.more,
                      per_day=[(d.strftime("%m-%d"), per_day.get(d, 0)) for d in days])


def routes() -> list[Route]:
    return [
        Route("/consents", consents),
        Route("/consents/{consent_id}/{action}", confirm_change, methods=["GET", "POST"]),
        Route("/grant", grant_form),
        Route("/grant/review", grant_review, methods=["POST"]),
        Route("/grant/sign", grant, methods=["POST"]),
        Route("/my-data", my_data, methods=["GET", "POST"]),
        Route("/disputes", disputes, methods=["GET", "POST"]),
        Route("/accesses", accesses),
    ]
