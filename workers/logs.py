"""One logging set-up for every process: time, process name, level, message."""

from __future__ import annotations

import logging
import os
import sys


def setup_logging(level: str | None = None) -> None:
    level = (level or os.environ.get("PGSOURCE_LOG_LEVEL") or "INFO").upper()
    logging.basicConfig(
        level=level,
        stream=sys.stderr,
        format="%(asctime)s %(processName)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )
