"""``Committer``: what turns acknowledged batches into durable progress; one protocol, two modes.

The outbox (``pgsource/pipeline/outbox.py``) tells a committer which batches Iggy
acknowledged; the committer moves its ``ProgressTracker``s and makes what became
committable durable:

- polling (``pgsource/polling/committer.py``): the tables' offsets, in ``state.dir``, once a
  batch's deletes/marks ran and its range is sealed against late commits;
- CDC (``pgsource/cdc/committer.py``): the replication slot, confirmed up to the end of the
  last transaction whose every message was acknowledged, by either transport.

Both count their commits the same way (``pgsource_state_offset_commits_total``) and tell
the supervisor that progress was made (a worker that dies again after progress is not
crash-looping).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable


class Committer(ABC):
    """Acks in, durable progress out."""

    def __init__(self, *, counter=None, progressed: Callable[[], None] | None = None) -> None:
        self._counter = counter  # the commits counter, labelled for this worker
        self._progressed = progressed

    @abstractmethod
    def acked(self, seq: int) -> None:
        """Iggy acknowledged batch ``seq`` (one of those this worker sent)."""

    @abstractmethod
    def commit_acknowledged(self, force: bool = False) -> None:
        """Make what is committable durable now (``force``: even if it was just done)."""

    def close(self) -> None:
        """The worker stops: write out what is committable."""
        self.commit_acknowledged(force=True)

    def _counted(self) -> None:
        """One commit more: the metric, and the supervisor's word that this worker progressed."""
        if self._counter is not None:
            self._counter.inc()
        if self._progressed is not None:
            self._progressed()
