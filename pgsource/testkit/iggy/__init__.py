"""An Iggy 0.9 server stand-in: a stand-in for tests and local use, not an Iggy server.

It speaks enough of the Iggy binary protocol (TCP) for the real ``apache-iggy==0.9.0``
Python SDK to work against it unchanged, keeps everything in memory, and lets tests
inject faults. Run it in-process (:class:`IggyStandIn`) or as a separate process
(:class:`IggyStandInProcess`, ``python -m pgsource.testkit.iggy --port N``).

What the SDK does, as seen from here (wheel 0.9.0):

- It resolves balanced and key partitioning itself and always sends a partition id;
  ids are 0-based, balanced starts at 0 and goes round-robin per client.
- It orders user headers by key, sends a plain Python ``float`` as Float32 and a
  small ``int`` as UnsignedInt8.
- ``IggyClient`` has no typed get/store/delete consumer offset method; use
  ``send_binary_request(120 | 121 | 122, body)`` or auto_commit polls.
- After a dropped connection the next send fails with ``Disconnected`` (it is not
  replayed) and the one after redials and logs in again; reads and pings redial
  transparently. After a failed redial (``Cannot establish connection``) sends keep
  failing ``Disconnected`` until a ping, a read or the 5 s heartbeat redials.
- Consumer groups are not implemented here (``InvalidCommand``).
"""

from .process import IggyStandInProcess
from .server import IggyStandIn, StoredMessage

__all__ = ["IggyStandIn", "IggyStandInProcess", "StoredMessage"]
