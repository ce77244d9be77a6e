"""Knowing that the supervisor is gone: a child whose parent died must not run on as an orphan."""

from __future__ import annotations

import os


class ParentWatch:
    """Notices that the supervisor died (our parent pid changed), as gunicorn's workers do."""

    def __init__(self) -> None:
        self.parent = os.getppid()

    def orphaned(self) -> bool:
        return os.getppid() != self.parent
