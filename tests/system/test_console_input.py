"""The console's answer-input form in a real headless Chromium (issue 15 item 4): an agent's
question shows in the operation's timeline, the operator answers it in the page, and the
operation goes on with that answer, recorded with the operator's name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gateway.domain.specs import RetryPolicy
from gateway.sdk import AgentApp, OpContext
from tests.conftest import running_gateway, serving_agent
from tests.system.test_console import browser_page, chromium, hs_settings, login, token

__all__ = ["chromium"]  # the fixture, used by name


async def test_an_operator_answers_an_agents_question_in_the_console(
    chromium: str, pg_db: str, tmp_path: Path
) -> None:
    agent = AgentApp("gate")

    @agent.operation("release", mode="async", retry=RetryPolicy(initial_s=0.05, max_s=0.2))
    async def release(ctx: OpContext, payload: Any) -> Any:
        answer = await ctx.ask("ship it?", {"type": "object", "required": ["ship"]})
        return {"shipped": answer["ship"]}

    async with serving_agent(agent) as agent_url, running_gateway(hs_settings(pg_db)) as gw:
        await gw.gw.registry.register(agent.spec(agent_url))
        tok = token("operator-olga")
        async with gw.http.post(
            gw.nexus("gate", "release"), json={}, headers={"Authorization": f"Bearer {tok}"}
        ) as r:
            assert r.status == 201, await r.text()
            op_id = (await r.json())["token"]
        async with browser_page(chromium, tmp_path) as page:
            await login(page, gw, tok)
            await page.goto(f"{gw.url}/ui#/operations/{op_id}")
            requested = page.locator("[data-kind='input.requested']")
            await requested.wait_for()
            assert "Input requested: ship it?" in await requested.inner_text()
            await page.locator("#answer").fill('{"ship": true}')
            await page.get_by_role("button", name="Send answer").click()
            await page.locator("[data-kind='operation.succeeded']").wait_for()
            provided = page.locator("[data-kind='input.provided']")
            assert "operator-olga" in await provided.inner_text()
        op = await gw.gw.store.get_operation(op_id)
        assert op is not None and op.result is not None
        assert b'"shipped": true' in op.result
