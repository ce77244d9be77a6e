"""Record the golden transcripts from a real iggy-server (one fresh instance per transcript).

    python -m tests.real.record_transcripts --server /path/to/iggy-server [--out DIR]

Each transcript drives the real ``apache-iggy`` SDK (and pgsource's own SendMessages
bodies, sent with the SDK's ``send_binary_request`` as the publisher does) through a
``RecordingProxy``; what the SDK cannot send (a refused batch on a fresh connection, a
request over 64 MiB) goes through the same proxy on a raw socket. The default output is
``tests/standin/transcripts``, which ``tests/standin/test_transcripts.py`` replays
against the stand-in in CI. ``tests/real/test_transcripts_current.py`` records again into
a temporary directory and compares, so a server that changed is noticed.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import socket
import struct
import sys
import time
from pathlib import Path

import apache_iggy as iggy

from pgsource.encode import frames
from pgsource_testkit.iggy import transcript as tr
from pgsource_testkit.iggy import wire
from tests.real.server import IggyServerProcess

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE.parent / "standin" / "transcripts"
SOURCE = "apache/iggy cc269ef70ef2d78af5102f5560b5b03c9dd81401 (2026-08-21), server 0.9.0-edge.5"
ORIGIN = 1_700_000_000_000_000  # a fixed origin timestamp, so a replayed send is byte for byte the recorded one
RECORD_NO_REPLY = 2.0  # seconds the real server gets before "no reply" is recorded
STREAM = "transcripts"
CREATE_TOPIC_CODE = 302  # the SDK maps the legacy code to the CreateTopic operation (132)
GET_STREAM_CODE = 200


class Recording:
    """Steps of one transcript: SDK calls and raw exchanges, all through one proxy.

    Frames are labelled by time: each frame takes the label of the last step begun
    before it arrived at the proxy.
    """

    def __init__(self, server: IggyServerProcess, name: str, description: str) -> None:
        self.server = server
        self.name = name
        self.description = description
        self.proxy = tr.RecordingProxy(server.address).start()
        self.labels: list[tuple[float, str]] = []
        self.generated: dict[int, dict] = {}  # request size -> the spec that rebuilds it
        self.raw: list[socket.socket] = []

    def client(self) -> iggy.IggyClient:
        return iggy.IggyClient(iggy.TcpConfig(
            server_address=self.proxy.address,
            auto_login=iggy.AutoLogin.disabled(),
            reconnection=iggy.TcpReconnectionConfig(max_retries=0, interval=dt.timedelta(milliseconds=100)),
            heartbeat_interval=dt.timedelta(seconds=3600),  # no pings in the middle of a transcript
        ))

    async def step(self, label: str, awaitable, expect_error: bool = False, timeout: float = 10.0):
        self.labels.append((time.monotonic(), label))
        try:
            result = await asyncio.wait_for(awaitable, timeout)
        except (RuntimeError, asyncio.TimeoutError) as exc:
            if not expect_error:
                raise
            result = exc
        time.sleep(0.05)  # the proxy forwarded the reply before the SDK saw it; let it file the frame
        return result

    def raw_connection(self) -> socket.socket:
        known = len(self.proxy.connections)
        sock = socket.create_connection(("127.0.0.1", self.proxy.port), timeout=10)
        self.raw.append(sock)
        deadline = time.monotonic() + 5
        while len(self.proxy.connections) <= known and time.monotonic() < deadline:
            time.sleep(0.01)
        return sock

    def raw_step(self, sock: socket.socket, label: str, request: bytes, generate: dict | None = None):
        self.labels.append((time.monotonic(), label))
        if generate is not None:
            self.generated[len(request)] = generate
        outcome = tr.exchange(sock, request, RECORD_NO_REPLY)
        time.sleep(0.05)
        return outcome

    def finish(self, out: Path) -> Path:
        for sock in self.raw:
            sock.close()
        time.sleep(0.2)
        self.proxy.stop()
        connections: list[list[tr.Exchange]] = []
        for index, frames_of in enumerate(self.proxy.connections):
            exchanges: list[tr.Exchange] = []
            position = 0
            while position < len(frames_of):
                direction, frame, at = frames_of[position]
                if direction != "request":
                    raise RuntimeError(f"{self.name}: a reply without a request at frame {position} of connection {index}")
                label = next((lab for t, lab in reversed(self.labels) if t <= at), "?")
                generate = self.generated.get(frame) if isinstance(frame, int) else None
                if isinstance(frame, int) and generate is None:
                    raise RuntimeError(f"{self.name}: a request of {frame} bytes was not generated")
                following = frames_of[position + 1] if position + 1 < len(frames_of) else None
                stored = None if generate else frame
                if following is not None and following[0] == "reply":
                    reply = tr.normalise_reply(_request_of(frame, generate), following[1])
                    exchanges.append(tr.Exchange(label, stored, "reply", reply, generate, at))
                    position += 2
                else:
                    closed = following is None and self.proxy.closed_by_server[index]
                    exchanges.append(tr.Exchange(label, stored, "closed" if closed else "no-reply", None, generate, at))
                    position += 1
            connections.append(exchanges)
        times = sorted(item.order for items in connections for item in items)
        for items in connections:
            for item in items:
                item.order = times.index(item.order)  # the arrival time becomes a rank
        transcript = tr.Transcript(self.name, self.description, connections, recorded_from=SOURCE)
        return transcript.save(out)


def _request_of(frame, generate: dict | None) -> bytes:
    return tr.generate_request(generate, 1) if generate is not None else frame


# -- request builders --------------------------------------------------------------------


def raw_login(password: str = "iggy", user: str = "iggy") -> bytes:
    return tr.build_login(user, password)


request = tr.build_request


def send_body(stream: str, topic: str, partition: int, ids, payloads, headers=None) -> bytes:
    part = frames.encode_partition_frames(list(ids), [partition] * len(ids), list(payloads), headers)[0]
    return frames.encode_send_request(stream, topic, part, ORIGIN)


def create_topic_body(stream: str, topic: str, partitions: int, options: bytes = b"") -> bytes:
    return b"\x02" + bytes((len(stream),)) + stream.encode() + struct.pack("<I", partitions) + wire.encode_name(topic) + options


MESSAGE_EXPIRY_HOUR = b"\x02" + struct.pack("<I", 14) + b"message_expiry" + b"\x0c" + struct.pack("<IQ", 8, 3_600_000_000)
WHEEL_TOPIC_OPTIONS = wire.encode_string_pairs({"consumer_offset_durability": "replicated", "durability": "replicated"})


def refused(body: bytes, how: str) -> bytes:
    """A SendMessages body the server refuses at admission."""
    meta_len = int.from_bytes(body[:4], "little")
    batch = 4 + meta_len
    out = bytearray(body)
    if how == "frame checksum":
        out[batch + 256 + 48] ^= 0xFF  # first payload byte: the frame's checksum no longer matches
    elif how == "batch checksum":
        out[batch + 40] ^= 0x01
    elif how == "count":
        struct.pack_into("<I", out, batch - 4, int.from_bytes(out[batch - 4 : batch], "little") + 1)  # metadata count
    elif how == "reserved":
        out[batch + 256 + 40] = 1  # the first frame's reserved u64
    else:
        raise ValueError(how)
    return bytes(out)


# -- the transcripts ------------------------------------------------------------------------


async def record_login(rec: Recording) -> None:
    client = rec.client()
    await rec.step("connect", client.connect())
    await rec.step("login, good password", client.login_user("iggy", "iggy"))
    await rec.step("ping", client.ping())
    await rec.step("logout", client.logout_user())
    bad = rec.client()
    await rec.step("connect", bad.connect())
    await rec.step("login, wrong password (an Eviction frame)", bad.login_user("iggy", "wrong"), expect_error=True)
    sock = rec.raw_connection()
    rec.raw_step(sock, "login of an unknown user", raw_login("x", user="nobody"))
    rec.raw_step(sock, "ping after the Eviction: the connection stays open", request(wire.OP_NON_REPLICATED, b"", 0, code=1))
    rec.raw_step(sock, "a request that needs a session, on the evicted connection",
                 request(wire.OP_NON_REPLICATED, b"", 0, code=201))
    rec.raw_step(sock, "login with the right password on the same connection", raw_login())


async def record_streams(rec: Recording) -> None:
    client = rec.client()
    await rec.step("connect", client.connect())
    await rec.step("login", client.login_user("iggy", "iggy"))
    await rec.step("get streams, none", client.get_streams())
    await rec.step("create stream, new", client.create_stream(STREAM))
    await rec.step("create stream, already exists", client.create_stream(STREAM), expect_error=True)
    await rec.step("get stream, present", client.get_stream(STREAM))
    await rec.step("get stream, missing", client.get_stream("missing"))
    await rec.step("get streams", client.get_streams())


async def record_topics(rec: Recording) -> None:
    client = rec.client()
    await rec.step("connect", client.connect())
    await rec.step("login", client.login_user("iggy", "iggy"))
    await rec.step("create stream", client.create_stream(STREAM))
    await rec.step("create topic with the wheel's options (refused by this server)",
                   client.create_topic(STREAM, "t", 3), expect_error=True)
    await rec.step("create topic, new, no options",
                   client.send_binary_request(CREATE_TOPIC_CODE, create_topic_body(STREAM, "t", 3)))
    await rec.step("create topic, already exists",
                   client.send_binary_request(CREATE_TOPIC_CODE, create_topic_body(STREAM, "t", 1)), expect_error=True)
    await rec.step("create topic, missing stream",
                   client.send_binary_request(CREATE_TOPIC_CODE, create_topic_body("missing", "t", 1)), expect_error=True)
    await rec.step("create topic, an unknown option key",
                   client.send_binary_request(CREATE_TOPIC_CODE, create_topic_body(
                       STREAM, "u", 1, wire.encode_string_pairs({"no_such_option": "1"}))), expect_error=True)
    await rec.step("create topic with a catalog option (message_expiry 1 h): echoed, not derived",
                   client.send_binary_request(CREATE_TOPIC_CODE, create_topic_body(STREAM, "e", 1, MESSAGE_EXPIRY_HOUR)))
    await rec.step("get topic, present", client.get_topic(STREAM, "t"))
    await rec.step("get topic, missing topic", client.get_topic(STREAM, "missing"))
    await rec.step("get topic, missing stream", client.get_topic("missing", "t"))
    await rec.step("get stream with its topic", client.get_stream(STREAM))
    await rec.step("get topics", client.get_topics(STREAM))


async def _stream_and_topic(rec: Recording, client, partitions: int = 3) -> None:
    await rec.step("connect", client.connect())
    await rec.step("login", client.login_user("iggy", "iggy"))
    await rec.step("create stream", client.create_stream(STREAM))
    await rec.step("create topic", client.send_binary_request(CREATE_TOPIC_CODE, create_topic_body(STREAM, "t", partitions)))


CDC_HEADERS = {"table": "public.orders", "operation": "UPDATE", "lsn": "0/16B3748", "xid": "771"}


async def record_send(rec: Recording) -> None:
    client = rec.client()
    await _stream_and_topic(rec, client)
    code = frames.SEND_MESSAGES_CODE
    await rec.step("send to partition 0, ok", client.send_binary_request(
        code, send_body(STREAM, "t", 0, [1, 2, 3], [b'{"id":1}', b'{"id":2}', b'{"id":3}'], [CDC_HEADERS, None, CDC_HEADERS])))
    await rec.step("send to partition 0 again, ok (base offset 3)", client.send_binary_request(
        code, send_body(STREAM, "t", 0, [4], [b"x" * 300])))
    await rec.step("send to partition 2, ok", client.send_binary_request(code, send_body(STREAM, "t", 2, [5], [b"five"])))
    await rec.step("get topic after sends (sizes, counts, offsets)", client.get_topic(STREAM, "t"))
    await rec.step("get stream after sends", client.get_stream(STREAM))
    await rec.step("send to a missing stream", client.send_binary_request(
        code, send_body("missing", "t", 0, [9], [b"x"])), expect_error=True)
    await rec.step("send to a missing topic", client.send_binary_request(
        code, send_body(STREAM, "missing", 0, [9], [b"x"])), expect_error=True)
    await rec.step("send to a missing partition", client.send_binary_request(
        code, send_body(STREAM, "t", 7, [9], [b"x"])), expect_error=True)
    await rec.step("send with the SDK's send_messages, ok", client.send_messages(
        STREAM, "t", 1, [iggy.SendMessage(b"sdk", id=77)]))


async def record_refused(rec: Recording) -> None:
    client = rec.client()
    await _stream_and_topic(rec, client)
    good = send_body(STREAM, "t", 0, [1, 2], [b"one", b"two"])
    sock = rec.raw_connection()
    session = _raw_session(rec, sock)
    rec.raw_step(sock, "the same batch, not corrupted, on a connection like the others: ok",
                 request(wire.OP_SEND_MESSAGES, good, session))
    for how in ("frame checksum", "batch checksum", "count", "reserved"):
        sock = rec.raw_connection()
        session = _raw_session(rec, sock)
        rec.raw_step(sock, f"send with a bad {how}: refused at admission, no reply",
                     request(wire.OP_SEND_MESSAGES, refused(good, how), session))
        rec.raw_step(sock, "ping on the same connection afterwards", request(wire.OP_NON_REPLICATED, b"", session, code=1))
        rec.raw_step(sock, "a good batch on the same connection afterwards",
                     request(wire.OP_SEND_MESSAGES, good, session, number=2))
    await rec.step("only the good batches were stored", client.get_topic(STREAM, "t"))


def _raw_session(rec: Recording, sock: socket.socket) -> int:
    outcome, reply = rec.raw_step(sock, "login", raw_login())
    return tr.login_session(reply)


async def record_oversize(rec: Recording) -> None:
    client = rec.client()
    await _stream_and_topic(rec, client, partitions=1)
    sock = rec.raw_connection()
    session = _raw_session(rec, sock)
    spec = {"kind": "max-send", "size": frames.MAX_REQUEST_BYTES, "stream": STREAM, "topic": "t"}
    rec.raw_step(sock, "a valid send of exactly 64 MiB (request header included): ok",
                 tr.generate_request(spec, session), generate=spec)
    spec = {"kind": "oversize", "size": frames.MAX_REQUEST_BYTES + 1}
    rec.raw_step(sock, "a request of 64 MiB + 1 byte: the server closes the connection",
                 tr.generate_request(spec, session), generate=spec)
    await rec.step("only the 64 MiB send was stored", client.get_topic(STREAM, "t"))


async def record_poll(rec: Recording) -> None:
    client = rec.client()
    await _stream_and_topic(rec, client)
    await rec.step("send three messages", client.send_binary_request(frames.SEND_MESSAGES_CODE, send_body(
        STREAM, "t", 0, [11, 12, 13], [b'{"a":1}', b'{"b":2}', b"\x00\xff"], [CDC_HEADERS, None, {"k": b"\x01"}])))
    await rec.step("send two more", client.send_binary_request(frames.SEND_MESSAGES_CODE, send_body(
        STREAM, "t", 0, [14, 15], [b"four", b"five"])))
    consumer = iggy.Consumer.Single("pgsource-tests")

    def poll(partition: int, strategy, count: int = 100, stream: str = STREAM, topic: str = "t"):
        return client.poll_messages(stream, topic, consumer=consumer, polling_strategy=strategy, count=count,
                                    auto_commit=False, partition_id=partition)

    await rec.step("poll an empty partition", poll(2, iggy.PollingStrategy.First()))
    await rec.step("poll a full partition from the first offset", poll(0, iggy.PollingStrategy.First()))
    await rec.step("poll from offset 1, two messages (inside the first batch)", poll(0, iggy.PollingStrategy.Offset(1), 2))
    await rec.step("poll from offset 3 (the second batch)", poll(0, iggy.PollingStrategy.Offset(3)))
    await rec.step("poll past the end", poll(0, iggy.PollingStrategy.Offset(5)))
    await rec.step("poll the last two", poll(0, iggy.PollingStrategy.Last(), 2))
    await rec.step("poll a missing topic", poll(0, iggy.PollingStrategy.First(), topic="missing"), expect_error=True)
    await rec.step("poll a missing stream", poll(0, iggy.PollingStrategy.First(), stream="missing"), expect_error=True)
    await rec.step("poll a missing partition", poll(7, iggy.PollingStrategy.First()), expect_error=True)


async def record_digits(rec: Recording) -> None:
    client = rec.client()
    await rec.step("connect", client.connect())
    await rec.step("login", client.login_user("iggy", "iggy"))
    await rec.step("create stream named 'other' (id 0)", client.create_stream("other"))
    await rec.step("create stream named '2024' (a name: id 1)", client.create_stream("2024"))
    await rec.step("get stream '2024' through the SDK: sent as numeric id 2024, not found", client.get_stream("2024"))
    await rec.step("get stream '1' through the SDK: numeric id 1, the stream named '2024'", client.get_stream("1"))
    await rec.step("get stream by the string identifier '2024': found",
                   client.send_binary_request(GET_STREAM_CODE, b"\x02\x042024"))
    await rec.step("create topic named '7' in stream '2024'",
                   client.send_binary_request(CREATE_TOPIC_CODE, create_topic_body("2024", "7", 1)))
    await rec.step("get topic '7' through the SDK: numeric ids, not found", client.get_topic("2024", "7"))


TRANSCRIPTS = {
    "login": (record_login, "login with a good and a wrong password, ping, logout, an unknown user"),
    "streams": (record_streams, "create stream new and existing, get stream present and missing, get streams"),
    "topics": (record_topics, "create topic new, existing, in a missing stream, with refused options; get topic present and missing"),
    "send": (record_send, "SendMessages as pgsource encodes it: ok replies, missing stream/topic/partition"),
    "refused": (record_refused, "batches the server refuses at admission get no reply"),
    "oversize": (record_oversize, "a 64 MiB request is accepted, one byte more closes the connection (both generated)"),
    "poll": (record_poll, "poll of an empty and of a full partition, offsets inside batches, missing stream/topic/partition"),
    "digits": (record_digits, "a digits-only name: the SDK sends it as a numeric identifier"),
}


def record(binary: str, out: Path, names: list[str] | None = None) -> list[Path]:
    """Record the transcripts (each on a fresh server instance) into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, (scenario, description) in TRANSCRIPTS.items():
        if names and name not in names:
            continue
        with IggyServerProcess(binary) as server:
            rec = Recording(server, name, description)
            asyncio.run(scenario(rec))
            written.append(rec.finish(out))
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.real.record_transcripts", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", default=os.environ.get("PGSOURCE_TEST_IGGY_SERVER"), help="path to iggy-server")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("names", nargs="*", help=f"only these: {', '.join(TRANSCRIPTS)}")
    args = parser.parse_args(argv)
    if not args.server:
        parser.error("--server (or PGSOURCE_TEST_IGGY_SERVER) is required")
    for path in record(args.server, args.out, args.names):
        print(path)
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    os._exit(code)  # apache-iggy 0.9.0 may abort the interpreter's teardown (see pgsource.sink.sockets)
