"""Leaving a process that used the Iggy SDK."""

from __future__ import annotations

import logging
import os
import sys


def exit_after_sdk(code: int) -> None:
    """Exit without finalizing the interpreter once the Iggy SDK was used.

    apache-iggy 0.9.0 may complete a future from a tokio thread while Python finalizes,
    which aborts the process (SIGABRT) after the work is done and reported: ``check``
    printed "ok" and still exited 134 about one time in seven.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)
