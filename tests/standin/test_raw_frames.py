"""Hand-crafted frames on a raw socket: the one place the SDK cannot reach (it never
sends a bad checksum). Everything else in this directory drives the real SDK."""

from __future__ import annotations

import socket
import struct

from xxhash import xxh3_64_intdigest

HEADER = 256


def _request(operation: int, body: bytes, session: int = 0, code: int = 0) -> bytes:
    header = bytearray(HEADER)
    struct.pack_into("<I", header, 48, HEADER + len(body))
    header[60] = 5  # Request
    struct.pack_into("<Q", header, 168, 1)
    header[176] = operation
    struct.pack_into("<Q", header, 184, session)
    struct.pack_into("<I", header, 196, code)
    return bytes(header) + body


def _exchange(sock: socket.socket, frame: bytes) -> tuple[int, int, bytes]:
    """Send one frame; return (operation echoed, status, body) of the reply."""
    sock.sendall(frame)
    header = _read(sock, HEADER)
    size = struct.unpack_from("<I", header, 48)[0]
    assert header[60] == 8  # Reply
    return header[208], struct.unpack_from("<I", header, 216)[0], _read(sock, size - HEADER)


def _read(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        assert chunk, "connection closed"
        data += chunk
    return data


def _name(text: str) -> bytes:
    return bytes((len(text),)) + text.encode()


def _login(sock: socket.socket) -> int:
    protocol = (0 << 20) | (11 << 10)
    body = struct.pack("<I", protocol) + _name("raw") + _name("1") + _name("iggy") + _name("iggy")
    body += struct.pack("<I", 0)
    operation, status, reply = _exchange(sock, _request(1, body))
    assert (operation, status) == (1, 0)
    return struct.unpack_from("<Q", reply, 8)[0]  # after [result count u32][user id u32]


def _batch(payloads: list[bytes]) -> bytearray:
    frames, sums = [], []
    for i, payload in enumerate(payloads):
        frame = bytearray(48) + payload
        struct.pack_into("<16sIIII", frame, 8, (1000 + i).to_bytes(16, "little"), i, 0, 0, len(payload))
        struct.pack_into("<Q", frame, 0, xxh3_64_intdigest(bytes(frame[8:])))
        frames.append(frame)
        sums.append(bytes(frame[:8]))
    blob = b"".join(frames)
    header = bytearray(256)
    struct.pack_into("<QQQQQ", header, 0, 0, 0, 0, 0, 256 + len(blob))
    struct.pack_into("<I", header, 48, len(payloads))
    struct.pack_into(
        "<Q", header, 40, xxh3_64_intdigest(bytes(header[:40]) + bytes(header[48:52]) + b"".join(sums))
    )
    return header + blob


def _send_body(batch: bytes, count: int) -> bytes:
    meta = b"\x02\x01s" + b"\x02\x01t" + b"\x02\x04" + struct.pack("<I", 0) + struct.pack("<I", count)
    return struct.pack("<I", len(meta)) + meta + batch


def _no_reply(sock: socket.socket, frame: bytes, wait: float = 0.3) -> bool:
    """True when nothing comes back within ``wait`` (the connection stays open)."""
    sock.sendall(frame)
    sock.settimeout(wait)
    try:
        sock.recv(1)  # a reply, or b"" for a closed connection: both are an answer
        return False
    except TimeoutError:
        return True
    finally:
        sock.settimeout(5)


def test_refused_batches_get_no_reply_and_the_connection_goes_on(standin):
    """As the real server does (tests/standin/transcripts/refused.json): no reply at all."""
    with socket.create_connection(("127.0.0.1", standin.port), timeout=5) as sock:
        session = _login(sock)
        operation, status, reply = _exchange(sock, _request(128, _name("s"), session))
        assert (operation, status) == (128, 0)
        assert struct.unpack_from("<II", reply) == (0, 0)  # result section ok, stream id 0
        assert (
            _exchange(sock, _request(132, b"\x02\x01s" + struct.pack("<I", 1) + _name("t"), session))[1] == 0
        )

        good = _batch([b"hello", b"world"])
        operation, status, reply = _exchange(sock, _request(160, _send_body(bytes(good), 2), session))
        assert (operation, status) == (160, 0)
        assert struct.unpack("<IIIIQ", reply) == (1, 0, 0, 0, 0)

        flipped_payload = bytearray(good)
        flipped_payload[256 + 48] ^= 0xFF  # first byte of the first payload
        bad_batch_sum = bytearray(good)
        bad_batch_sum[40] ^= 0x01
        reserved = bytearray(good)
        reserved[256 + 40] = 1  # the first frame's reserved u64
        for corrupted, count in ((flipped_payload, 2), (bad_batch_sum, 2), (good, 3), (reserved, 2)):
            assert _no_reply(sock, _request(160, _send_body(bytes(corrupted), count), session))
        assert _exchange(sock, _request(2, b"", session, code=1))[1] == 0  # still serving

        assert _exchange(sock, _request(77, b"", session))[1] == 3  # unknown operation
        assert _exchange(sock, _request(2, b"", session, code=4242))[1] == 3  # unknown read

    assert [m.payload for m in standin.messages("s", "t")] == [b"hello", b"world"]
    assert [m.id for m in standin.messages("s", "t")] == [1000, 1001]


def test_a_frame_over_64_mib_closes_the_connection(standin):
    with socket.create_connection(("127.0.0.1", standin.port), timeout=5) as sock:
        _login(sock)
        header = bytearray(_request(160, b""))
        struct.pack_into("<I", header, 48, 64 * 1024 * 1024 + 1)
        sock.sendall(bytes(header))
        assert sock.recv(1) == b""  # closed before the body is even sent


def test_requests_before_login_are_refused(standin):
    with socket.create_connection(("127.0.0.1", standin.port), timeout=5) as sock:
        assert _exchange(sock, _request(2, b"", code=1))[1] == 0  # ping is open
        assert _exchange(sock, _request(2, b"", code=201))[1] == 40
        assert _exchange(sock, _request(160, _send_body(bytes(_batch([b"x"])), 1)))[1] == 40
