"""What stands between a browser and the identity's key: a one-time login link, sessions in
memory, the Host header checked against the address served (no DNS rebinding), only the system
user who started the app (Linux) and only this app's own pages (Sec-Fetch-Site) as the ones
asking, and every form post carrying its session's CSRF token (and, where the browser sends one,
the right Origin).

A pure ASGI middleware, so that no page can forget a check: a page handler only runs once the
request has passed all of them."""

from __future__ import annotations

import hmac
import os
import secrets
import socket
import sys
import time
from dataclasses import dataclass, field
from urllib.parse import parse_qs

from starlette.requests import cookie_parser

SESSION_COOKIE = "xinyi_session"  # + the port: browsers send a host's cookies to all its ports
SESSION_IDLE_S = 8 * 3600          # a working day; then the login link must be asked for again
MAX_FORM_BYTES = 64 * 1024         # every form here is small; a larger body is refused unread
OPEN_PATHS = ("/login", "/static/")  # reachable without a session (still Host-checked)


def session_cookie(port: int) -> str:
    """The session cookie's name for the app on `port`: two apps on one machine (a login link per
    role) would otherwise overwrite each other's session."""
    return f"{SESSION_COOKIE}_{port}"


@dataclass
class Session:
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    last_seen: float = field(default_factory=time.monotonic)


class Sessions:
    """Login tokens and live sessions, in this process's memory only."""

    def __init__(self, clock=time.monotonic) -> None:
        self._tokens: set[str] = set()
        self._sessions: dict[str, Session] = {}
        self._clock = clock

    def new_login_token(self) -> str:
        """A token for one login: the link printed at start carries it, and it is spent on use."""
        token = secrets.token_urlsafe(32)
        self._tokens.add(token)
        return token

    def login(self, token: str) -> str | None:
        """Spend a login token; return the new session's id (None: no such token)."""
        for known in list(self._tokens):
            if hmac.compare_digest(known.encode(), token.encode()):
                self._tokens.discard(known)
                session_id = secrets.token_urlsafe(32)
                self._sessions[session_id] = Session(last_seen=self._clock())
                return session_id
        return None

    def get(self, session_id: str | None) -> Session | None:
        session = self._sessions.get(session_id or "")
        if session is None:
            return None
        now = self._clock()
        if now - session.last_seen > SESSION_IDLE_S:
            del self._sessions[session_id]  # type: ignore[arg-type]
            return None
        session.last_seen = now
        return session

    def end(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)


def allowed_hosts(host: str, port: int) -> frozenset[str]:
    """The Host headers this app answers: the address it serves, and localhost for a loopback one."""
    names = {host}
    if host in ("127.0.0.1", "localhost", "::1"):
        names |= {"127.0.0.1", "localhost", "[::1]"}
    return frozenset(f"{n}:{port}" for n in names)


def peer_uid(client: tuple[str, int] | None, server: tuple[str, int] | None) -> int | None:
    """The user owning the other end of a loopback connection, from the kernel's socket table
    (Linux); None where it cannot be told (then the session alone decides, as elsewhere)."""
    if not client or not server:
        return None
    try:
        # the client's socket: its local end is the client's address, its remote end this server's
        local, remote = _proc_address(*client), _proc_address(*server)
    except (OSError, ValueError):
        return None
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cells = row.split()
            # not one in TIME_WAIT, which the kernel lists as root's
            if len(cells) > 7 and cells[1] == local and cells[2] == remote and cells[3] != "06":
                return int(cells[7])
    return None


def _proc_address(host: str, port: int) -> str:
    """An address as /proc/net/tcp{,6} writes it: the address's 32-bit words in the host's byte order."""
    packed = socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host.strip("[]"))
    step = -1 if sys.byteorder == "little" else 1
    words = "".join(packed[i:i + 4][::step].hex() for i in range(0, len(packed), 4))
    return f"{words.upper()}:{port:04X}"


class Guard:
    """ASGI middleware: Host, user of the connection, Sec-Fetch-Site, session and CSRF checks
    before any page runs."""

    def __init__(self, app, sessions: Sessions, hosts: frozenset[str], refuse, cookie: str = SESSION_COOKIE) -> None:
        self.app = app
        self.cookie = cookie
        self.sessions = sessions
        self.hosts = hosts
        self.refuse = refuse  # (scope, status, message key) -> ASGI app that renders the refusal
        self.uid = os.getuid() if hasattr(os, "getuid") else None

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if headers.get("host", "") not in self.hosts:
            return await self.refuse(scope, 421, "refused.host")(scope, receive, send)
        if "x-forwarded-for" in headers or "forwarded" in headers:
            # never behind a proxy: such a header would only make a server take the client for another
            return await self.refuse(scope, 403, "refused.proxy")(scope, receive, send)
        # Another user of this machine reaches the same loopback port: the app is its owner's only
        # (a session cookie can leak, since browsers send it to every port of the host). Root may:
        # it can read the key file anyway, and relays such as WSL's localhost forwarding run as root.
        uid = peer_uid(scope.get("client"), scope.get("server")) if self.uid is not None else None
        if uid is not None and uid not in (self.uid, 0):
            return await self.refuse(scope, 403, "refused.user")(scope, receive, send)
        path = scope["path"]
        # Only this app's own pages (or the address bar) ask for its pages: another port of this
        # host is the same "site", so SameSite lets the cookie through to an <img> or a link there.
        # Checked before the session is looked up, which would keep it from going idle.
        site = headers.get("sec-fetch-site", "same-origin")  # absent: not a browser, the session decides
        if site not in ("same-origin", "none") and not path.startswith(OPEN_PATHS):
            return await self.refuse(scope, 403, "refused.site")(scope, receive, send)
        # Lenient, as browsers are: SimpleCookie drops the whole header at one cookie it dislikes,
        # and any other app on this host can set one (cookies are not kept apart by port).
        session_id = cookie_parser(headers.get("cookie", "")).get(self.cookie)
        session = self.sessions.get(session_id)
        scope.setdefault("state", {})
        scope["state"]["session"] = session
        scope["state"]["session_id"] = session_id if session else None
        if session is None and not path.startswith(OPEN_PATHS):
            return await self.refuse(scope, 401, "refused.login")(scope, receive, send)
        if scope["method"] in ("GET", "HEAD"):
            return await self.app(scope, receive, send)
        if scope["method"] != "POST" or session is None:
            return await self.refuse(scope, 405, "refused.method")(scope, receive, send)
        origin = headers.get("origin")
        if origin is not None and origin.split("://", 1)[-1] not in self.hosts:
            return await self.refuse(scope, 403, "refused.csrf")(scope, receive, send)
        if not headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
            return await self.refuse(scope, 415, "refused.form")(scope, receive, send)
        body = await _read_body(receive, MAX_FORM_BYTES)
        if body is None:
            return await self.refuse(scope, 413, "refused.too_large")(scope, receive, send)
        sent = parse_qs(body.decode("utf-8", "replace")).get("csrf", [""])[0]
        if not hmac.compare_digest(sent.encode(), session.csrf.encode()):
            return await self.refuse(scope, 403, "refused.csrf")(scope, receive, send)
        await self.app(scope, _replay(body), send)


async def _read_body(receive, limit: int) -> bytes | None:
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b"".join(chunks)
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


def _replay(body: bytes):
    sent = False

    async def receive():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}

    return receive
