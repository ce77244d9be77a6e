"""Retrying a statement that failed for a reason that may pass (a deadlock, a lock timeout...).

Only errors whose SQLSTATE says "try again" are retried: class 40 (serialization
failure, deadlock), 55P03 (lock not available), 57014 (statement cancelled, e.g. by
``statement_timeout``), classes 53 (insufficient resources) and 58 (system error). A
syntax error, a missing column or a bad value would fail the same way every time: they
are raised at once. A lost connection is not a failing statement either: it is raised at
once too, and the worker is restarted with back-off (``workers/base.py``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

import psycopg2

T = TypeVar("T")

log = logging.getLogger("pgsource.pg")

TRANSIENT_CLASSES = ("40", "53", "58")
TRANSIENT_CODES = ("55P03", "57014")


def is_transient(exc: BaseException) -> bool:
    code = getattr(exc, "pgcode", None) or ""
    return code[:2] in TRANSIENT_CLASSES or code in TRANSIENT_CODES


def with_retries(run: Callable[[], T], *, retries: int, delay: float, what: str, wait: Callable[[float], object] = time.sleep) -> T:
    """``run()``, again after ``delay``, 2×``delay``... up to ``retries`` more times on a transient error."""
    attempt = 0
    while True:
        try:
            return run()
        except psycopg2.DatabaseError as exc:
            if isinstance(exc, (psycopg2.OperationalError, psycopg2.InterfaceError)) and not is_transient(exc):
                raise
            if not is_transient(exc) or attempt >= retries:
                raise
            pause = delay * (2**attempt)
            attempt += 1
            log.warning("%s failed (%s: %s); retry %d of %d in %.1fs", what, exc.pgcode, str(exc).strip(), attempt, retries, pause)
            wait(pause)
