"""``commit_*``: durable progress, written so that a crash leaves either the old or the new record.

Each key (a table, a chunk of a table, a CDC slot) is one small JSON file holding one
typed record (``pgsource/state/records.py``), replaced by write-to-temp + fsync +
rename + fsync of the directory. The store refuses a record whose position is behind
the stored one: stored progress only moves forward (``pgsource reset`` is the one
deliberate exception, through ``force``). A file that cannot be read or parsed stops
the service with its path: starting over silently from the beginning would re-send a
table, or skip changes.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from typing import TypeVar

from pgsource.errors import StateError
from pgsource.state.records import RECORDS, Record, upgrade_legacy

R = TypeVar("R")

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")
FORMAT = 2


class FileStateStore:
    """Records under ``state.dir``, one file per key."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self._positions: dict[str, object] = {}  # key -> position_key of the newest record seen

    def path(self, key: str) -> str:
        safe = _UNSAFE.sub(lambda m: f"%{ord(m.group()):02X}", key)
        return os.path.join(self.directory, safe + ".json")

    def load(self, key: str, record_type: type[R]) -> R | None:
        """The record stored under ``key``; None when there is none; StateError naming the file if unreadable."""
        path = self.path(key)
        try:
            with open(path, encoding="utf-8") as handle:
                raw = json.load(handle)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise StateError(
                f"state file {path} is unreadable ({exc}); restore it, or remove it to start that table over"
            ) from None
        try:
            record = self._decode(key, raw)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise StateError(f"state file {path} does not hold a valid record ({exc!r}); restore or remove it") from None
        if not isinstance(record, record_type):
            raise StateError(f"state file {path} holds a {record.kind} record, expected {record_type.kind}")
        self._positions[key] = record.position_key()
        return record

    def commit(self, key: str, record: Record, *, force: bool = False) -> None:
        """Store ``record`` durably; refuses one behind the stored position unless ``force``."""
        new = record.position_key()
        if not force:
            if key not in self._positions and os.path.exists(self.path(key)):
                existing = self.load(key, type(record))
                self._positions[key] = existing.position_key() if existing is not None else None
            old = self._positions.get(key)
            if old is not None and new is not None and _behind(new, old):
                raise StateError(f"state {key}: refusing to move progress backward ({new!r} is behind {old!r})")
        body = {"format": FORMAT, "key": key, "kind": record.kind, "record": record.to_json(), "committed_at": time.time()}
        try:
            self._write(self.path(key), body)
        except OSError as exc:
            raise StateError(f"cannot write state file {self.path(key)}: {exc.strerror or exc}") from None
        self._positions[key] = new

    def delete(self, key: str) -> None:
        try:
            os.unlink(self.path(key))
        except FileNotFoundError:
            pass
        self._positions.pop(key, None)

    def keys(self) -> list[str]:
        if not os.path.isdir(self.directory):
            return []
        out = []
        for name in sorted(os.listdir(self.directory)):
            if name.endswith(".json") and not name.startswith(".tmp-"):
                path = os.path.join(self.directory, name)
                try:
                    with open(path, encoding="utf-8") as handle:
                        out.append(json.load(handle)["key"])
                except (OSError, ValueError, KeyError) as exc:
                    raise StateError(f"state file {path} is unreadable ({exc})") from None
        return out

    # -- internals -------------------------------------------------------------------------

    @staticmethod
    def _decode(key: str, raw: dict) -> Record:
        if "format" not in raw:  # the first format: {"cursor", "rows", "done", "extra"}
            return upgrade_legacy(key, raw)
        return RECORDS[raw["kind"]].from_json(raw["record"])

    def _write(self, path: str, body: dict) -> None:
        os.makedirs(self.directory, exist_ok=True)
        handle, temp = tempfile.mkstemp(prefix=".tmp-", dir=self.directory)
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as out:
                json.dump(body, out)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temp, path)
        except BaseException:
            if os.path.exists(temp):
                os.unlink(temp)
            raise
        directory = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


def _behind(new, old) -> bool:
    try:
        return new < old
    except TypeError:  # keys of different shapes (a position that gained tie-breakers): not comparable
        return False
