"""The web app (`xinyi web`) in a real browser (Debian's chromium through Playwright) against a real
registry and nodes: an enterprise's consents, grant form and accesses, an auditor's verification,
and the guard in front of every page (login link, Host header, CSRF, role)."""

from __future__ import annotations

import asyncio
import re
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import pytest
from harness import BANK, CHENGDU_FIRM, Network
from webapp import axe_violations, chromium_path, logged_in, screenshot, serve_web

from xinyi.crypto.identity import Role

TEMPLATES = Path(__file__).resolve().parent.parent / "xinyi" / "web" / "templates"


@pytest.fixture(scope="session")
async def browser():
    executable = chromium_path()
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=executable, args=["--no-sandbox", "--disable-gpu"])
        yield browser
        await browser.close()


async def _http(url: str, **kwargs):
    """(status, body, headers) of one plain HTTP request, redirects not followed; in a thread, so
    that the server in this event loop can answer it."""
    return await asyncio.to_thread(_http_blocking, url, **kwargs)


def _http_blocking(url: str, *, method: str = "GET", data: bytes | None = None, headers: dict | None = None):
    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.build_opener(NoRedirect).open(request, timeout=10) as response:
            return response.status, response.read().decode(), dict(response.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(), dict(e.headers)


async def _session(running) -> tuple[str, str]:
    """Log in over plain HTTP: (cookie header, the session's CSRF token)."""
    status, _, headers = await _http(running.login_link())
    assert status == 303
    cookie = headers["set-cookie"].split(";", 1)[0]
    session = running.web.sessions.get(cookie.split("=", 1)[1])
    return cookie, session.csrf


# --- the guard --------------------------------------------------------------------------------------
async def test_the_guard_refuses_no_login_a_spent_link_a_foreign_host_and_a_form_without_its_token(tmp_path):
    """No network is needed: every refusal happens before a page would call it."""
    from harness import RootCA
    from xinyi.crypto.identity import Principal

    identity = RootCA.create().issue(Principal(Role.ENTERPRISE, CHENGDU_FIRM))
    async with serve_web(identity, ["127.0.0.1:9"], tmp_path) as running:
        status, body, _ = await _http(f"{running.url}/consents")
        assert status == 401 and "xinyi web" in body and CHENGDU_FIRM not in body  # not even who it acts as

        link = running.login_link()
        assert (await _http(link))[0] == 303
        status, body, _ = await _http(link)  # the link works once
        assert status == 401 and "已被使用" in body
        status, _, _ = await _http(f"{running.url}/login?token=guess")
        assert status == 401

        cookie, csrf = await _session(running)
        status, body, _ = await _http(f"{running.url}/consents", headers={"Cookie": cookie, "Host": "evil.example:80"})
        assert status == 421 and "Host" in body  # DNS rebinding: a page of another name never reaches the app
        form = {"Cookie": cookie, "Content-Type": "application/x-www-form-urlencoded"}
        status, body, _ = await _http(f"{running.url}/logout", method="POST", data=b"x=1", headers=form)
        assert status == 403 and "令牌" in body
        status, _, _ = await _http(f"{running.url}/logout", method="POST", data=f"csrf={csrf}x".encode(), headers=form)
        assert status == 403
        status, _, _ = await _http(f"{running.url}/logout", method="POST", data=f"csrf={csrf}".encode(),
                             headers={**form, "Origin": "http://evil.example"})
        assert status == 403  # a cross-site form, even with a stolen token
        status, _, _ = await _http(f"{running.url}/logout", method="POST", data=f"csrf={csrf}".encode(),
                             headers={**form, "Content-Type": "multipart/form-data; boundary=x"})
        assert status == 415
        assert running.web.sessions.get(cookie.split("=", 1)[1]) is not None  # none of those logged it out
        status, _, headers = await _http(f"{running.url}/logout", method="POST", data=f"csrf={csrf}".encode(), headers=form)
        assert status == 200 and running.web.sessions.get(cookie.split("=", 1)[1]) is None
        # every page carries a policy that allows no script and no framing
        assert "script" not in headers["content-security-policy"] and "frame-ancestors 'none'" in headers["content-security-policy"]


async def test_a_bank_identity_sees_no_enterprise_page(tmp_path):
    from harness import RootCA
    from xinyi.crypto.identity import Principal

    identity = RootCA.create().issue(Principal(Role.BANK, BANK), licence="B0014H144030001")
    async with serve_web(identity, ["127.0.0.1:9"], tmp_path) as running:
        cookie, csrf = await _session(running)
        for path in ("/consents", "/grant", "/accesses", "/my-data", "/disputes", "/audit", "/operator"):
            status, body, _ = await _http(f"{running.url}{path}", headers={"Cookie": cookie})
            assert status == 403, path
            assert "角色" in body
        status, body, _ = await _http(f"{running.url}/", headers={"Cookie": cookie})
        assert status == 200 and "gRPC" in body


def test_the_listen_address_must_be_loopback():
    from xinyi.cli.common import CommandError
    from xinyi.cli.web import listen_address

    assert listen_address("127.0.0.1:8443") == ("127.0.0.1", 8443)
    assert listen_address("[::1]:9000") == ("::1", 9000)
    for bad in ("0.0.0.0:8443", "192.168.1.5:80", "example.com:80", "127.0.0.1", "127.0.0.1:99999"):
        with pytest.raises(CommandError) as e:
            listen_address(bad)
        assert "--listen" in str(e.value)


def test_every_message_is_in_both_catalogues_and_every_key_the_templates_use_exists():
    from xinyi.web.i18n import catalogue

    en, zh = catalogue("en"), catalogue("zh")
    assert set(en) == set(zh)
    used = set()
    for template in TEMPLATES.glob("*.html"):
        used |= set(re.findall(r"\bt\('([a-z_.]+)'", template.read_text()))
    for module in TEMPLATES.parent.glob("*.py"):  # keys the code names: message_key="...", refuse(..., "...")
        used |= set(re.findall(r"\"((?:refused|logout|job)\.[a-z_]+)\"", module.read_text())) - {"refused.html"}
    prefixes = {k for k in used if k.endswith(".")}  # t('state.' + state): some key under it must exist
    assert used - prefixes and not (used - prefixes - set(en)), sorted(used - prefixes - set(en))
    assert all(any(k.startswith(p) for k in en) for p in prefixes), prefixes


# --- an enterprise -------------------------------------------------------------------------------------
async def _bank_query(network: Network, tmp_path: Path, consent: str, purpose: str, categories: str) -> dict:
    """The bank's `xinyi query`, run as a bank's engineer would (the CLI, in a thread of its own)."""
    import contextlib
    import io
    import json

    from xinyi.cli.main import main

    folder = network.identity(Role.BANK, BANK).save(tmp_path / "identities")
    out = io.StringIO()

    def run() -> int:
        with contextlib.redirect_stdout(out):
            return main(["query", "--identity", str(folder), "--registry", network.registry_addr, "--uscc", CHENGDU_FIRM,
                         "--purpose", purpose, "--categories", categories, "--consent", consent, "--json"])

    code = await asyncio.to_thread(run)
    return {"exit": code, **json.loads(out.getvalue())}


async def test_an_enterprise_grants_on_the_form_pauses_on_the_page_and_sees_both_accesses_proven(
        network: Network, browser, tmp_path, request):
    name = request.node.name
    enterprise = network.identity(Role.ENTERPRISE, CHENGDU_FIRM)
    async with serve_web(enterprise, [network.registry_addr], tmp_path) as running:
        page = await logged_in(browser, running)
        await page.goto(f"{running.url}/grant?purpose=loan_monitoring")
        # fair use for loan monitoring allows no customs data and no full records: greyed out, saying why
        assert await page.is_disabled("#cat-customs") and await page.is_disabled("#detail-detail")
        assert "公平使用规则" in await page.inner_text("#why-customs")
        await screenshot(page, name, "grant-form")
        await page.fill("#grantee", BANK)
        await page.check("#cat-tax")
        await page.check("#cat-registration")
        await page.fill("#days", "90")
        await page.click("button:has-text('查看授权文本')")
        text = await page.inner_text("#consent-text")
        assert BANK in text and CHENGDU_FIRM in text and "90 天" in text and "纳税" in text
        await screenshot(page, name, "grant-review")
        await page.click("button:has-text('签署并授权')")
        await page.wait_for_url(re.compile(r"/consents\?done=granted"))
        consent_id = re.search(r"id=([^&]+)", page.url).group(1)
        row = page.locator(f"#consent-{consent_id}")
        assert "有效" in await row.inner_text()
        await screenshot(page, name, "consents")

        answered = await _bank_query(network, tmp_path, consent_id, "loan_monitoring", "registration,tax")
        assert answered["exit"] == 0 and any(n["status"] == "ok" and n["verified"] for n in answered["nodes"])

        await row.locator("a", has_text="暂停").click()
        assert "不会应答" in await page.inner_text("main")  # the confirmation says what stops
        await screenshot(page, name, "pause-confirm")
        await page.click("button:has-text('确认暂停')")
        await page.wait_for_url(re.compile(r"done=pause"))
        assert "已暂停" in await page.locator(f"#consent-{consent_id}").inner_text()

        refused = await _bank_query(network, tmp_path, consent_id, "loan_monitoring", "registration,tax")
        assert not any(n["status"] == "ok" for n in refused["nodes"])

        await page.goto(f"{running.url}/accesses")
        rows = page.locator("tr.access")
        texts = [await rows.nth(i).inner_text() for i in range(await rows.count())]
        mine = [t for t in texts if BANK in t]
        assert any("允许" in t for t in mine) and any("拒绝" in t for t in mine)
        assert all("已证明" in t for t in mine)
        assert await page.locator("svg.chart").count() == 1
        await screenshot(page, name, "accesses")
        await page.context.close()


async def test_the_grant_form_refuses_what_fair_use_forbids_in_the_rules_words(network: Network, browser, tmp_path,
                                                                               request):
    enterprise = network.identity(Role.ENTERPRISE, CHENGDU_FIRM)
    async with serve_web(enterprise, [network.registry_addr], tmp_path) as running:
        page = await logged_in(browser, running, language="en")
        await page.goto(f"{running.url}/grant?purpose=credit_assessment")
        await page.fill("#grantee", BANK)
        await page.check("#cat-tax")
        await page.fill("#days", "365")
        await page.click("button:has-text('Review the consent text')")
        problems = await page.inner_text("#problems")
        assert "credit_assessment consents may last at most 30 days" in problems
        assert await page.get_attribute("#days", "aria-invalid") == "true"
        await screenshot(page, request.node.name, "grant-refused")
        # and nothing was granted
        await page.goto(f"{running.url}/consents")
        assert await page.locator("tr[id^=consent-]").count() == 0
        await page.context.close()


# --- an auditor ---------------------------------------------------------------------------------------
async def _verify_on_page(page, running, log: str) -> str:
    await page.goto(f"{running.url}/audit")
    await page.click(f"#log-{log} button")
    await page.wait_for_selector("#verdict, #job-error", timeout=60_000)
    return await page.inner_text("main")


async def test_an_auditor_verifies_a_log_on_the_page_and_after_an_edited_row_the_page_names_the_bad_index(
        network: Network, browser, tmp_path, request):
    from sqlalchemy import select, update

    from xinyi.cli.main import main
    from xinyi.v1 import audit_pb2

    name = request.node.name
    consent = await network.grant()
    await network.bank().query(CHENGDU_FIRM, ["registration", "tax"], "credit_assessment", consent)
    auditor = network.identity(Role.AUDITOR, "audit-office")
    async with serve_web(auditor, [network.registry_addr], tmp_path) as running:
        page = await logged_in(browser, running)
        await page.goto(f"{running.url}/audit")
        for log in ("registry", "510100", "510000", "310000"):
            row = await page.inner_text(f"#log-{log}")
            assert re.search(r"\b\d+\b", row) and "无法读取" not in row
        await screenshot(page, name, "logs")

        text = await _verify_on_page(page, running, "510100")
        assert "通过" in text and await page.locator(".bad").count() == 0
        await screenshot(page, name, "verified")

        await page.goto(f"{running.url}/audit")
        await page.click("button:has-text('核对登记中心与各节点')")
        await page.wait_for_selector("#verdict", timeout=60_000)
        assert "每次路由都出现在应答节点的日志中" in await page.inner_text("#verdict")
        await screenshot(page, name, "reconciled")

        # The evidence bundle the page offers is accepted by `xinyi audit verify --offline`.
        async with page.expect_download() as download:
            await page.goto(f"{running.url}/audit")
            await page.click("#log-510100 a:has-text('下载证据包')")
        bundle = tmp_path / "bundle.zip"
        await (await download.value).save_as(bundle)
        with zipfile.ZipFile(bundle) as archive:
            archive.extractall(tmp_path / "bundle")
        folder = auditor.save(tmp_path / "identities")
        assert await asyncio.to_thread(main, ["audit", "verify", "--identity", str(folder),
                                              "--offline", str(tmp_path / "bundle" / "evidence-510100")]) == 0

        # Someone with the database edits one row of the node's audit log.
        store = network.nodes["510100"].store
        t = store.audit
        with store.engine.begin() as conn:
            raw = conn.execute(select(t.c.leaf_input).where(t.c.idx == 1)).scalar_one()
            record = audit_pb2.AuditRecord.FromString(raw)
            record.purpose = "guarantee" if record.purpose != "guarantee" else "credit_assessment"
            conn.execute(update(t).where(t.c.idx == 1).values(leaf_input=record.SerializeToString(deterministic=True)))
        text = await _verify_on_page(page, running, "510100")
        assert "验证失败" in text
        assert "序号 1" in await page.inner_text("#first-bad")
        assert await page.locator("#verdict.bad").count() == 1  # shown in red
        await screenshot(page, name, "verify-failed")

        await page.goto(f"{running.url}/audit/search?log=510100&institution={BANK}&decision=allow")
        rows = await page.locator("tbody tr").count()
        assert rows >= 1 and BANK in await page.inner_text("tbody")
        await screenshot(page, name, "search")
        await page.context.close()


# --- accessibility ------------------------------------------------------------------------------------------
@pytest.mark.slow  # a minute of make test's budget between these; CI runs them in make test-slow
async def test_the_pages_have_no_serious_accessibility_violations(network: Network, browser, tmp_path, request):
    consent = await network.grant()
    await network.bank().query(CHENGDU_FIRM, ["registration", "tax"], "credit_assessment", consent)
    found = {}
    for role, principal, paths in (
            (Role.ENTERPRISE, CHENGDU_FIRM, ("/consents", "/grant?purpose=loan_monitoring", "/accesses", "/my-data",
                                             "/disputes", f"/consents/{consent}/revoke")),
            (Role.AUDITOR, "audit-office", ("/audit", f"/audit/search?log=510100&institution={BANK}")),
            (Role.NODE, "510100", ("/operator",))):
        async with serve_web(network.identity(role, principal), [network.registry_addr], tmp_path) as running:
            for language in ("zh", "en"):
                page = await logged_in(browser, running, language=language, bypass_csp=True)  # to inject axe
                for path in paths:
                    await page.goto(f"{running.url}{path}")
                    violations = await axe_violations(page)
                    if violations:
                        found[f"{language} {path}"] = violations
                await page.context.close()
    assert not found, found


# --- the command ------------------------------------------------------------------------------------------
async def test_xinyi_web_prints_a_one_time_login_link_and_serves_the_pages_behind_it(tmp_path):
    """The command as an enterprise's clerk runs it: the link it prints logs in once."""
    import os
    import socket
    import subprocess
    import sys

    from harness import RootCA
    from xinyi.crypto.identity import Principal

    folder = RootCA.create().issue(Principal(Role.ENTERPRISE, CHENGDU_FIRM)).save(tmp_path)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process = subprocess.Popen([sys.executable, "-m", "xinyi.cli", "web", "--identity", str(folder), "--registry",
                                "127.0.0.1:9", "--listen", f"127.0.0.1:{port}"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        link = ""
        for _ in range(3):
            line = await asyncio.to_thread(process.stdout.readline)
            link = line.strip() if "/login?token=" in line else link
        assert link.startswith(f"http://127.0.0.1:{port}/login?token=")
        for _ in range(100):  # the link is printed just before the server listens
            try:
                status, _, headers = await _http(link)
                break
            except OSError:
                await asyncio.sleep(0.05)
        assert status == 303 and "HttpOnly" in headers["set-cookie"] and "SameSite=strict" in headers["set-cookie"]
        assert (await _http(link))[0] == 401
    finally:
        process.terminate()
        _, err = process.communicate(timeout=10)
    assert "Traceback" not in err
    result = subprocess.run([sys.executable, "-m", "xinyi.cli", "web", "--identity", str(folder), "--registry",
                             "127.0.0.1:9", "--listen", "0.0.0.0:8443"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "--listen" in result.stderr and "SSH tunnel" in result.stderr


async def test_an_enterprise_reads_its_own_records_files_a_dispute_from_one_and_follows_it(
        network: Network, browser, tmp_path, request):
    name = request.node.name
    enterprise = network.identity(Role.ENTERPRISE, CHENGDU_FIRM)
    async with serve_web(enterprise, [network.registry_addr], tmp_path) as running:
        page = await logged_in(browser, running)
        await page.goto(f"{running.url}/my-data")
        await page.click("button:has-text('立即查看我的记录')")
        await page.wait_for_selector("#node-510100")
        assert "验证通过" in await page.inner_text("#node-510100")
        body = await page.inner_text("main")
        assert "纳税" in body and "登记信息" in body
        await screenshot(page, name, "my-data")
        # A dispute from the first record at the Chengdu node.
        section = page.locator("section", has=page.locator("#node-510100"))
        record_id = await section.locator("input[name=record_id]").first.get_attribute("value")
        await section.locator("input[name=reason]").first.fill("金额有误")
        await section.locator("button:has-text('提出异议')").first.click()
        await page.wait_for_url(re.compile(r"/disputes\?done=filed"))
        rows = page.locator("tbody tr")
        assert await rows.count() == 1
        row = await rows.first.inner_text()
        assert record_id in row and "处理中" in row and "金额有误" in row
        await screenshot(page, name, "disputes")
        # The reading was a self-access, audited at the node: it is among the accesses.
        await page.goto(f"{running.url}/accesses")
        assert "查看本企业数据" in await page.inner_text("tbody")
        await page.context.close()


# --- a node operator ---------------------------------------------------------------------------------------
async def test_the_operators_quality_page_shows_the_loaded_files_counts_and_its_rejects(
        network: Network, browser, tmp_path, request):
    import datetime as dt

    from test_node_quality import BAD, make_lines, write

    from node.ingest import ingest_file
    from xinyi.privacy.consent import CHINA

    node = network.nodes["510100"]
    lines = make_lines(dt.datetime.now(CHINA).date())
    await asyncio.to_thread(ingest_file, write(tmp_path / "dept.jsonl", lines), node.store)
    async with serve_web(network.identity(Role.NODE, "510100"), [network.registry_addr], tmp_path) as running:
        page = await logged_in(browser, running)
        assert page.url.endswith("/operator")
        counts = {}
        for category in ("registration", "tax", "social_security", "judicial"):
            counts[category] = int(await page.inner_text(f"#category-{category} td.count"))
        # The seeded Chengdu firm's records, plus what the file holds (LINES: 4, 3, 1, 1).
        seeded = {c: sum(1 for r in __import__("harness").SEED["510100"] if r.category == c) for c in counts}
        assert counts == {c: seeded[c] + n for c, n in
                          {"registration": 4, "tax": 3, "social_security": 1, "judicial": 1}.items()}
        assert "已过期" in await page.inner_text("#category-social_security")
        load = await page.inner_text("details.load")
        assert "dept.jsonl" in load and "拒收 5 行" in load
        rejects = page.locator("details.load table.rejects tbody tr")
        assert {int((await rejects.nth(i).inner_text()).split()[0]) for i in range(await rejects.count())} == set(BAD)
        assert "是" in await page.inner_text("#registered")
        await screenshot(page, request.node.name, "operator")
        await page.context.close()
