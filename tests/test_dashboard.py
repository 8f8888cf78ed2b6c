"""The dashboard (``/ui``) in a real browser: Debian's headless Chromium driven by Playwright, against
a real gateway process and the fake upstream.

An operator signs in, creates a key and sees its secret once, sends a request with it and finds it
in the request log and on the overview chart, revokes it and sees the next request refused. A
wrong admin key, a form without its CSRF token, and a session cookie readable by scripts are each
tried and refused. ``MODELWIRE_SCREENSHOTS=1`` also saves each page to ``docs/screenshots/``.
"""

from __future__ import annotations

import http.client
import os
import re
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from .fake_upstream import FakeUpstream, Reply
from .gateway_fixtures import CLIENT_KEY, RunningGateway, start_gateway
from .test_admin_api import ADMIN_KEY, USER, admin_config

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = Path(__file__).parent.parent / "docs" / "screenshots"


@pytest.fixture(scope="module")
def gw(upstream_server: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    tmp = tmp_path_factory.mktemp("dashboard")
    running = start_gateway(admin_config(upstream_server, tmp), tmp)
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        yield context.new_page()
    finally:
        context.close()


def raw(
    gw: RunningGateway, method: str, path: str, body: bytes | None = None, **headers: str
) -> tuple[int, dict[str, str], bytes]:
    """One request, redirects not followed (urllib would follow a 303)."""
    connection = http.client.HTTPConnection(gw.url.removeprefix("http://"), timeout=30)
    try:
        connection.request(method, path, body, {k.replace("_", "-"): v for k, v in headers.items()})
        reply = connection.getresponse()
        return reply.status, {k.lower(): v for k, v in reply.getheaders()}, reply.read()
    finally:
        connection.close()


def shot(page: Page, name: str, tmp_path: Path) -> None:
    """Each page as a picture: for the README when asked, else only proof that it renders."""
    directory = SCREENSHOTS if os.environ.get("MODELWIRE_SCREENSHOTS") else tmp_path
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 5000


def sign_in(page: Page, gw: RunningGateway, key: str = ADMIN_KEY) -> None:
    page.goto(gw.url + "/ui")
    expect(page).to_have_url(re.compile(r"/ui/login$"))
    page.fill("input[name=key]", key)
    page.click("button[type=submit]")


def chat(gw: RunningGateway, key: str, model: str = "chat-model") -> str:
    client = openai.OpenAI(base_url=gw.v1, api_key=key, max_retries=0)
    reply = client.chat.completions.with_raw_response.create(model=model, messages=USER)  # type: ignore[arg-type]
    return str(reply.headers["x-request-id"])


def test_an_operators_round_trip(
    gw: RunningGateway, upstream: FakeUpstream, page: Page, tmp_path: Path
) -> None:
    page.goto(gw.url + "/ui/login")
    shot(page, "login", tmp_path)
    sign_in(page, gw)
    expect(page).to_have_url(re.compile(r"/ui/overview$"))
    expect(page.locator("h1")).to_have_text("Overview")

    # The session cookie: HttpOnly, SameSite=Strict, not the key, and invisible to scripts.
    cookie = next(c for c in page.context.cookies() if c["name"] == "mw_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and ADMIN_KEY not in cookie["value"]
    assert "mw_session" not in page.evaluate("document.cookie")

    # Create a key: its secret is shown once.
    page.click("nav >> text=Keys")
    page.fill("form.create input[name=name]", "browser-made")
    page.fill("form.create input[name=budget_usd]", "2.5")
    page.click("form.create button[type=submit]")
    secret = page.locator("#new-secret").inner_text().strip()
    assert secret.startswith("mw-")
    shot(page, "keys", tmp_path)
    page.goto(gw.url + "/ui/keys")
    expect(page.locator("#new-secret")).to_have_count(0)
    assert secret not in page.content()
    expect(page.locator("tr", has_text="browser-made")).to_contain_text("$2.5")

    # A request with it shows up in the log, in its detail and on the overview chart (beside some
    # traffic of another key, one request of it failing).
    for model in ("resp-model", "native-chat", "tuned"):
        chat(gw, CLIENT_KEY, model)
    upstream.script(Reply.error(400, "refused", code="refused"))
    with pytest.raises(openai.BadRequestError):
        chat(gw, CLIENT_KEY, "native-chat")
    request_id = chat(gw, secret)
    page.goto(gw.url + "/ui/requests?key=browser-made")
    row = page.locator("tr", has_text=request_id)
    for _ in range(50):
        if row.count():
            break
        page.wait_for_timeout(100)
        page.reload()
    expect(row).to_contain_text("chat-model")
    shot(page, "requests", tmp_path)
    page.click(f"a:has-text('{request_id}')")
    expect(page.locator("h1")).to_have_text(f"Request {request_id}")
    expect(page.locator("dl")).to_contain_text("upstream attempts (failover hops)")
    expect(page.locator("details").first).to_be_attached()  # the wire capture is on
    shot(page, "request", tmp_path)
    page.goto(gw.url + "/ui/overview?since=6h")
    bars = page.locator("rect[data-series=requests]")
    assert sum(float(v or 0) for v in bars.evaluate_all("els => els.map(e => e.dataset.value)")) >= 1
    expect(page.locator("section", has_text="Top keys")).to_contain_text("browser-made")
    shot(page, "overview", tmp_path)
    page.goto(gw.url + "/ui/backends")
    expect(page.locator("table")).to_contain_text("oai")
    shot(page, "backends", tmp_path)

    # Revoke it: the next request is refused.
    page.goto(gw.url + "/ui/keys")
    page.click("button[data-revoke=browser-made]")
    expect(page.locator("tr", has_text="browser-made")).to_have_count(0)
    with pytest.raises(openai.AuthenticationError):
        for _ in range(20):  # every replica within a second; this one at once
            chat(gw, secret)
            page.wait_for_timeout(100)


def test_a_wrong_admin_key_is_refused(gw: RunningGateway, page: Page) -> None:
    sign_in(page, gw, "sk-admin-wrong-000000000000")
    expect(page.locator(".error")).to_contain_text("invalid admin key")
    assert not [c for c in page.context.cookies() if c["name"] == "mw_session"]
    page.goto(gw.url + "/ui/keys")
    expect(page).to_have_url(re.compile(r"/ui/login$"))


def test_an_ordinary_key_cannot_sign_in(gw: RunningGateway, page: Page) -> None:
    sign_in(page, gw, CLIENT_KEY)
    expect(page.locator(".error")).to_contain_text("not an admin key")


def test_writes_without_the_csrf_token_are_refused(gw: RunningGateway, page: Page) -> None:
    sign_in(page, gw)
    expect(page).to_have_url(re.compile(r"/ui/overview$"))
    form = {"name": "forged", "models": "*"}
    for extra in ({}, {"csrf": "not-the-token"}):
        reply = page.request.post(gw.url + "/ui/keys", form={**form, **extra}, max_redirects=0)
        assert reply.status == 403 and "CSRF" in reply.text()
    token = page.locator("input[name=csrf]").first.get_attribute("value")
    assert token
    reply = page.request.post(gw.url + "/ui/keys", form={**form, "csrf": token}, max_redirects=0)
    assert reply.status == 200 and "new-secret" in reply.text()  # the same session, with its token, may
    page.goto(gw.url + "/ui/keys")
    page.click("button[data-revoke=forged]")


def test_signing_out_ends_the_session_everywhere(gw: RunningGateway, page: Page) -> None:
    sign_in(page, gw)
    cookie = next(c for c in page.context.cookies() if c["name"] == "mw_session")
    page.click("nav button")
    expect(page).to_have_url(re.compile(r"/ui/login$"))
    # The old cookie, replayed, no longer opens anything.
    status, headers, _ = raw(gw, "GET", "/ui/keys", Cookie=f"mw_session={cookie['value']}")
    assert status == 303 and headers["location"] == "/ui/login"


def test_pages_forbid_scripts_and_framing(gw: RunningGateway) -> None:
    status, headers, _ = raw(gw, "GET", "/ui/login")
    assert status == 200
    assert "default-src 'none'" in headers["content-security-policy"] and headers["x-frame-options"] == "DENY"


def test_the_cookie_is_secure_behind_tls(gw: RunningGateway) -> None:
    body = f"key={ADMIN_KEY}".encode()
    form = "application/x-www-form-urlencoded"
    status, headers, _ = raw(gw, "POST", "/ui/login", body, Content_Type=form, X_Forwarded_Proto="https")
    assert status == 303
    cookie = headers["set-cookie"]
    assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert ADMIN_KEY not in cookie
