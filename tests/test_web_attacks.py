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
    entry stamped in the year 146 million made the search page fail, hiding every other entry."""
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
        conn.execute(update(t).where(t.c.idx == 1).values(leaf_input=record.SerializeToString(deterministic=True)))
    async with serve_web(network.identity(Role.AUDITOR, "audit-office"), [network.registry_addr], tmp_path) as running:
        cookie, _ = await _session(running)
        status, body, _ = await _http(f"{running.url}/audit/search?log=510100", headers={"Cookie": cookie})
        assert status == 200, body
        assert str(2**62) in body  # the impossible time is shown as the number the node sent
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
