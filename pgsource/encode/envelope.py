"""The message body of the SPEC: ``{"table_name", "operation_type", "timestamp", "data", "old_data"}``.

``data`` and ``old_data`` arrive as JSON text already (built by PostgreSQL in polling, by
the pgoutput decoder in CDC), so the envelope is assembled by concatenation: no parse,
no Python object per column.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone

import ujson

_JSON_SPACE = re.compile(r'("(?:[^"\\]|\\.)*")|[ \t\n\r]+')


def encode_string(value: str) -> str:
    return ujson.dumps(value, ensure_ascii=False, escape_forward_slashes=False)


def iso_timestamp(moment: datetime | None = None) -> str:
    """UTC, microseconds, ``Z``: ``2024-01-15T10:30:00.123456Z``."""
    moment = moment or datetime.now(timezone.utc)
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def envelope_parts(table_name: str, operation: str, timestamp: str) -> tuple[str, str]:
    """Prefix and suffix around ``data`` for messages that carry no ``old_data``."""
    prefix = (
        '{"table_name":' + encode_string(table_name)
        + ',"operation_type":"' + operation
        + '","timestamp":"' + timestamp + '","data":'
    )
    return prefix, envelope_suffix(None)


def envelope_suffix(old_data: str | None) -> str:
    """What follows ``data``: ``old_data`` (a JSON text, or None for null) and the closing brace."""
    return ',"old_data":' + (old_data if old_data is not None else "null") + "}"


def compact_json(text: str) -> str:
    """A JSON document without insignificant whitespace, every number and key order kept as written.

    jsonb prints ``{"a": 1, "b": [1, 2]}``; a payload sent as JSON goes out compact,
    ``{"a":1,"b":[1,2]}``, without a round trip through floats or dicts.
    """
    return _JSON_SPACE.sub(lambda m: m.group(1) or "", text)
