"""Length-prefixed messages over a stream socket, shared by a simulated device
(cosim.kernel_core) and its testbench server (cosim/tb/kernel_core.py): 8 bytes
(header length, payload length: little-endian u32), the JSON header, the payload.
Standard library only, so both sides import it without cocotb."""
from __future__ import annotations

import json
import socket
import struct

__all__ = ["recv_message", "send_message"]

_FRAME = struct.Struct("<II")


def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
    """n bytes, or None when the peer closed the connection."""
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(n - len(buf), 1 << 22))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def recv_message(sock: socket.socket) -> tuple[dict | None, bytes]:
    """(header, payload); (None, b"") when the peer closed the connection."""
    head = _recv_exact(sock, _FRAME.size)
    if head is None:
        return None, b""
    hlen, plen = _FRAME.unpack(head)
    header = _recv_exact(sock, hlen)
    payload = _recv_exact(sock, plen) if plen else b""
    if header is None or payload is None:
        return None, b""
    return json.loads(header), payload


def send_message(sock: socket.socket, header: dict, payload: bytes = b"") -> None:
    """Send one framed message: a JSON header and an optional binary payload."""
    h = json.dumps(header).encode()
    if len(payload) >= 1 << 32:
        raise ValueError(f"a {len(payload)}-byte payload does not fit one message; send "
                         f"it in parts below 4 GiB")
    sock.sendall(_FRAME.pack(len(h), len(payload)) + h)
    if payload:
        sock.sendall(payload)
