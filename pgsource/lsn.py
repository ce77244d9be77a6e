"""A CDC position (an LSN) as PostgreSQL prints and parses it: ``16/B374D848``.

One definition for the decoder, the replication code, the state records and the admin
commands alike.
"""

from __future__ import annotations


def parse_lsn(text: str) -> int:
    high, _, low = text.partition("/")
    return (int(high, 16) << 32) | int(low, 16)


def format_lsn(lsn: int) -> str:
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"
