"""The gateway's fast path (``write_now``) on a real ``websockets`` server and raw loopback clients.

It goes through the library's supported ``broadcast()`` only; these tests pin what the gateway relies
on, so a library upgrade that changes it fails here: one unfragmented, unmasked text frame per message
(the three RFC 6455 length encodings), refusal (False, nothing written) when the connection is not
open, when a fragmented send is in progress, or when the transport buffers more than the limit.
"""

from __future__ import annotations

import asyncio
import socket

from websockets.asyncio.server import ServerConnection, serve

from services.gateway.service import write_now
from spx_testing import rawws


def _raw_client(port: int, rcvbuf: int | None = None) -> socket.socket:
    return rawws.connect(port, "/", rcvbuf=rcvbuf)


def _recv_exactly(s: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = s.recv(n - len(out))
        assert chunk, f"connection closed after {len(out)} of {n} bytes"
        out += chunk
    return out


async def _with_server(body, **serve_kw) -> None:
    """Run ``body(port, accepted)`` against a server whose handler parks every connection."""
    accepted: asyncio.Queue[ServerConnection] = asyncio.Queue()
    done = asyncio.Event()

    async def handler(ws: ServerConnection) -> None:
        await accepted.put(ws)
        await done.wait()

    async with serve(handler, "127.0.0.1", 0, compression=None, **serve_kw) as server:
        port = server.sockets[0].getsockname()[1]
        try:
            await asyncio.wait_for(body(port, accepted), 30)
        finally:
            done.set()


def test_one_unfragmented_text_frame_per_message_in_each_length_encoding():
    async def body(port, accepted):
        s = await asyncio.to_thread(_raw_client, port)
        ws = await asyncio.wait_for(accepted.get(), 5)
        try:
            for n, head in ((5, b"\x81\x05"), (300, b"\x81\x7e\x01\x2c"),
                            (70_000, b"\x81\x7f" + (70_000).to_bytes(8, "big"))):
                data = b'"' + b"x" * (n - 2) + b'"'
                assert write_now(ws, data, 1 << 20)
                got = await asyncio.to_thread(_recv_exactly, s, len(head) + n)
                assert got == head + data
        finally:
            s.close()

    asyncio.run(_with_server(body))


def test_refused_when_not_open_or_during_a_fragmented_send():
    async def body(port, accepted):
        s = await asyncio.to_thread(_raw_client, port)
        ws = await asyncio.wait_for(accepted.get(), 5)
        try:
            release = asyncio.Event()

            async def fragments():
                yield "first "
                await release.wait()
                yield "second"

            sending = asyncio.ensure_future(ws.send(fragments()))
            for _ in range(100):  # until the first fragment is out and the send is parked
                await asyncio.sleep(0.01)
                if ws.transport.get_write_buffer_size() == 0 and not sending.done():
                    break
            assert not write_now(ws, b'"in between"', 1 << 20)  # would corrupt the fragmented message
            release.set()
            await asyncio.wait_for(sending, 5)
            # text fragment, continuation, empty final continuation (FIN): nothing in between
            got = await asyncio.to_thread(_recv_exactly, s, 2 + 6 + 2 + 6 + 2)
            assert got == b"\x01\x06first \x00\x06second\x80\x00"
            assert write_now(ws, b'"after"', 1 << 20)
            assert await asyncio.to_thread(_recv_exactly, s, 9) == b'\x81\x07"after"'
            await ws.close()
            assert not write_now(ws, b'"closed"', 1 << 20)
        finally:
            s.close()

    asyncio.run(_with_server(body, close_timeout=1))


def test_refused_once_the_transport_buffers_more_than_the_limit():
    limit = 4096

    async def body(port, accepted):
        s = await asyncio.to_thread(_raw_client, port, 4096)  # a client that never reads
        ws = await asyncio.wait_for(accepted.get(), 5)
        try:
            ws.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            data = b'"' + b"y" * 998 + b'"'
            written = 0
            while write_now(ws, data, limit):
                written += 1
                assert written < 10_000, "the kernel and transport buffers never filled"
            buffered = ws.transport.get_write_buffer_size()
            assert buffered > limit
            assert not write_now(ws, data, limit)
            assert ws.transport.get_write_buffer_size() == buffered  # a refused message is not written
        finally:
            s.close()

    asyncio.run(_with_server(body))
