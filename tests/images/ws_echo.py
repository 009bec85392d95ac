"""A WebSocket echo server in the standard library only, for a test image built from the host's
Python (tests/docker_fixtures.py `python_image`): every text or binary message comes back as it
was; a close is answered with the same code. One thread per connection; RFC 6455 framing, masked
client frames, payloads up to 2**63."""

import base64
import hashlib
import socket
import struct
import sys
import threading

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def read_exact(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


def frame(opcode: int, payload: bytes) -> bytes:
    head = bytes([0x80 | opcode])
    if len(payload) < 126:
        head += bytes([len(payload)])
    elif len(payload) < 65536:
        head += bytes([126]) + struct.pack(">H", len(payload))
    else:
        head += bytes([127]) + struct.pack(">Q", len(payload))
    return head + payload


def serve(conn: socket.socket) -> None:
    request = b""
    while b"\r\n\r\n" not in request:
        chunk = conn.recv(4096)
        if not chunk:
            return
        request += chunk
    lines = request.split(b"\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    key = headers.get(b"sec-websocket-key")
    if key is None:
        body = b"not a websocket request\n"
        head = b"HTTP/1.1 400 Bad Request\r\nContent-Length: %d\r\n\r\n" % len(body)
        conn.sendall(head + body)
        return
    accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
    reply = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    reply += b"Sec-WebSocket-Accept: " + accept + b"\r\n"
    offered = [p.strip() for p in headers.get(b"sec-websocket-protocol", b"").split(b",") if p]
    if b"echo" in offered:
        reply += b"Sec-WebSocket-Protocol: echo\r\n"
    conn.sendall(reply + b"\r\n")
    while True:
        first, second = read_exact(conn, 2)
        opcode, length = first & 0x0F, second & 0x7F
        if length == 126:
            (length,) = struct.unpack(">H", read_exact(conn, 2))
        elif length == 127:
            (length,) = struct.unpack(">Q", read_exact(conn, 8))
        mask = read_exact(conn, 4) if second & 0x80 else b"\0\0\0\0"
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(read_exact(conn, length)))
        if opcode == 0x8:
            conn.sendall(frame(0x8, payload[:2]))
            return
        if opcode == 0x9:
            conn.sendall(frame(0xA, payload))
        elif opcode in (0x1, 0x2):
            conn.sendall(frame(opcode, payload))


def handle(conn: socket.socket) -> None:
    try:
        serve(conn)
    except (ConnectionError, OSError):
        pass
    finally:
        conn.close()


def main() -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("0.0.0.0", int(sys.argv[1])))
    listener.listen(64)
    print("ws echo ready", flush=True)
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


main()
