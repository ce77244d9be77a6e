"""Golden transcripts: request and reply frames recorded from a real Iggy server.

A stand-in for tests and local use, not an Iggy server; this module is how the project
proves that the stand-in answers like the server in every case pgsource relies on.
``tests/real/record_transcripts.py`` drives the real ``apache-iggy`` SDK (and pgsource's
own send path) through a :class:`RecordingProxy` in front of a real ``iggy-server`` and
writes what crossed the wire, normalised, as JSON files under
``tests/standin/transcripts/``. ``tests/standin/test_transcripts.py`` sends the recorded
requests to the stand-in byte for byte (:func:`replay`) and compares its replies, after
the same normalisation, with the recorded ones.

One transcript is a list of connections, each a list of exchanges::

    {"what": "login, good password", "request": "<hex>", "outcome": "reply", "reply": "<hex>"}

``outcome`` is ``reply`` (one reply frame), ``no-reply`` (nothing came back within
:data:`NO_REPLY_SECONDS` and the connection stayed open), or ``closed`` (the server
closed the connection without a reply). A request too big to commit (the one over
64 MiB) is stored as ``{"generate": {"kind": "oversize", "size": N}}`` and rebuilt
at replay time by :func:`generate_request`.

Normalisation (:func:`normalise_reply`), the documented masking rule:

- Reply header: only the fields the SDK reads are kept (``size`` @48, ``command`` @60,
  ``request`` @200, ``operation`` @208, ``status`` @216; for an Eviction frame
  ``command``, the protocol window @144/@148 and ``reason`` @255, see the SDK's
  ``vsr.rs``: ``decode_response``/``decode_eviction``). Every other header byte
  (checksums, cluster, view, release, replica, the echoed client id and request
  checksum, timestamps) is zeroed.
- Login reply body: ``session`` (u64, new on every login) and the server's version
  string (a name, ``0.9.0-edge.5`` on the snapshot server) are masked: the session to
  zero, the version to ``*``.
- Stream, topic and partition records (create/get stream, create/get topic, get
  streams/topics): ``created_at`` (µs, the server's clock) zeroed.
- Poll replies: each batch's ``base_timestamp`` (the server's clock at append) and its
  ``batch_checksum`` (computed over it) zeroed.
- Cluster metadata: the node's name, IP and ports are masked (they describe where the
  server listens, which differs between the recording and the replay).

Requests are replayed as recorded except the ``session`` field (@184), which is set to
the session of the replayed login, as the SDK does after its own login.
"""

from __future__ import annotations

import json
import socket
import struct
from dataclasses import dataclass, field
from pathlib import Path

from xxhash import xxh3_64_intdigest

from . import wire
from .masking import normalise_reply
from .proxy import RecordingProxy
from .wire import frame_size, request_kind

__all__ = ["Exchange", "RecordingProxy", "Transcript", "build_login", "build_request", "exchange", "frame_size",
           "generate_request", "login_session", "normalise_reply", "replay", "request_kind", "with_session"]

NO_REPLY_SECONDS = 0.4  # how long "no reply" waits; the stand-in answers in microseconds


# -- frames -------------------------------------------------------------------------------


def with_session(request: bytes, session: int) -> bytes:
    """The request with its ``session`` field replaced (a request sent before login keeps 0)."""
    if struct.unpack_from("<Q", request, wire.REQ_SESSION_AT)[0] == 0:
        return request
    patched = bytearray(request)
    struct.pack_into("<Q", patched, wire.REQ_SESSION_AT, session)
    return bytes(patched)


def login_session(reply: bytes) -> int:
    """The session a successful login reply grants (0 for anything else)."""
    if len(reply) < wire.HEADER_SIZE + 16 or reply[wire.COMMAND_AT] != wire.COMMAND_REPLY:
        return 0
    if wire.read_u32(memoryview(reply), wire.REPLY_STATUS_AT):
        return 0
    body = memoryview(reply)[wire.HEADER_SIZE :]
    if wire.read_u32(body, 0) != 0:
        return 0
    return struct.unpack_from("<Q", body, 8)[0]


def generate_request(spec: dict, session: int = 1) -> bytes:
    """Rebuild a request too big to commit, deterministically:

    - ``{"kind": "oversize", "size": N}``: a SendMessages frame of ``N`` bytes in all
      (header included) whose body is zeros;
    - ``{"kind": "max-send", "size": N, "stream": s, "topic": t}``: a valid SendMessages
      request of exactly ``N`` bytes to partition 0 (two messages, the second padded).
    """
    size = int(spec["size"])
    if spec.get("kind") == "oversize":
        body = bytes(size - wire.HEADER_SIZE)
    elif spec.get("kind") == "max-send":
        body = _max_send_body(spec["stream"], spec["topic"], size - wire.HEADER_SIZE)
    else:
        raise ValueError(f"unknown generated request {spec!r}")
    return build_request(wire.OP_SEND_MESSAGES, body, session)


RAW_CLIENT_ID = 0x5EED  # the client id of every request built here (the server binds a session to it)


def build_request(operation: int, body: bytes, session: int = 1, code: int = 0, number: int = 1) -> bytes:
    """A request frame as the SDK builds it: a Register has request number 0; metadata ops
    and the Register carry XXH3-64 of the body as ``request_checksum``, the others 0."""
    header = bytearray(wire.HEADER_SIZE)
    struct.pack_into("<I", header, wire.SIZE_AT, wire.HEADER_SIZE + len(body))
    header[wire.COMMAND_AT] = wire.COMMAND_REQUEST
    header[wire.REQ_CLIENT_AT : wire.REQ_CLIENT_AT + 16] = RAW_CLIENT_ID.to_bytes(16, "little")
    if operation not in _UNSTAMPED:
        struct.pack_into("<Q", header, wire.REQ_CHECKSUM_AT, xxh3_64_intdigest(body))
    struct.pack_into("<Q", header, wire.REQ_REQUEST_AT, 0 if operation == wire.OP_REGISTER else number)
    header[wire.REQ_OPERATION_AT] = operation
    struct.pack_into("<Q", header, wire.REQ_SESSION_AT, 0 if operation == wire.OP_REGISTER else session)
    if operation == wire.OP_NON_REPLICATED:
        struct.pack_into("<I", header, wire.REQ_CODE_AT, code)
    return bytes(header) + body


def build_login(username: str = "iggy", password: str = "iggy") -> bytes:
    """A login request as the SDK builds it (protocol 0.11.0, sdk name "rust-sdk")."""
    body = struct.pack("<I", 11 << 10) + wire.encode_name("rust-sdk") + wire.encode_name("0.11.0")
    body += wire.encode_name(username) + bytes((len(password),)) + password.encode() + struct.pack("<I", 0)
    return build_request(wire.OP_REGISTER, body)


_UNSTAMPED = frozenset({wire.OP_NON_REPLICATED, wire.OP_SEND_MESSAGES, wire.OP_STORE_CONSUMER_OFFSET,
                        wire.OP_DELETE_CONSUMER_OFFSET})


def _max_send_body(stream: str, topic: str, body_size: int) -> bytes:
    from pgsource.encode import frames

    def body(second: int) -> bytes:
        ids, payloads = [1, 2], [b"a" * 30_000_000, b"b" * second]
        part = frames.encode_partition_frames(ids, [0, 0], payloads)[0]
        return frames.encode_send_request(stream, topic, part, 1_700_000_000_000_000)

    second = 1 + body_size - len(body(1))
    out = body(second)
    assert len(out) == body_size, (len(out), body_size)
    return out


# -- files --------------------------------------------------------------------------------


@dataclass
class Exchange:
    what: str
    request: bytes | None
    outcome: str  # "reply" | "no-reply" | "closed"
    reply: bytes | None = None
    generate: dict | None = None
    order: int = 0  # position in the whole transcript: requests of several connections interleave

    def to_json(self) -> dict:
        out: dict = {"what": self.what, "order": self.order}
        if self.generate is not None:
            out["generate"] = self.generate
        else:
            out["request"] = self.request.hex()
        out["outcome"] = self.outcome
        if self.reply is not None:
            out["reply"] = self.reply.hex()
        return out

    @classmethod
    def from_json(cls, data: dict) -> Exchange:
        request = bytes.fromhex(data["request"]) if "request" in data else None
        reply = bytes.fromhex(data["reply"]) if "reply" in data else None
        return cls(data["what"], request, data["outcome"], reply, data.get("generate"), data.get("order", 0))

    def request_bytes(self, session: int) -> bytes:
        """The request to send on a connection whose login granted ``session``."""
        if self.request is None:
            return generate_request(self.generate, session)
        return with_session(self.request, session)


@dataclass
class Transcript:
    name: str
    description: str
    connections: list[list[Exchange]] = field(default_factory=list)
    recorded_from: str = ""

    def save(self, directory: Path) -> Path:
        path = Path(directory) / f"{self.name}.json"
        data = {
            "name": self.name,
            "description": self.description,
            "recorded_from": self.recorded_from,
            "masking": "pgsource_testkit/iggy/transcript.py: normalise_reply",
            "connections": [[e.to_json() for e in exchanges] for exchanges in self.connections],
        }
        path.write_text(json.dumps(data, indent=1) + "\n")
        return path

    @classmethod
    def load(cls, path: Path) -> Transcript:
        data = json.loads(Path(path).read_text())
        connections = [[Exchange.from_json(e) for e in exchanges] for exchanges in data["connections"]]
        return cls(data["name"], data["description"], connections, data.get("recorded_from", ""))


# -- replay -------------------------------------------------------------------------------


def exchange(sock: socket.socket, request: bytes, no_reply_seconds: float = NO_REPLY_SECONDS) -> tuple[str, bytes | None]:
    """Send one request frame; (outcome, reply frame or None) as the transcript records it."""
    try:
        sock.sendall(request)
    except OSError:
        return "closed", None
    sock.settimeout(no_reply_seconds)
    try:
        header = _read_exact(sock, wire.HEADER_SIZE)
    except TimeoutError:
        return "no-reply", None
    except (ConnectionError, EOFError, OSError):
        return "closed", None
    sock.settimeout(10)
    try:
        body = _read_exact(sock, frame_size(header) - wire.HEADER_SIZE)
    except (ConnectionError, EOFError, OSError):
        return "closed", None
    return "reply", header + body


def _read_exact(sock: socket.socket, n: int) -> bytes:
    chunks, got = [], 0
    while got < n:
        chunk = sock.recv(min(n - got, 1 << 20))
        if not chunk:
            raise EOFError("connection closed")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def replay(address: str, transcript: Transcript, no_reply_seconds: float = NO_REPLY_SECONDS) -> list[list[Exchange]]:
    """Send every recorded request to ``address`` in the recorded order (each connection on
    its own socket, opened at its first request); what came back, normalised, per connection."""
    host, port = address.rsplit(":", 1)
    steps = sorted(
        ((item.order, index, position) for index, items in enumerate(transcript.connections)
         for position, item in enumerate(items)),
    )
    out: list[list[Exchange]] = [[] for _ in transcript.connections]
    sockets: dict[int, socket.socket] = {}
    sessions: dict[int, int] = {}
    closed: set[int] = set()
    try:
        for _, index, position in steps:
            if index in closed:
                continue
            item = transcript.connections[index][position]
            if index not in sockets:
                sockets[index] = socket.create_connection((host, int(port)), timeout=10)
            request = item.request_bytes(sessions.get(index, 0))
            outcome, reply = exchange(sockets[index], request, no_reply_seconds)
            if reply is not None and request[wire.REQ_OPERATION_AT] == wire.OP_REGISTER:
                sessions[index] = login_session(reply)
            normalised = normalise_reply(request, reply) if reply is not None else None
            out[index].append(Exchange(item.what, item.request, outcome, normalised, item.generate, item.order))
            if outcome == "closed":
                closed.add(index)
    finally:
        for sock in sockets.values():
            sock.close()
    return out
