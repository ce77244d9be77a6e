"""``commit_*``: offsets written so that a crash leaves either the old or the new one.

Each key (a table, a chunk of a table, a CDC slot) is one small JSON file, replaced by
write-to-temp + fsync + rename + fsync of the directory. The worker that owns a key
commits in acknowledgement order, so stored progress only moves forward.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from dataclasses import dataclass, field

from pgsource.errors import PgSourceError


@dataclass(frozen=True)
class Offset:
    """A polling position: the text of the cursor columns of the last acknowledged row.

    ``cursor`` holds as many values as were known: one (the tracking value, e.g. from
    ``initial_offset``) or all cursor columns (tracking value then tie-breakers).
    ``done`` marks a finished bulk-load chunk.
    """

    cursor: tuple[str, ...]
    rows: int = 0
    done: bool = False
    extra: dict = field(default_factory=dict, compare=False)


_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


class FileOffsetStore:
    """Offsets under ``state.dir``, one file per key."""

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def _path(self, key: str) -> str:
        safe = _UNSAFE.sub(lambda m: f"%{ord(m.group()):02X}", key)
        return os.path.join(self.directory, safe + ".json")

    def load_offset(self, key: str) -> Offset | None:
        path = self._path(key)
        try:
            with open(path, encoding="utf-8") as handle:
                raw = json.load(handle)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise PgSourceError(f"state file {path} is unreadable ({exc}); fix or remove it to start over") from None
        return Offset(tuple(raw["cursor"]), int(raw.get("rows", 0)), bool(raw.get("done", False)), raw.get("extra", {}))

    def commit_offset(self, key: str, offset: Offset) -> None:
        os.makedirs(self.directory, exist_ok=True)
        body = {
            "key": key,
            "cursor": list(offset.cursor),
            "rows": offset.rows,
            "done": offset.done,
            "extra": offset.extra,
            "committed_at": time.time(),
        }
        path = self._path(key)
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

    def keys(self) -> list[str]:
        if not os.path.isdir(self.directory):
            return []
        out = []
        for name in sorted(os.listdir(self.directory)):
            if name.endswith(".json") and not name.startswith(".tmp-"):
                with open(os.path.join(self.directory, name), encoding="utf-8") as handle:
                    out.append(json.load(handle)["key"])
        return out
