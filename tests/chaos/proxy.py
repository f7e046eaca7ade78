"""A small fault-injecting TCP proxy for the chaos scenarios (between gateway and agents).

``FaultProxy(target_host, target_port)`` listens on a loopback port and forwards each
connection to the target, in the mode set at the time the connection is accepted:

- ``pass``: forward both ways;
- ``delay``: forward, each chunk held ``delay_s`` first (a slow network);
- ``reset``: accept and close at once with a TCP reset (SO_LINGER 0): "connection reset";
- ``blackhole``: accept and read, never forward and never answer (a silent network drop).

A mode change applies to open (pooled, kept-alive) connections too, at their next chunk: a
reset aborts them, a blackhole swallows what they send.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections import Counter

MODES = ("pass", "delay", "reset", "blackhole")


class FaultProxy:
    def __init__(self, target_host: str, target_port: int, *, delay_s: float = 0.3) -> None:
        self.target = (target_host, target_port)
        self.delay_s = delay_s
        self.mode = "pass"
        self.accepted: Counter[str] = Counter()  # connections accepted per mode
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
        for w in list(self._writers):  # their pipes end, and with them the handlers
            w.transport.abort()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)

    def set_mode(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        self.mode = mode

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        mode = self.mode
        self.accepted[mode] += 1
        self._writers.add(writer)
        try:
            if mode == "reset":
                sock = writer.get_extra_info("socket")
                if sock is not None:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.transport.abort()
                return
            if mode == "blackhole":
                while await reader.read(65536):
                    pass  # swallowed; the gateway's attempt timeout must end this
                return
            up_reader, up_writer = await asyncio.open_connection(*self.target)
            self._writers.add(up_writer)
            await asyncio.gather(
                self._pipe(reader, up_writer, writer),
                self._pipe(up_reader, writer, writer),
                return_exceptions=True,
            )
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()
            self._writers.discard(writer)
            if task is not None:
                self._tasks.discard(task)

    async def _pipe(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        client: asyncio.StreamWriter,
    ) -> None:
        try:
            while data := await reader.read(65536):
                mode = self.mode  # the mode now, not the one at accept time
                if mode == "reset":
                    sock = client.get_extra_info("socket")
                    if sock is not None:
                        sock.setsockopt(
                            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                        )
                    client.transport.abort()
                    return
                if mode == "blackhole":
                    continue  # swallowed
                if mode == "delay":
                    await asyncio.sleep(self.delay_s)  # the fault: a slow link
                writer.write(data)
                await writer.drain()
        finally:
            with contextlib.suppress(Exception):
                writer.close()
