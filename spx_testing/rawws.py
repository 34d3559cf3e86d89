"""A raw RFC 6455 client side for tests and benchmarks that need what a library client hides: the exact
bytes a server writes, a reader that never reads (a slow client), or thousands of cheap connections.

``connect(port)`` returns a blocking socket after a checked handshake; ``upgrade_request`` and
``client_frame`` are the bytes for asyncio clients that do their own I/O.
"""

from __future__ import annotations

import base64
import os
import socket


def upgrade_request(port: int, path: str = "/ws") -> bytes:
    """The HTTP/1.1 upgrade request of a websocket client (a fresh random key)."""
    key = base64.b64encode(os.urandom(16)).decode()
    return (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()


def client_frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """One unfragmented client frame (masked, as RFC 6455 requires of clients); text by default."""
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        length = bytes([0x80 | n])
    elif n < 65536:
        length = bytes([0xFE]) + n.to_bytes(2, "big")
    else:
        length = bytes([0xFF]) + n.to_bytes(8, "big")
    return bytes([0x80 | opcode]) + length + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def connect(port: int, path: str = "/ws", *, rcvbuf: int | None = None, timeout_s: float = 5.0) -> socket.socket:
    """A blocking socket upgraded to a websocket on 127.0.0.1:``port`` (``rcvbuf``: a small receive buffer
    for a slow reader). Reads exactly the handshake response, nothing after it; AssertionError unless 101."""
    sock = socket.socket()
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(timeout_s)
    try:
        sock.connect(("127.0.0.1", port))
        sock.sendall(upgrade_request(port, path))
        head = b""
        while not head.endswith(b"\r\n\r\n"):
            if len(head) > 16384:
                raise AssertionError(f"no end of the handshake response in {len(head)} bytes")
            chunk = sock.recv(1)
            if not chunk:
                raise AssertionError(f"closed during the handshake: {head[:200]!r}")
            head += chunk
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            raise AssertionError(f"not upgraded: {head[:200]!r}")
    except BaseException:
        sock.close()
        raise
    return sock
