"""An Iggy 0.9 server stand-in: a stand-in for tests and local use, not an Iggy server.

It speaks enough of the Iggy binary protocol (TCP) for the real ``apache-iggy==0.9.0``
Python SDK to work against it unchanged, keeps everything in memory, and lets tests
inject faults. Run it in-process (:class:`IggyStandIn`) or as a separate process
(:class:`IggyStandInProcess`, ``python -m pgsource_testkit.iggy --port N``).

What the SDK does, as seen from here (wheel 0.9.0):

- It resolves balanced and key partitioning itself and always sends a partition id;
  ids are 0-based, balanced starts at 0 and goes round-robin per client.
- It orders user headers by key, sends a plain Python ``float`` as Float32 and a
  small ``int`` as UnsignedInt8.
- ``IggyClient`` has no typed get/store/delete consumer offset method; use
  ``send_binary_request(120 | 121 | 122, body)`` or auto_commit polls.
- After a dropped connection the next send fails with ``Disconnected`` (it is not
  replayed) and the one after redials and logs in again; reads and pings redial
  transparently. After a failed redial (``Cannot establish connection``) sends keep
  failing ``Disconnected`` until a ping, a read or the 5 s heartbeat redials.
- Consumer groups are not implemented here (``InvalidCommand``).

How it is held to the real server: golden transcripts recorded from iggy-server built
from source (apache/iggy cc269ef7, 2026-08-21, server 0.9.0-edge.5) are replayed against
it in CI (``tests/standin/test_transcripts.py``, format and masking rule in
:mod:`.transcript`): login good and bad, create/get stream and topic present, missing and
existing, sends ok and to missing targets, refused batches (no reply), the 64 MiB limit,
polls of empty and full partitions, digits-only names.

What it does not model (everything else; the list is exact for what pgsource touches):

- Persistence, segments, flushing, fsync, retention: messages live in memory,
  ``restart(keep_data=True)`` keeps that memory; ``message_expiry``/``max_topic_size``
  are reported, never enforced; ``compression_algorithm`` is reported, never applied.
- Consumer groups, users other than the one configured, permissions (it never answers
  Unauthorized), personal access tokens, the HTTP, QUIC and WebSocket transports,
  clustering and replication.
- The server's session machinery: it ignores the request number, the request checksum
  and the client id (the server drops a request whose client id is not its session's
  and dedups metadata requests by request number).
- ``count = 0`` send replies only when told (``confirm_without_offsets``); the server
  gives them for a send that commits after a purge of its topic (not reproducible on
  demand on a single node, so no transcript holds one).
- Frames whose ``offset_delta`` does not count 0, 1, 2...: the server confirms such a
  batch and then cannot poll part of it; the stand-in refuses it (no reply), so that an
  encoder bug fails the suite instead of losing messages (``tests/real/test_server_quirks.py``).
- The create-topic options apache-iggy 0.9.0 sends (``durability``,
  ``consumer_offset_durability``) are accepted, as by the released 0.9.0 server; the
  2026-08-21 snapshot refuses them (``accept_wheel_topic_options=False`` does too, for
  the transcripts). Other options are checked against the server's catalog only by key.
- Stored consumer offsets are not checked against the partition (the server refuses one
  beyond the current offset); pgsource does not use consumer offsets.
- Timing: it answers each request at once and in order (unless ``set_latency`` or
  ``freeze``); no flow control, no idle-connection handling, no heartbeat verification;
  batch timestamps come from its own clock.
"""

from .process import IggyStandInProcess
from .server import IggyStandIn, StoredMessage

__all__ = ["IggyStandIn", "IggyStandInProcess", "StoredMessage"]
