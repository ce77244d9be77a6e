"""An Iggy 0.9 server stand-in: a stand-in for tests and local use, not an Iggy server.

It speaks enough of the Iggy binary protocol (TCP) for the real ``apache-iggy==0.9.0``
Python SDK to work against it unchanged, keeps everything in memory, and lets tests
inject faults. Run it in-process (:class:`IggyStandIn`) or as a separate process
(:class:`IggyStandInProcess`, ``python -m pgsource.testkit.iggy --port N``).
"""

from .process import IggyStandInProcess
from .server import IggyStandIn, StoredMessage

__all__ = ["IggyStandIn", "IggyStandInProcess", "StoredMessage"]
