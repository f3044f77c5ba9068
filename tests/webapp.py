"""Running the web app in a test: a real uvicorn server on a loopback port, in the test's own event
loop (beside the network's servers), and Debian's chromium driven by Playwright."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path

import pytest

from xinyi.crypto.pki import Identity
from xinyi.web.app import Web, WebConfig, create_app

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "test-output" / "web"     # screenshots of every page the tests visit
AXE = ROOT / "tests" / "web" / "node_modules" / "axe-core" / "axe.min.js"


def chromium_path() -> str:
    """Debian's chromium (no browser is downloaded at run time). Missing: skipped on a developer's
    machine, a failure under CI, where .ci/run installs it."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.environ.get("CI"):
        pytest.fail("chromium is not installed: .ci/run installs Debian's chromium for the web app's tests")
    pytest.skip("chromium is not installed (apt-get install chromium): the web app's browser tests are skipped")


@dataclass
class RunningWeb:
    web: Web
    url: str
    port: int

    def login_link(self) -> str:
        return self.web.login_link()


@contextlib.asynccontextmanager
async def serve_web(identity: Identity, registry: list[str], tmp: Path, **options):
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    app, web = create_app(WebConfig(identity=identity, registry=registry, host="127.0.0.1", port=port,
                                     state_dir=tmp / "auditor-state", **options))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on", access_log=False))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    for _ in range(200):
        if server.started:
            break
        await asyncio.sleep(0.02)
    try:
        yield RunningWeb(web, f"http://127.0.0.1:{port}", port)
    finally:
        server.should_exit = True
        await task
        sock.close()


async def logged_in(browser, running: RunningWeb, *, language: str = "zh", bypass_csp: bool = False):
    """A fresh browser context, logged in through a one-time link; the page on the role's home."""
    context = await browser.new_context(bypass_csp=bypass_csp, locale="zh-CN" if language == "zh" else "en-US")
    page = await context.new_page()
    await page.goto(running.login_link())
    if language != "zh":
        await page.goto(f"{running.url}/language?to={language}&next=/")
    return page


async def screenshot(page, test_name: str, name: str) -> Path:
    folder = OUTPUT / re.sub(r"[^A-Za-z0-9_.-]+", "_", test_name)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    return path


async def axe_violations(page) -> list[dict]:
    """Serious and critical accessibility violations axe-core finds on the page."""
    if not AXE.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{AXE} is missing: `make test` installs it with npm ci (tests/web)")
        pytest.skip("axe-core is not installed (cd tests/web && npm ci)")
    await page.evaluate(AXE.read_text())
    result = await page.evaluate("async () => (await axe.run(document, {resultTypes: ['violations']})).violations")
    return [{"id": v["id"], "impact": v["impact"], "help": v["help"], "nodes": [n["html"][:120] for n in v["nodes"][:3]]}
            for v in result if v["impact"] in ("serious", "critical")]
