"""The outbound HTTP transport against real servers on loopback: keep-alive, framing, limits,
timeouts, header safety, TLS."""

from __future__ import annotations

import asyncio
import datetime as dt
import gzip
import ipaddress
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from adapters.transport import HttpTransport
from gateway.domain.dispatch import HttpResponse, TransportError
from gateway.security.netguard import OutboundPolicy
from gateway.testing import eventually
from tests.conftest import free_port, serving

LOOPBACK = OutboundPolicy.from_strings(["127.0.0.0/8"])


@pytest.fixture
async def http() -> AsyncIterator[HttpTransport]:
    transport = HttpTransport(LOOPBACK)
    yield transport
    await transport.close()


async def post(http: HttpTransport, url: str, body: bytes = b"{}", **headers: str) -> HttpResponse:
    return await http.request("POST", url, headers=headers, body=body, timeout_s=5)


Exchange = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def raw_server(exchange: Exchange) -> AsyncIterator[tuple[str, list[bytes]]]:
    """A hand-rolled HTTP peer: ``exchange`` gets each connection; yields the base URL and the
    request heads received."""
    heads: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await exchange(reader, writer)
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.heads = heads
    try:
        yield f"http://127.0.0.1:{port}", heads
    finally:
        server.close()
        await server.wait_closed()


async def read_request(reader: asyncio.StreamReader, heads: list[bytes]) -> bytes | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    heads.append(head)
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return await reader.readexactly(length)


async def test_requests_to_one_origin_share_one_keep_alive_connection(
    http: HttpTransport,
) -> None:
    peers: set[object] = set()

    async def echo(request: web.Request) -> web.Response:
        peers.add(request.transport.get_extra_info("peername") if request.transport else None)
        return web.Response(body=await request.read(), content_type="application/json")

    app = web.Application()
    app.router.add_post("/echo", echo)
    async with serving(app) as url:
        bodies = [await post(http, f"{url}/echo", f'{{"n": {i}}}'.encode()) for i in range(5)]
    assert [b.body for b in bodies] == [f'{{"n": {i}}}'.encode() for i in range(5)]
    assert len(peers) == 1
    assert http.connections_opened == 1


async def test_a_chunked_answer_is_read_whole_and_header_names_match_in_any_case(
    http: HttpTransport,
) -> None:
    async def chunked(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"X-Agent-Token": "t-1"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for part in (b"one,", b"two,", b"three"):
            await resp.write(part)
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post("/chunked", chunked)
    async with serving(app) as url:
        resp = await http.request("POST", f"{url}/chunked", headers={}, body=b"", timeout_s=5)
        again = await http.request("POST", f"{url}/chunked", headers={}, body=b"", timeout_s=5)
    assert resp.body == again.body == b"one,two,three"
    assert resp.headers["x-agent-token"] == resp.headers["X-AGENT-TOKEN"] == "t-1"
    assert http.connections_opened == 1


async def test_an_answer_that_runs_until_the_connection_closes_is_read_whole(
    http: HttpTransport,
) -> None:
    async def until_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader, heads)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nall of ")
        await writer.drain()
        writer.write(b"it")

    async with raw_server(until_close) as (url, heads):
        resp = await post(http, f"{url}/x")
        resp2 = await post(http, f"{url}/x")
    assert resp.body == resp2.body == b"all of it"
    assert http.connections_opened == 2  # such a connection is never reused


async def test_a_reused_connection_the_server_dropped_unanswered_is_replaced_once(
    http: HttpTransport,
) -> None:
    async def one_answer_per_connection(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await read_request(reader, heads)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        await read_request(reader, heads)  # read the next request, then hang up without a word

    async with raw_server(one_answer_per_connection) as (url, heads):
        first = await post(http, f"{url}/a")
        second = await post(http, f"{url}/b")
    assert first.body == second.body == b"ok"
    assert [h.split(b" ")[1] for h in heads] == [b"/a", b"/b", b"/b"]
    assert http.connections_opened == 2


async def test_a_new_connection_closed_unanswered_fails_retryably_and_is_not_resent(
    http: HttpTransport,
) -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader, heads)

    async with raw_server(hang_up) as (url, heads):
        with pytest.raises(TransportError, match="closed before a response") as info:
            await post(http, f"{url}/x")
    assert info.value.retryable
    assert len(heads) == 1


async def test_a_timeout_fails_retryably_and_the_late_connection_is_not_reused(
    http: HttpTransport,
) -> None:
    async def slow(request: web.Request) -> web.Response:
        if request.path == "/slow":
            await asyncio.sleep(1.0)  # the stimulus: slower than the 0.2 s timeout
        return web.Response(text="late" if request.path == "/slow" else "fast")

    app = web.Application()
    app.router.add_post("/{name}", slow)
    async with serving(app) as url:
        stage = r"timed out after 0\.2s \(waiting for the answer on a new connection\)"
        with pytest.raises(TransportError, match=stage) as info:
            await http.request("POST", f"{url}/slow", headers={}, body=b"", timeout_s=0.2)
        fast = await post(http, f"{url}/fast")
    assert info.value.retryable
    assert fast.body == b"fast"
    assert http.connections_opened == 2


async def test_header_injection_is_refused_before_anything_is_sent(http: HttpTransport) -> None:
    async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (body := await read_request(reader, heads)) is not None:
            bodies.append(body)
            writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
            await writer.drain()

    bodies: list[bytes] = []
    async with raw_server(record) as (url, heads):
        for name, value in [("X-Note", "a\r\nInjected: yes"), ("Bad Name", "v"), ("X", "\n")]:
            with pytest.raises(TransportError, match="invalid HTTP header") as info:
                await http.request("POST", url, headers={name: value}, body=b"", timeout_s=5)
            assert info.value.retryable is False
        assert heads == []
        # Framing is the transport's own: a caller's Content-Length / Transfer-Encoding / Host
        # are not sent, so the body cannot be cut short or smuggled.
        resp = await http.request(
            "POST",
            url + "/p",
            headers={"Content-Length": "0", "Transfer-Encoding": "chunked", "Host": "evil"},
            body=b"whole body",
            timeout_s=5,
        )
    assert resp.status == 204
    assert bodies == [b"whole body"]
    head = heads[0].decode().lower()
    assert "transfer-encoding" not in head and "host: evil" not in head
    assert f"host: {url.removeprefix('http://')}" in head


async def test_an_answer_over_the_size_limit_is_refused_for_good(tmp_path: Path) -> None:
    async def big(request: web.Request) -> web.StreamResponse:
        if request.path == "/length":
            return web.Response(body=b"x" * 5000)
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for _ in range(5):
            await resp.write(b"y" * 1000)
        await resp.write_eof()
        return resp

    http = HttpTransport(LOOPBACK, max_response_bytes=4096)
    app = web.Application()
    app.router.add_post("/{kind}", big)
    try:
        async with serving(app) as url:
            for kind in ("length", "chunked"):
                with pytest.raises(TransportError, match="larger than 4096 bytes") as info:
                    await post(http, f"{url}/{kind}")
                assert info.value.retryable is False
    finally:
        await http.close()


async def test_a_gzip_answer_is_decoded(http: HttpTransport) -> None:
    async def zipped(_: web.Request) -> web.Response:
        return web.Response(
            body=gzip.compress(b'{"ok": true}'), headers={"Content-Encoding": "gzip"}
        )

    app = web.Application()
    app.router.add_post("/z", zipped)
    async with serving(app) as url:
        resp = await post(http, f"{url}/z")
    assert resp.body == b'{"ok": true}'


async def test_a_target_with_spaces_or_non_ascii_is_percent_encoded(http: HttpTransport) -> None:
    paths: list[str] = []

    async def seen(request: web.Request) -> web.Response:
        paths.append(request.raw_path)
        return web.Response()

    app = web.Application()
    app.router.add_post("/{tail:.*}", seen)
    async with serving(app) as url:
        await post(http, f"{url}/a b?q=é#fragment")
    assert paths == ["/a%20b?q=%C3%A9"]


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


async def test_https_checks_the_certificate_and_works_with_a_trusted_one(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)

    async def hello(_: web.Request) -> web.Response:
        return web.Response(text="over tls")

    app = web.Application()
    app.router.add_post("/hello", hello)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=server_ctx).start()
    untrusting = HttpTransport(LOOPBACK)
    trusting = HttpTransport(LOOPBACK, ssl_context=ssl.create_default_context(cafile=cert))
    try:
        with pytest.raises(TransportError, match="certificate verify failed"):
            await post(untrusting, f"https://127.0.0.1:{port}/hello")
        resp = await post(trusting, f"https://127.0.0.1:{port}/hello")
        assert resp.body == b"over tls"
    finally:
        await untrusting.close()
        await trusting.close()
        await runner.cleanup()


async def test_connections_idle_too_long_are_closed_and_their_pools_forgotten() -> None:
    closed: list[str] = []

    def answer_then_watch(name: str) -> Exchange:
        async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_request(reader, [])
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
            if await read_request(reader, []) is None:  # the client hung up
                closed.append(name)

        return exchange

    http = HttpTransport(LOOPBACK, idle_s=0.2)
    try:
        async with (
            raw_server(answer_then_watch("a")) as (a, _),
            raw_server(answer_then_watch("b")) as (b, _),
        ):
            await post(http, a + "/")
            # The stimulus: a's connection idles past idle_s. The transport measures idleness
            # on the event loop's own clock, so this wait is real time.
            await asyncio.sleep(0.3)
            await post(http, b + "/")  # putting this connection back sweeps the pools
            await eventually(lambda: closed)
            assert closed == ["a"]
            assert list(http._idle) == [b]
    finally:
        await http.close()
