"""The receiver-side Standard Webhooks helpers behind a real aiohttp server on loopback."""

from __future__ import annotations

import time

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.security.webhooks import (
    Deduper,
    WebhookVerificationError,
    generate_secret,
    signed_headers,
    verify,
)

BODY = b'{"state": "succeeded", "result": 42}'
MSG_ID = "msg_2b9c1f0e"


async def test_a_receiver_built_from_the_helpers_takes_a_delivery_once_and_refuses_forgeries() -> (
    None
):
    secret = generate_secret()
    dedupe = Deduper()
    processed: list[bytes] = []

    async def receive(request: web.Request) -> web.Response:
        body = await request.read()
        try:
            msg_id = verify([secret], request.headers, body)
        except WebhookVerificationError as exc:
            return web.Response(status=400, text=str(exc))
        if not dedupe.seen(msg_id):
            processed.append(body)
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/hook", receive)
    async with TestServer(app, host="127.0.0.1") as server, aiohttp.ClientSession() as http:
        url = str(server.make_url("/hook"))
        headers = signed_headers([secret], MSG_ID, BODY, int(time.time()))
        for _ in range(2):  # a retry carries the same webhook-id
            async with http.post(url, data=BODY, headers=headers) as resp:
                assert resp.status == 200
        async with http.post(url, data=BODY + b" ", headers=headers) as resp:
            assert resp.status == 400
        forged = signed_headers([generate_secret()], "msg_forged", BODY, int(time.time()))
        async with http.post(url, data=BODY, headers=forged) as resp:
            assert resp.status == 400
    assert processed == [BODY]
