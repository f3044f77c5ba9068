"""Attacks on the web app (`xinyi web`), each the way an attacker would make it: a real server, real
HTTP or a real browser. What each test shows was found by an adversarial review; the fix is in
xinyi/web/."""

from __future__ import annotations

from urllib.parse import urljoin, urlsplit

from harness import BANK, CHENGDU_FIRM, Network
from test_web import _http, _session, browser  # noqa: F401 - browser: the session's chromium fixture
from webapp import serve_web

from xinyi.crypto.identity import Principal, Role


def _bank(licence: str = "B0014H144030001"):
    from harness import RootCA

    return RootCA.create().issue(Principal(Role.BANK, BANK), licence=licence)


async def test_two_apps_on_one_machine_keep_their_own_sessions(tmp_path, browser):  # noqa: F811
    """Cookies are not kept apart by port: the demo serves a login link per role, each on its own
    port of 127.0.0.1. Logging into the second app must not log the user out of the first (one
    cookie name for both made the second app's cookie replace the first's)."""
    async with serve_web(_bank(), ["127.0.0.1:9"], tmp_path / "a") as first, \
            serve_web(_bank(), ["127.0.0.1:9"], tmp_path / "b") as second:
        context = await browser.new_context()
        page = await context.new_page()
        await page.goto(first.login_link())
        await page.goto(second.login_link())
        for running in (first, second):
            response = await page.goto(f"{running.url}/")
            assert response.status == 200, running.url  # the page of an identity with no pages, not the login refusal
            assert "gRPC" in await page.inner_text("main")
        names = {c["name"] for c in await context.cookies()}
        assert len([n for n in names if n.startswith("xinyi_session")]) == 2
        await context.close()


async def test_the_language_switch_redirects_only_to_this_apps_pages(tmp_path):
    """/language?next= is no open redirect: whatever `next` is, the browser stays on this app."""
    async with serve_web(_bank(), ["127.0.0.1:9"], tmp_path) as running:
        cookie, _ = await _session(running)
        for nasty in ("//evil.example/", "/\\evil.example/", "/%09/evil.example/", "https://evil.example/",
                      "/%0d%0aSet-Cookie:%20x=1", "\\\\evil.example", "/%5C%5Cevil.example"):
            status, _, headers = await _http(f"{running.url}/language?to=en&next={nasty}", headers={"Cookie": cookie})
            assert status == 303, nasty
            target = urlsplit(urljoin(running.url + "/", headers["location"]))
            assert target.netloc == f"127.0.0.1:{running.port}" and "\\" not in headers["location"], nasty
            assert "x=1" not in headers.get("set-cookie", ""), nasty


async def test_an_audit_entry_with_an_impossible_time_does_not_hide_the_log_from_the_auditor(
        network: Network, tmp_path):
    """A node writes and signs its own log, so an auditor's pages must show whatever it holds: one
    entry stamped in the year 146 million, or with a decision no name has, made the search page
    fail, hiding every other entry."""
    from sqlalchemy import select, update

    from xinyi.v1 import audit_pb2

    consent = await network.grant()
    await network.bank().query(CHENGDU_FIRM, ["registration", "tax"], "credit_assessment", consent)
    store = network.nodes["510100"].store
    t = store.audit
    with store.engine.begin() as conn:
        raw = conn.execute(select(t.c.leaf_input).where(t.c.idx == 1)).scalar_one()
        record = audit_pb2.AuditRecord.FromString(raw)
        record.at_ms = 2**62
        record.decision = 99  # and a decision no name has
        conn.execute(update(t).where(t.c.idx == 1).values(leaf_input=record.SerializeToString(deterministic=True)))
    async with serve_web(network.identity(Role.AUDITOR, "audit-office"), [network.registry_addr], tmp_path) as running:
        cookie, _ = await _session(running)
        status, body, _ = await _http(f"{running.url}/audit/search?log=510100", headers={"Cookie": cookie})
        assert status == 200, body
        assert str(2**62) in body and "<td>99</td>" in body  # shown as the numbers the node sent
        assert body.count("<tr><td>") >= 2  # and the other entries with it


async def test_a_cookie_another_local_app_set_does_not_lock_the_user_out(tmp_path, browser):  # noqa: F811
    """Browsers send 127.0.0.1's cookies to every port of it, so this app sees what any other local
    app (a notebook, a dev server, an attacker's listener) sets. Python's SimpleCookie drops the
    whole header at one cookie it dislikes (a JSON value, a space): the session was never seen."""
    async with serve_web(_bank(), ["127.0.0.1:9"], tmp_path) as running:
        context = await browser.new_context()
        await context.add_cookies([{"name": "prefs", "value": '{"theme":"dark"}', "url": "http://127.0.0.1:1/"}])
        page = await context.new_page()
        await page.goto(running.login_link())
        assert "gRPC" in await page.inner_text("main")  # logged in: the page of an identity with no pages
        await context.close()

        cookie, _ = await _session(running)
        for other in ('a="x', "a[b]=1", "a=b c", "x=\\", "x=é"):
            status, _, _ = await _http(f"{running.url}/", headers={"Cookie": f"{other}; {cookie}"})
            assert status == 200, other
        status, _, _ = await _http(f"{running.url}/", headers={"Cookie": 'a="x'})
        assert status == 401


async def _listener(seen: list[str]):
    """Another local user's web server on another loopback port: it keeps the cookies it is sent."""
    import asyncio

    async def handle(reader, writer):
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        seen.extend(line.split(":", 1)[1].strip() for line in head.split("\r\n") if line.lower().startswith("cookie:"))
        body = b'<!doctype html><title>cat pictures</title><img src="/cat.png" alt="">'
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/html\r\nconnection: close\r\ncontent-length: "
                     + str(len(body)).encode() + b"\r\n\r\n" + body)
        await writer.drain()
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


async def _curl_as(uid: int, *args: str) -> tuple[int, str]:
    """(HTTP status, body) of a request another user of this machine makes."""
    import asyncio
    import subprocess

    def run():
        out = subprocess.run(["curl", "-s", "-o", "-", "-w", "\n%{http_code}", *args], user=uid, capture_output=True,
                             text=True, timeout=20)
        body, _, status = out.stdout.rpartition("\n")
        return int(status or 0), body

    return await asyncio.to_thread(run)


async def test_another_user_of_the_machine_gets_nothing_even_with_the_users_session_cookie(tmp_path, browser):  # noqa: F811
    """Browsers send 127.0.0.1's cookies to every port of it, so another user's server on another
    loopback port gets the session cookie as soon as the user opens one of its pages. With it, that
    user read every page (and its CSRF token) and could sign. The app now serves only connections
    its own system user makes (the kernel's socket table says whose a loopback connection is)."""
    import os
    import shutil
    from pathlib import Path

    import pytest

    if os.getuid() != 0 or not shutil.which("curl") or not Path("/proc/net/tcp").exists():
        pytest.skip("acting as another user of the machine needs root, curl and Linux's /proc/net/tcp")
    nobody = 65534
    seen: list[str] = []
    server = await _listener(seen)
    attacker_url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/"
    async with serve_web(_bank(), ["127.0.0.1:9"], tmp_path) as running:
        link = running.login_link()
        status, _ = await _curl_as(nobody, link)
        assert status == 403  # another user cannot spend the login link ...
        context = await browser.new_context()
        page = await context.new_page()
        await page.goto(link)  # ... which still works for its owner
        assert "gRPC" in await page.inner_text("main")

        await page.goto(attacker_url)  # the user opens a page the other user serves
        stolen = [c for c in seen if running.web.cookie in c]
        assert stolen, seen  # the cookie does leak to another port: why the app checks the connection's user
        status, body = await _curl_as(nobody, "-H", f"Cookie: {stolen[0]}", f"{running.url}/")
        assert status == 403 and "其他用户" in body and "gRPC" not in body and "csrf" not in body
        for header in ("X-Forwarded-For: 127.0.0.1", "Forwarded: for=127.0.0.1"):  # nor as a "proxied" client
            status, body = await _curl_as(nobody, "-H", f"Cookie: {stolen[0]}", "-H", header, f"{running.url}/")
            assert status == 403 and "代理" in body and "gRPC" not in body, header
        status, _ = await _curl_as(os.getuid(), "-H", f"Cookie: {stolen[0]}", f"{running.url}/")
        assert status == 200  # the owner's own connections are served
        await context.close()
    server.close()
    await server.wait_closed()


async def test_jobs_started_again_and_again_do_not_pile_up_in_memory(tmp_path):
    """Every verify or reconcile click kept its job for the life of the process; now the oldest
    finished ones go, and with all of them still running a new one is refused on the page."""
    import asyncio
    import socket

    from xinyi.web.app import MAX_JOBS

    silent = socket.socket()  # a "registry" that takes connections and never answers: jobs keep running
    silent.bind(("127.0.0.1", 0))
    silent.listen(200)
    async with serve_web(_auditor(), [f"127.0.0.1:{silent.getsockname()[1]}"], tmp_path) as running:
        cookie, csrf = await _session(running)
        form = {"Cookie": cookie, "Content-Type": "application/x-www-form-urlencoded"}

        async def reconcile():
            return await _http(f"{running.url}/audit/reconcile", method="POST", data=f"csrf={csrf}".encode(), headers=form)

        statuses = [(await reconcile())[0] for _ in range(MAX_JOBS)]
        assert statuses == [303] * MAX_JOBS
        status, body, _ = await reconcile()
        assert status == 502 and f"{MAX_JOBS} jobs are running" in body and len(running.web.jobs) == MAX_JOBS

        silent.close()  # the registry goes away: every job fails
        for _ in range(600):
            if all(j.state != "running" for j in running.web.jobs.values()):
                break
            await asyncio.sleep(0.05)
        first = next(iter(running.web.jobs))
        for _ in range(20):
            status, _, headers = await reconcile()
            assert status == 303 and len(running.web.jobs) == MAX_JOBS
        assert first not in running.web.jobs  # the oldest went first
        status, _, _ = await _http(f"{running.url}{headers['location']}", headers={"Cookie": cookie})
        assert status == 200


def _auditor():
    from harness import RootCA

    return RootCA.create().issue(Principal(Role.AUDITOR, "audit-office"))


async def test_a_page_on_another_port_of_the_machine_gets_no_page_of_the_app(tmp_path, browser):  # noqa: F811
    """Another port of 127.0.0.1 is the same "site", so the SameSite=Strict cookie goes with the
    requests its pages make: an <img> there ran the app's GETs as the user (here the language
    switch, which sets a cookie; an auditor's log export or search alike). Refused now, by the
    Sec-Fetch-Site header the browser sets, before the session is looked up (which would keep it
    from going idle)."""
    async with serve_web(_bank(), ["127.0.0.1:9"], tmp_path) as running:
        hits: list[str] = []

        async def handle(reader, writer):
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            hits.append(head.split(" ", 2)[1])
            body = (f'<!doctype html><title>cat pictures</title>'
                    f'<img src="{running.url}/language?to=en&amp;next=/" alt="">').encode()
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/html\r\nconnection: close\r\ncontent-length: "
                         + str(len(body)).encode() + b"\r\n\r\n" + body)
            await writer.drain()
            writer.close()

        import asyncio

        other = await asyncio.start_server(handle, "127.0.0.1", 0)
        context = await browser.new_context()
        page = await context.new_page()
        await page.goto(running.login_link())
        await page.wait_for_timeout(300)
        await page.close()  # no late request of the app's page (its icon) touches the session from here on
        page = await context.new_page()
        (session,) = running.web.sessions._sessions.values()
        session.last_seen -= 60
        seen_at = session.last_seen
        async with page.expect_event("requestfailed", lambda r: r.url.startswith(running.url)):  # the browser hides the
            await page.goto(f"http://127.0.0.1:{other.sockets[0].getsockname()[1]}/")  # answer from the page (ORB)
        assert not [c for c in await context.cookies() if c["name"] == "xinyi_lang"]  # the language did not change
        assert session.last_seen == seen_at  # nor does such a request keep the session from going idle
        response = await page.goto(f"{running.url}/")  # the address bar still works
        assert response.status == 200 and "gRPC" in await page.inner_text("main")
        await page.click("a[lang=en]")  # and so do the app's own links
        assert "gRPC" in await page.inner_text("main") and await page.get_attribute("html", "lang") == "en"
        await context.close()
        other.close()
        await other.wait_closed()


async def test_a_huge_form_an_idle_session_and_a_framing_page_are_refused(tmp_path):
    """Checked and sound: a body over the form limit is refused unread (also when streamed in
    chunks), a session idle for longer than a working day is gone, and refusals carry the same
    no-frame, no-store headers as pages."""
    import http.client
    import time

    from xinyi.web.security import MAX_FORM_BYTES, SESSION_IDLE_S

    async with serve_web(_bank(), ["127.0.0.1:9"], tmp_path) as running:
        cookie, csrf = await _session(running)
        form = {"Cookie": cookie, "Content-Type": "application/x-www-form-urlencoded"}
        status, body, _ = await _http(f"{running.url}/logout", method="POST",
                                      data=f"csrf={csrf}&x={'a' * MAX_FORM_BYTES}".encode(), headers=form)
        assert status == 413

        def chunked() -> int:
            conn = http.client.HTTPConnection("127.0.0.1", running.port, timeout=10)
            conn.request("POST", "/logout", body=iter([f"csrf={csrf}&x=".encode()] + [b"a" * 8192] * 16),
                         headers={**form, "Transfer-Encoding": "chunked"}, encode_chunked=True)
            return conn.getresponse().status

        import asyncio

        assert await asyncio.to_thread(chunked) == 413
        assert running.web.sessions.get(cookie.split("=", 1)[1]) is not None  # neither logged out

        status, _, headers = await _http(f"{running.url}/", headers={"Cookie": cookie, "Host": "evil.example"})
        assert status == 421 and "frame-ancestors 'none'" in headers["content-security-policy"]
        assert headers["cache-control"] == "no-store" and headers["x-frame-options"] == "DENY"

        running.web.sessions._clock = lambda: time.monotonic() + SESSION_IDLE_S + 1  # a working day later
        status, body, _ = await _http(f"{running.url}/", headers={"Cookie": cookie})
        assert status == 401 and "gRPC" not in body


def test_the_kernel_names_the_user_of_a_loopback_connection_on_ipv4_and_ipv6():
    """peer_uid reads /proc/net/tcp{,6}: a real connection of this process is this user's; a port
    nobody is connected from is unknown (the session alone decides then)."""
    import os
    import socket
    from pathlib import Path

    import pytest

    from xinyi.web.security import peer_uid

    if not Path("/proc/net/tcp").exists():
        pytest.skip("Linux's /proc/net/tcp is needed")
    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        try:
            server = socket.socket(family)
            server.bind((host, 0))
        except OSError:
            continue  # no IPv6 here
        server.listen(1)
        client = socket.create_connection(server.getsockname()[:2])
        accepted, _ = server.accept()
        seen_from = accepted.getpeername()[:2]
        assert peer_uid(seen_from, server.getsockname()[:2]) == os.getuid(), host
        assert peer_uid((host, 1), server.getsockname()[:2]) is None
        for s in (client, accepted, server):
            s.close()


async def test_an_access_a_node_signed_with_an_impossible_time_does_not_hide_the_others(network: Network, tmp_path):
    """An enterprise's accesses come from every node, each entry proven against the node's own
    signed checkpoint, so a node can sign any time: one in the year 146 million failed the whole
    page (the chart's day of it), hiding every other node's accesses."""
    from xinyi.audit.entry import AuditEntry

    consent = await network.grant()
    await network.bank().query(CHENGDU_FIRM, ["registration", "tax"], "credit_assessment", consent)
    await network.nodes["510100"].audit_log.append(AuditEntry(
        at_ms=2**62, caller_role="bank", caller_id=BANK, action="Query", decision="allow", uscc=CHENGDU_FIRM,
        categories=("tax",), purpose="credit_assessment", consent_id=consent))
    async with serve_web(network.identity(Role.ENTERPRISE, CHENGDU_FIRM), [network.registry_addr], tmp_path) as running:
        cookie, _ = await _session(running)
        status, body, _ = await _http(f"{running.url}/accesses", headers={"Cookie": cookie})
        assert status == 200, body
        assert str(2**62) in body and body.count('class="access') >= 2 and "<svg" in body
