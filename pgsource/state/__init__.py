"""Durable progress: polling offsets and CDC LSNs, moved forward only after Iggy acknowledged."""

from pgsource.state.store import FileOffsetStore, Offset

__all__ = ["FileOffsetStore", "Offset"]
