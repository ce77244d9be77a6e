"""One backfill chunk between its watermarks: the DBLog method, as a state machine without I/O.

The worker reads a chunk of the table in key order between two watermarks it writes into
the WAL (``pg_logical_emit_message(false, 'pgsource.watermark', …)``): low, the chunk's
SELECT, high. The stream brings the watermarks back in WAL order, among the changes:

- a transaction that committed before the low watermark is in the stream before it, and
  its effect is in the chunk's rows; the chunk's rows go out after it: they are newer;
- a transaction that committed between the watermarks is in the stream between them: the
  chunk's row of a key it changed may be older or newer than that change, so the row is
  dropped (the change itself carries the row's state);
- a transaction that committed after the high watermark follows it in the stream, and
  the chunk's rows are sent at the high watermark, before it.

So the rows left at the high watermark are sent there, and no snapshot row ever
overwrites a newer change. Memory: one chunk. Keys are the key columns' text, as both
pgoutput and the chunk's SELECT (``::text``) print them.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from enum import Enum
from typing import Generic, TypeVar

Row = TypeVar("Row")


class WindowState(str, Enum):
    READ = "read"  # the chunk was read; its low watermark has not come back yet
    OPEN = "open"  # between the watermarks: changes of the chunk's keys drop their rows
    CLOSED = "closed"  # the high watermark came back: the rows left were handed out


@dataclass(frozen=True)
class Watermark:
    """What a watermark message holds: whose (slot), which chunk attempt (token), low or high."""

    slot: str
    token: str
    mark: str  # "low" or "high"

    def to_json(self) -> str:
        return json.dumps({"slot": self.slot, "token": self.token, "mark": self.mark}, separators=(",", ":"))

    @classmethod
    def from_content(cls, content: bytes) -> Watermark | None:
        """The watermark, or None for content that is not one (another writer's message)."""
        try:
            raw = json.loads(content)
            return cls(str(raw["slot"]), str(raw["token"]), str(raw["mark"]))
        except (ValueError, KeyError, TypeError):
            return None


def new_token() -> str:
    """A chunk attempt's token: watermarks of an attempt before a crash, replayed, match nothing."""
    return secrets.token_hex(8)


@dataclass
class ChunkWindow(Generic[Row]):
    """One chunk's rows (key → row, in key order) and where its watermarks stand."""

    token: str
    rows: dict[tuple[str, ...], Row]
    state: WindowState = WindowState.READ
    dropped: list[tuple[str, ...]] = field(default_factory=list)  # keys whose rows a change replaced

    def watermark(self, mark: Watermark) -> list[Row] | None:
        """Feed a watermark of this slot. At this window's high one: the rows to send now."""
        if mark.token != self.token or self.state is WindowState.CLOSED:
            return None  # an earlier attempt's, replayed after a restart
        if mark.mark == "low":
            self.state = WindowState.OPEN
            return None
        if mark.mark == "high":
            if self.state is not WindowState.OPEN:
                raise ValueError(f"chunk {self.token}: its high watermark came back before its low one")
            self.state = WindowState.CLOSED
            rows, self.rows = list(self.rows.values()), {}
            return rows
        return None

    def changed(self, key: tuple[str, ...], unseen: bool = False) -> None:
        """A change of the table, for ``key``, read from the stream (INSERT, UPDATE's old and new key, DELETE);
        ``unseen``: by a transaction the chunk's snapshot did not see (committed before the low watermark
        but not yet visible: ``pgsource/pg/visibility.py``), which drops the row before the low one too."""
        opened = self.state is WindowState.OPEN or (unseen and self.state is WindowState.READ)
        if opened and self.rows.pop(key, None) is not None:
            self.dropped.append(key)

    def truncated(self) -> None:
        """The table was truncated between the watermarks: none of the chunk's rows is current."""
        if self.state is WindowState.OPEN:
            self.dropped.extend(self.rows)
            self.rows.clear()

    @property
    def closed(self) -> bool:
        return self.state is WindowState.CLOSED
