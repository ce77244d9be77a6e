"""What the CDC tests share: a config, waiting for the slot, reading what Iggy and the slot hold."""

from __future__ import annotations

import json

from tests.support import query, wait_for, write_config

TRANSPORTS = ["sql", "replication"]


def cdc_config(tmp_path, dsn, iggy, transport, *, sections: dict | None = None, **source):
    return write_config(tmp_path, dsn, iggy.address, source={"mode": "cdc", "cdc_transport": transport, **source},
                        **(sections or {}))


def wait_until_capturing(dsn: str, transport: str, slots: int = 1) -> None:
    """The slot(s) exist (what commits after is captured); the streaming transport also holds them."""
    streaming = transport == "replication"  # only it holds the slot: active; the sql transport, any slot
    wait_for(lambda: query(dsn, "SELECT count(*) FROM pg_replication_slots WHERE active OR %s", (not streaming,))[0][0] == slots, 60,
             message=f"{slots} replication slot(s)")


def confirmed_lsn(dsn: str, slot: str = "iggy_slot") -> int:
    """The slot's confirmed_flush_lsn as a number (0 when the slot is missing)."""
    rows = query(dsn, "SELECT confirmed_flush_lsn - '0/0'::pg_lsn FROM pg_replication_slots WHERE slot_name = %s", (slot,))
    return int(rows[0][0]) if rows and rows[0][0] is not None else 0


def wait_slot_caught_up(dsn: str, slot: str = "iggy_slot", timeout: float = 60) -> None:
    """The slot confirmed every WAL position written so far (``pg_current_wal_lsn()`` read now):
    the service read and delivered everything committed before, so anything it would send
    extra (a repeat, a rolled-back or filtered change) has been sent by then."""
    target = int(query(dsn, "SELECT pg_current_wal_lsn() - '0/0'::pg_lsn")[0][0])
    wait_for(lambda: confirmed_lsn(dsn, slot) >= target, timeout, message=f"slot {slot} to confirm {target}")


def lsn_number(text: str) -> int:
    high, _, low = text.partition("/")
    return (int(high, 16) << 32) | int(low, 16)


def stored(iggy, topic: str, stream: str = "pg") -> list[tuple[int, dict, object]]:
    """(id, body, message) of every message of a topic, in partition and offset order."""
    if stream not in iggy.streams() or topic not in iggy.topics(stream):
        return []
    return [(m.id, json.loads(m.payload), m) for m in iggy.messages(stream, topic)]


def key_of(body: dict, key: str = "id"):
    return (body["data"] or body["old_data"] or {}).get(key)


def replay(messages: list[tuple[int, dict, object]], key: str = "id") -> dict:
    """The table a consumer rebuilds: messages in order, repeated ids dropped, SELECT/INSERT/UPDATE
    set the row, DELETE removes it."""
    seen: set[int] = set()
    rows: dict = {}
    for message_id, body, _ in messages:
        if message_id in seen:
            continue
        seen.add(message_id)
        if body["operation_type"] == "DELETE":
            rows.pop(key_of(body, key), None)
        elif body["data"] is not None:
            rows[body["data"][key]] = body["data"]
    return rows
