"""Events on multiprocessing queues, pickled once by the C pickler.

The design card's ``multiprocess`` package pickles with dill, a pure-Python pickler; a
batch of a thousand messages would cost milliseconds that way. Each event is therefore
put on the queue as one ``bytes`` blob made by the standard pickle, which dill passes
through untouched.
"""

from __future__ import annotations

import pickle
import queue
from typing import Any

Empty = queue.Empty
Full = queue.Full


def put_event(channel, event: Any, should_stop=None, timeout: float = 0.2) -> bool:
    """Put ``event``, waiting while the queue is full; False if ``should_stop()`` said stop first."""
    blob = pickle.dumps(event, protocol=pickle.HIGHEST_PROTOCOL)
    while True:
        try:
            channel.put(blob, timeout=timeout)
            return True
        except Full:
            if should_stop is not None and should_stop():
                return False


def get_event(channel, timeout: float | None = None) -> Any:
    """The next event; raises ``Empty`` after ``timeout`` seconds."""
    blob = channel.get(timeout=timeout) if timeout is not None else channel.get()
    return pickle.loads(blob)
