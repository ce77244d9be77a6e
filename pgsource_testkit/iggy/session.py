"""What every request handler of the stand-in shares: the connection's login, the server's context."""

from __future__ import annotations

from dataclasses import dataclass

from .storage import Storage


@dataclass
class Credentials:
    username: str
    password: str


@dataclass
class ConnectionState:
    """Per-connection login state."""

    session: int = 0
    balanced: int = 0


@dataclass
class Context:
    """What every handler may need besides the request."""

    storage: Storage
    credentials: Credentials
    host: str
    port: int
    confirm_without_offsets: bool = False  # fault: answer sends with ``count = 0`` (committed, no offsets)
    accept_wheel_topic_options: bool = True  # False: refuse them, like the 2026-08-21 snapshot server


class NoReply(Exception):
    """The request is dropped without an answer (the server's treatment of a refused batch)."""


class Rejected(Exception):
    """Committed, with a rejection in the reply's result section (a create that found a name taken)."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code
