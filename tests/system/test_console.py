"""The web console in a real headless Chromium (Debian's package) against a real gateway on
loopback with real data: login, the operations list and its filters, an operation's
timeline, the cancel button, agents, and that attacker-controlled text renders as text.

The browser is driven with Playwright's Python package, launching /usr/bin/chromium (its
wheel carries the driver; no browser is downloaded). Screenshots go to the test's tmp dir;
``SWARMGATE_UPDATE_SCREENSHOT=1`` also writes ``docs/console.png`` for the README.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from time import time
from typing import Any

import jwt
import pytest

from gateway.testing import eventually
from tests.conftest import IN_CI, Running, make_settings, running_gateway, serving, serving_agent
from tests.helpers import Receiver, make_test_agent

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SECRET = "console-test-secret-0123456789abcdef"
DOCS_PNG = Path(__file__).resolve().parents[2] / "docs" / "console.png"
WAIT_MS = 10_000


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's Chromium, installed with apt-get when missing (under CI=true it must be).
    The suite runs in several processes (pytest-xdist): one installs, the others wait on the
    lock and find it there (two apt-gets at once would fight over dpkg's lock)."""
    with open("/tmp/swarmgate-tests-chromium.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _install_chromium()
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        if IN_CI:
            pytest.fail("the playwright package (dev extra) is required under CI=true")
        pytest.skip("playwright is not installed")
    return CHROMIUM


def _install_chromium() -> None:
    if not Path(CHROMIUM).exists():
        if shutil.which("apt-get") is None and not IN_CI:
            pytest.skip("no /usr/bin/chromium and no apt-get to install it")
        cmd = "apt-get update && apt-get install -y chromium chromium-driver"
        done = subprocess.run(["sh", "-c", cmd], capture_output=True, text=True, timeout=900)
        if done.returncode != 0 or not Path(CHROMIUM).exists():
            message = f"installing chromium failed: {done.stderr[-2000:]}"
            if IN_CI:
                pytest.fail(message)
            pytest.skip(message)


def token(sub: str, scope: str = "admin") -> str:
    return jwt.encode(
        {
            "iss": "swarmgate",
            "aud": "swarmgate",
            "sub": sub,
            "scope": scope,
            "iat": int(time()),
            "exp": int(time()) + 600,
        },
        SECRET,
        algorithm="HS256",
    )


def hs_settings(db_url: str) -> Any:
    return make_settings(db_url, auth_mode="hs256", jwt_secret=SECRET)


@asynccontextmanager
async def browser_page(chromium: str, tmp_path: Path) -> AsyncIterator[Any]:
    """A page in a fresh Chromium profile; fails the test on any script error in the page
    or any Content-Security-Policy violation."""
    from playwright.async_api import async_playwright

    errors: list[str] = []
    async with async_playwright() as pw:
        context = await pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"),
            executable_path=chromium,
            headless=True,
            args=FLAGS,
            viewport={"width": 1360, "height": 900},
        )
        try:
            page = context.pages[0] if context.pages else await context.new_page()
            page.set_default_timeout(WAIT_MS)
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on(  # the app itself must not need anything its CSP forbids
                "console",
                lambda msg: (
                    errors.append(msg.text) if "Content Security Policy" in msg.text else None
                ),
            )
            page.on("dialog", lambda dialog: dialog.accept())
            yield page
        finally:
            await context.close()
    assert errors == []


async def login(page: Any, gw: Running, tok: str) -> None:
    await page.goto(f"{gw.url}/ui")
    await page.get_by_label("Token", exact=True).fill(tok)
    await page.get_by_role("button", name="Sign in").click()
    await page.wait_for_selector("#ops-body")


async def start(gw: Running, op: str, body: Any, tok: str | None, **params: str) -> str:
    headers = {"Authorization": f"Bearer {tok}"} if tok else {}
    if "request_id" in params:
        headers["Nexus-Request-Id"] = params.pop("request_id")
    async with gw.http.post(gw.nexus("worker", op), json=body, headers=headers, params=params) as r:
        assert r.status in (200, 201, 424), await r.text()
        return r.headers["Nexus-Operation-Token"]


async def op_ids_shown(page: Any) -> list[str]:
    return [
        str(x)
        for x in await page.locator("#ops-body tr[data-id]").evaluate_all(
            "rows => rows.map(r => r.dataset.id)"
        )
    ]


async def test_a_token_signs_in_and_the_list_shows_operations_with_filters_and_counts(
    chromium: str, pg_db: str, tmp_path: Path
) -> None:
    agent = make_test_agent()
    async with serving_agent(agent) as agent_url, running_gateway(hs_settings(pg_db)) as gw:
        await gw.gw.registry.register(agent.spec(agent_url))
        tok = token("alice")
        done = await start(gw, "echo", {"n": 1}, tok, request_id="order-1001")
        failed = await start(gw, "broken", {}, tok, request_id="order-2002")
        bob = token("bob", "ops:read ops:start:*")
        other = await start(gw, "echo", {"n": 2}, bob, request_id="bob-1")
        async with browser_page(chromium, tmp_path) as page:
            await page.goto(f"{gw.url}/ui")
            await page.wait_for_selector("#token")
            forged = token("mallory") + "x"
            await page.get_by_label("Token", exact=True).fill(forged)
            await page.get_by_role("button", name="Sign in").click()
            await page.get_by_role("alert").get_by_text("This token was refused.").wait_for()
            await login(page, gw, tok)
            assert await page.evaluate("document.cookie") == ""
            assert "eyJ" not in page.url  # the token is in sessionStorage, not the URL
            assert await page.evaluate("sessionStorage.getItem('swarmgate.token')") == tok
            assert await page.locator("#who").inner_text() == "signed in as alice"
            await eventually(lambda: _has(page, [done, failed, other]))
            counts = page.locator("#counts")
            assert await counts.locator("[data-state=succeeded]").inner_text() == "2"
            assert await counts.locator("[data-state=failed]").inner_text() == "1"
            await page.screenshot(path=str(tmp_path / "list.png"), full_page=True)

            await page.get_by_label("State", exact=True).select_option("failed")
            await page.get_by_role("button", name="Filter").click()
            await eventually(lambda: _only(page, [failed]))
            assert "state=failed" in page.url

            await page.get_by_role("button", name="Clear").click()
            await page.get_by_label("Request id", exact=True).fill("ORDER-1")
            await page.get_by_role("button", name="Filter").click()
            await eventually(lambda: _only(page, [done]))
            assert await counts.locator("[data-state=succeeded]").inner_text() == "1"

            await page.get_by_role("button", name="Clear").click()
            await page.get_by_label("Caller", exact=True).fill("bob")
            await page.get_by_role("button", name="Filter").click()
            await eventually(lambda: _only(page, [other]))

            await page.get_by_role("button", name="Clear").click()
            await page.get_by_label("To", exact=True).fill("2001-01-01T00:00")  # nothing that old
            await page.get_by_role("button", name="Filter").click()
            await page.get_by_text("No operations match.").wait_for()

            # a new operation shows up without a reload (the list polls)
            await page.get_by_role("button", name="Clear").click()
            await eventually(lambda: _has(page, [done]))
            late = await start(gw, "echo", {"n": 3}, tok)
            await eventually(lambda: _has(page, [late]), timeout=10.0)


async def _has(page: Any, ids: list[str]) -> bool:
    shown = await op_ids_shown(page)
    return all(i in shown for i in ids)


async def _only(page: Any, ids: list[str]) -> bool:
    return await op_ids_shown(page) == ids


async def test_an_operation_page_shows_attempts_with_an_error_and_each_callback_try(
    chromium: str, pg_db: str, tmp_path: Path
) -> None:
    agent = make_test_agent()
    receiver = Receiver(refuse_first=1)
    async with (
        serving_agent(agent) as agent_url,
        serving(receiver.app()) as cb_url,
        running_gateway(make_settings(pg_db)) as gw,
    ):
        await gw.gw.registry.register(agent.spec(agent_url))
        op_id = await start(
            gw, "flaky", {"fail_times": 1, "city": "Lisbon"}, None, callback=cb_url + "/done"
        )
        await receiver.wait()
        async with browser_page(chromium, tmp_path) as page:
            await page.goto(f"{gw.url}/ui#/operations/{op_id}")  # auth_mode none: no login
            timeline = page.locator("#timeline")
            await timeline.locator("[data-kind='callback.delivered']").wait_for()
            kinds = await timeline.locator("li").evaluate_all("l => l.map(e => e.dataset.kind)")
            assert kinds[:3] == ["operation.started", "attempt.started", "attempt.failed"]
            assert kinds.count("attempt.started") == 2
            assert "operation.succeeded" in kinds and "callback.failed" in kinds
            failed_attempt = timeline.locator("[data-kind='attempt.failed']")
            assert "Attempt 1 failed after" in await failed_attempt.inner_text()
            assert "not yet" in await failed_attempt.locator(".ev-error").inner_text()
            delivery = page.locator(".delivery")
            assert "delivered" in await delivery.inner_text()
            tries = await delivery.locator(".tries li").all_inner_texts()
            assert len(tries) == 2
            assert "Callback try 1 failed (HTTP 503)" in tries[0]
            assert "Callback delivered on try 2 (HTTP 200)" in tries[1]
            assert '"city": "Lisbon"' in await page.locator("pre#input").inner_text()
            assert '"attempts": 2' in await page.locator("pre#result").inner_text()
            await page.screenshot(path=str(tmp_path / "operation.png"), full_page=True)
            if os.environ.get("SWARMGATE_UPDATE_SCREENSHOT") == "1":
                await page.screenshot(path=str(DOCS_PNG))
            assert (tmp_path / "operation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


async def test_the_cancel_button_cancels_and_the_history_records_who_pressed_it(
    chromium: str, pg_db: str, tmp_path: Path
) -> None:
    agent = make_test_agent()
    async with serving_agent(agent) as agent_url, running_gateway(hs_settings(pg_db)) as gw:
        await gw.gw.registry.register(agent.spec(agent_url))
        tok = token("operator-olga")
        op_id = await start(gw, "hang", {}, token("alice", "ops:read ops:start:*"))
        async with browser_page(chromium, tmp_path) as page:
            await login(page, gw, tok)
            await page.locator(f"#ops-body tr[data-id='{op_id}'] a.mono").click()
            await page.wait_for_selector("#op-id")
            await page.locator("[data-kind='attempt.accepted']").wait_for()
            await page.get_by_role("button", name="Cancel").click()
            # the SSE stream brings the cancel into the page without a reload
            await page.locator("[data-kind='operation.canceled']").wait_for()
            requested = page.locator("[data-kind='cancel.requested']")
            assert "Cancel requested by operator-olga" in await requested.inner_text()
            await page.locator("h1 .badge", has_text="canceled").wait_for()
            await page.screenshot(path=str(tmp_path / "canceled.png"), full_page=True)
            await page.get_by_role("button", name="Redrive").click()
            redriven = page.locator("[data-kind='operation.redriven']")
            await redriven.wait_for()
            assert "Redriven by operator-olga" in await redriven.inner_text()
        events = await gw.gw.store.list_events(op_id)
        by = {e.kind: e.data.get("by") for e in events}
        assert by["cancel.requested"] == by["operation.redriven"] == "operator-olga"

        async def dispatched_again() -> bool:
            kinds = [e.kind for e in await gw.gw.store.list_events(op_id)]
            return "attempt.started" in kinds[kinds.index("operation.redriven") :]

        await eventually(dispatched_again)


async def test_the_resend_button_redelivers_a_disabled_callback_and_records_who(
    chromium: str, pg_db: str, tmp_path: Path
) -> None:
    agent = make_test_agent()
    receiver = Receiver(refuse_first=1, status_when_refusing=410)  # 410: stop sending
    async with (
        serving_agent(agent) as agent_url,
        serving(receiver.app()) as cb_url,
        running_gateway(hs_settings(pg_db)) as gw,
    ):
        await gw.gw.registry.register(agent.spec(agent_url))
        tok = token("operator-olga")
        op_id = await start(gw, "later", {}, tok, callback=cb_url + "/done")  # async: a callback
        async with browser_page(chromium, tmp_path) as page:
            await login(page, gw, tok)
            await page.goto(f"{gw.url}/ui#/operations/{op_id}")
            await page.get_by_role("button", name="Resend callback").click()
            await page.locator("[data-kind='callback.delivered']").wait_for()
            resent = page.locator("[data-kind='callback.redriven']")
            assert "Callback resent by operator-olga" in await resent.inner_text()
            assert "delivered" in await page.locator(".delivery .badge").inner_text()
            assert await page.get_by_role("button", name="Resend callback").count() == 0
            # a closed operation waits for no input: no answer-input form
            assert await page.locator("#answer").count() == 0
        assert len(receiver.requests) == 2


async def test_a_script_in_an_input_or_request_id_renders_as_text_and_never_runs(
    chromium: str, pg_db: str, tmp_path: Path
) -> None:
    agent = make_test_agent()
    evil = '<script>window.__xss=1</script><img src=x onerror="window.__xss=2">'
    async with serving_agent(agent) as agent_url, running_gateway(make_settings(pg_db)) as gw:
        await gw.gw.registry.register(agent.spec(agent_url))
        op_id = await start(gw, "broken", {"note": evil}, None, request_id=evil)
        async with browser_page(chromium, tmp_path) as page:
            await page.goto(f"{gw.url}/ui")
            row = page.locator(f"#ops-body tr[data-id='{op_id}']")
            await row.wait_for()
            assert evil in await row.inner_text()
            await row.locator("a.mono").click()
            shown = page.locator("pre#input")
            await shown.wait_for()
            assert evil.replace('"', '\\"') in await shown.inner_text()
            assert await page.locator("main img, main script").count() == 0
            assert await page.evaluate("window.__xss") is None
            await page.screenshot(path=str(tmp_path / "xss.png"), full_page=True)


async def test_without_auth_the_agents_pages_show_schemas_endpoint_and_breaker_state(
    chromium: str, pg_db: str, tmp_path: Path
) -> None:
    agent = make_test_agent()
    async with serving_agent(agent) as agent_url, running_gateway(make_settings(pg_db)) as gw:
        await gw.gw.registry.register(agent.spec(agent_url))
        await start(gw, "echo", {}, None)
        async with browser_page(chromium, tmp_path) as page:
            await page.goto(f"{gw.url}/ui#/agents")
            await page.get_by_role("link", name="worker").click()
            await page.locator("#breaker").wait_for()
            assert "closed" in await page.locator("#breaker").inner_text()
            body = await page.locator("main").inner_text()
            assert agent_url in body and "1 succeeded" in body
            assert await page.locator("[data-op]").count() == len(agent.spec(agent_url).operations)
            await page.screenshot(path=str(tmp_path / "agent.png"), full_page=True)
