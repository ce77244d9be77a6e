"""The only package that imports the Iggy SDK (apache-iggy)."""

from pgsource.sink.iggy import IggySink

__all__ = ["IggySink"]
