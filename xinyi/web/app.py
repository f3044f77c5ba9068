"""The web app: a Starlette application served by `xinyi web` on the holder's own machine.

`create_app(config)` builds it: the Guard (security.py) in front of every page, one client of
the network for the identity's role (the same client library as the CLI), the pages of that
role (enterprise.py, auditor.py, operator.py), Jinja2 templates and one message catalogue per
language. Pages render on the server; there is no JavaScript."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from xinyi.clock import utc_text
from xinyi.crypto.identity import Role
from xinyi.crypto.pki import Identity
from xinyi.web.charts import bar_chart
from xinyi.web.i18n import DEFAULT_LANGUAGE, LANGUAGES, translator
from xinyi.web.security import Guard, Sessions, allowed_hosts, session_cookie

log = logging.getLogger("xinyi.web")

HERE = Path(__file__).parent
LANGUAGE_COOKIE = "xinyi_lang"
MAX_JOBS = 50  # jobs kept for their pages: the oldest finished one goes first; all running, a new one is refused
# No script, no frame, no form to elsewhere, no referrer to another site (a login link must not
# leak through one; "no-referrer" would make the browser send `Origin: null` on this app's own forms).
SECURITY_HEADERS = {
    "content-security-policy": "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "x-frame-options": "DENY",
    "cache-control": "no-store",
}


@dataclass
class WebConfig:
    identity: Identity
    registry: list[str]
    host: str = "127.0.0.1"
    port: int = 8443
    node: str = ""                      # the node's address, for a node identity (default: from the directory)
    state_dir: Path | None = None       # where an auditor's verified log states are kept (as the CLI's --state)


@dataclass
class Job:
    """Long work a page started (verify a log, reconcile): its progress and, at the end, its result."""

    id: str
    kind: str
    title: str
    done: int = 0
    total: int = 0
    state: str = "running"   # running, ok, failed
    result: Any = None
    error: str = ""

    def progress(self, done: int, total: int) -> None:
        self.done, self.total = done, total


@dataclass
class Web:
    """What the pages share: configuration, sessions, templates, the role's client, jobs."""

    config: WebConfig
    sessions: Sessions = field(default_factory=Sessions)
    jobs: dict[str, Job] = field(default_factory=dict)
    _client: Any = None

    async def network(self):
        """The role's client, opened on first use (the registry may come up after the web app)."""
        if self._client is None:
            self._client = await _open_client(self.config)
        return self._client

    def __post_init__(self) -> None:
        self.env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(["html"]),
                               trim_blocks=True, lstrip_blocks=True)
        self.env.globals.update(utc_text=moment_text, bar_chart=bar_chart)

    @property
    def role(self) -> Role:
        return self.config.identity.principal.role

    @property
    def cookie(self) -> str:
        return session_cookie(self.config.port)

    def login_link(self) -> str:
        return f"http://{self.config.host}:{self.config.port}/login?token={self.sessions.new_login_token()}"

    def render(self, request: Request, template: str, status: int = 200, **context) -> HTMLResponse:
        language = language_of(request)
        session = request.scope.get("state", {}).get("session")
        page = self.env.get_template(template).render(
            t=translator(language), lang=language, languages=LANGUAGES, path=request.url.path,
            query=request.url.query, csrf=session.csrf if session else "", principal=self.config.identity.principal,
            role=str(self.role), **context)
        return HTMLResponse(page, status_code=status, headers=SECURITY_HEADERS)

    def start_job(self, kind: str, title: str, work: Callable[[Job], Awaitable[Any]]) -> Job:
        if len(self.jobs) >= MAX_JOBS:
            finished = [k for k, j in self.jobs.items() if j.state != "running"]  # oldest first
            if not finished:
                raise ValueError(f"{MAX_JOBS} jobs are running already: wait for one to end")
            del self.jobs[finished[0]]
        job = Job(secrets.token_urlsafe(12), kind, title)
        self.jobs[job.id] = job

        async def run() -> None:
            try:
                job.result = await work(job)
                job.state = "ok"
            except Exception as e:  # noqa: BLE001 - shown on the job's page, not a traceback
                job.state, job.error = "failed", error_text(e)
                log.info("%s failed: %s", kind, job.error)

        job.task = asyncio.get_running_loop().create_task(run())  # type: ignore[attr-defined]
        return job


def moment_text(ms: int) -> str:
    """utc_text for a time a node or the registry sent: one out of range (a node signs its own log)
    is shown as its number, not a failed page that hides every other row."""
    try:
        return utc_text(ms)
    except (ValueError, OverflowError, OSError):
        return f"{ms} ms"


def enum_text(enum, value: int, prefix: str) -> str:
    """An enum's name as the pages use it ("allow" for DECISION_ALLOW); a number no name has (a
    node or the registry may send any) is shown as the number, not a failed page."""
    try:
        return enum.Name(value).removeprefix(prefix).lower()
    except ValueError:
        return str(value)


def language_of(request: Request) -> str:
    chosen = request.cookies.get(LANGUAGE_COOKIE, DEFAULT_LANGUAGE)
    return chosen if chosen in LANGUAGES else DEFAULT_LANGUAGE


def error_text(e: BaseException) -> str:
    """What a person sees of a failure: the client library's message (it names the field and the
    reason, and never a secret), or a generic line for anything else (details go to the log)."""
    from xinyi.client import ClientError
    from xinyi.errors import Refusal

    if isinstance(e, (ClientError, Refusal)):
        return getattr(e, "message", None) or str(e)
    from xinyi.auditing import AuditCommandError

    if isinstance(e, (AuditCommandError, ValueError)):
        return str(e)
    log.exception("unexpected failure", exc_info=e)
    return "an unexpected error; the terminal running `xinyi web` shows the details"


def _refusal(web: Web):
    def refuse(scope, status: int, key: str):
        async def app(scope, receive, send):
            request = Request(scope, receive)
            await web.render(request, "refused.html", status=status, message_key=key)(scope, receive, send)
        return app
    return refuse


async def login(request: Request) -> Response:
    web: Web = request.app.state.web
    session_id = web.sessions.login(request.query_params.get("token", ""))
    if session_id is None:
        return web.render(request, "refused.html", status=401, message_key="refused.token")
    response = RedirectResponse("/", status_code=303, headers=SECURITY_HEADERS)
    response.set_cookie(web.cookie, session_id, httponly=True, samesite="strict", path="/")
    return response


async def logout(request: Request) -> Response:
    web: Web = request.app.state.web
    web.sessions.end(request.scope["state"]["session_id"])
    response = web.render(request, "refused.html", status=200, message_key="logout.done")
    response.delete_cookie(web.cookie, path="/")
    return response


async def choose_language(request: Request) -> Response:
    language = request.query_params.get("to", DEFAULT_LANGUAGE)
    back = request.query_params.get("next", "/")
    if not back.startswith("/") or back.startswith("//"):  # only this app's own pages
        back = "/"
    response = RedirectResponse(back, status_code=303, headers=SECURITY_HEADERS)
    response.set_cookie(LANGUAGE_COOKIE, language if language in LANGUAGES else DEFAULT_LANGUAGE,
                        samesite="strict", path="/", max_age=365 * 86400)
    return response


async def home(request: Request) -> Response:
    web: Web = request.app.state.web
    start = {Role.ENTERPRISE: "/consents", Role.AUDITOR: "/audit", Role.NODE: "/operator"}.get(web.role)
    if start is None:
        return web.render(request, "no_pages.html")
    return RedirectResponse(start, status_code=303, headers=SECURITY_HEADERS)


async def job_page(request: Request) -> Response:
    web: Web = request.app.state.web
    job = web.jobs.get(request.path_params["job_id"])
    if job is None:
        return web.render(request, "refused.html", status=404, message_key="job.unknown")
    return web.render(request, f"job_{job.kind}.html", job=job)


def role_only(role: Role):
    """A page of one role: any other identity gets 403, whatever it asks for."""
    def wrap(handler):
        async def page(request: Request) -> Response:
            web: Web = request.app.state.web
            if web.role != role:
                return web.render(request, "refused.html", status=403, message_key="refused.role")
            try:
                return await handler(request, web)
            except Exception as e:  # noqa: BLE001 - a failed call is a page that says why
                return web.render(request, "failed.html", status=502, message=error_text(e))
        return page
    return wrap


def create_app(config: WebConfig) -> tuple[Starlette, Web]:
    from xinyi.web import auditor, enterprise, operator

    web = Web(config)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        try:
            yield
        finally:
            for job in web.jobs.values():
                getattr(job, "task", None) and job.task.cancel()  # type: ignore[attr-defined]
            if web._client is not None:
                await web._client.close()

    routes = [
        Route("/", home), Route("/login", login), Route("/logout", logout, methods=["POST"]),
        Route("/language", choose_language), Route("/jobs/{job_id}", job_page),
        *enterprise.routes(), *auditor.routes(), *operator.routes(),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.web = web
    app.add_middleware(_GuardMiddleware, web=web)
    return app, web


class _GuardMiddleware:
    def __init__(self, app, web: Web) -> None:
        self.guard = Guard(app, web.sessions, allowed_hosts(web.config.host, web.config.port), _refusal(web),
                           web.cookie)

    async def __call__(self, scope, receive, send) -> None:
        await self.guard(scope, receive, send)


async def _open_client(config: WebConfig):
    """The role's client of the network: an enterprise's, a node operator's (to its own node), or,
    for an auditor, a reader of the registry-signed directory (it opens a client per log it reads)."""
    from xinyi.client import DirectoryReader, EnterpriseClient, OperatorClient

    role = config.identity.principal.role
    if role == Role.ENTERPRISE:
        return EnterpriseClient(config.identity, config.registry)
    reader = DirectoryReader(config.identity, config.registry)
    if role != Role.NODE:
        return reader
    try:
        endpoint = config.node
        if not endpoint:
            entry = (await reader.directory()).nodes.get(config.identity.principal.id)
            if entry is None:
                raise ValueError(f"node {config.identity.principal.id} is not in the registry's directory yet: "
                                 "start the node (it registers), or give --node HOST:PORT")
            endpoint = entry.endpoint
    finally:
        await reader.close()
    return OperatorClient(config.identity, endpoint)
