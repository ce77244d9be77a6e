"""Deterministic message ids and partitions, derived from a row's source position.

A re-sent message carries the id it had the first time, so consumers can drop
duplicates (the Iggy 0.9 server stores every message it is sent).

- polling: XXH3-128 of ``table NUL position values``: the same row version, the same id.
- cdc: the commit LSN in the high 64 bits, then 16 bits of the slot's hash and the
  change's 48-bit position inside its transaction: unique and ordered per slot.
"""

from __future__ import annotations

import xxhash

_SEPARATOR = "\x00"


def polling_message_id(table_name: str, cursor_values: tuple) -> int:
    text = table_name + _SEPARATOR + _SEPARATOR.join("" if v is None else v for v in cursor_values)
    return xxhash.xxh3_128_intdigest(text.encode("utf-8")) or 1  # 0 would make the SDK mint a random id


def polling_message_ids(table_name: str, values: list[str]) -> list[int]:
    """``polling_message_id`` of many rows with a one-column position (no None), in one pass."""
    prefix = table_name + _SEPARATOR
    digest = xxhash.xxh3_128_intdigest
    return [digest((prefix + value).encode("utf-8")) or 1 for value in values]


def cdc_message_id(commit_lsn: int, slot: str, position: int) -> int:
    slot_tag = xxhash.xxh32_intdigest(slot.encode("utf-8")) & 0xFFFF
    return (commit_lsn << 64) | (slot_tag << 48) | (position & 0xFFFF_FFFF_FFFF)


def key_partition(key_text: str, partitions: int) -> int:
    """The partition of a row key: stable across runs and processes (never Python's hash())."""
    if partitions == 1:
        return 0
    return xxhash.xxh32_intdigest(key_text.encode("utf-8")) % partitions


def snapshot_message_id(table_name: str, generation: int, row_json: str) -> int:
    """The id of a CDC snapshot message: XXH3-128 of table, snapshot generation and the row's JSON.

    The row's content tells versions apart: a row re-sent unchanged by a redo of the same
    snapshot keeps its id (consumers drop it), a row that changed between two attempts gets a
    new one. The generation (the LSN of the snapshot's first attempt) keeps the ids of a later
    snapshot of the same table (after a gap was accepted, or the table re-joined) apart from
    earlier ones: there, consumers may have seen changes since, and must not drop the row.
    """
    text = table_name + _SEPARATOR + format(generation, "x") + _SEPARATOR + row_json
    return xxhash.xxh3_128_intdigest(text.encode("utf-8")) or 1


def backfill_message_id(table_name: str, generation: int, key_values: tuple[str, ...]) -> int:
    """The id of a backfill row: XXH3-128 of table, the backfill's generation (its request's LSN)
    and the row's key. A chunk read again after a restart re-sends its rows under the same ids
    (any newer version of such a row reached the consumer as a change, which the stream carries
    between the two reads); another backfill of the table has another generation: new ids."""
    text = "\x00".join([table_name, "backfill", format(generation, "x"), *key_values])
    return xxhash.xxh3_128_intdigest(text.encode("utf-8")) or 1
