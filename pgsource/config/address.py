"""Where Iggy listens: the one grammar of ``iggy.address`` (and of ``pgsource demo --iggy``).

Accepted: ``host:port``, where host is an IPv4 address or a host name
(``127.0.0.1:8090``, ``iggy.example.com:8090``), and ``[v6-address]:port`` (``[::1]:8090``).
Refused, each with one line that says the expected form: a URL (``http://...``: the SDK
speaks Iggy's TCP protocol, not HTTP), a missing port, a bare IPv6 address (``::1:8090``
cannot be split into address and port), a port outside 1-65535, anything else.

``iggy.address`` may also be a list of seed nodes (a cluster's): each element is parsed with ``parse_address``
(the first one's host is then the default ``iggy.tls.domain``).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

EXPECTED = "host:port, [v6-address]:port or hostname:port (e.g. 127.0.0.1:8090, [::1]:8090, iggy.example.com:8090)"
_HOST_NAME = re.compile(r"(?=.{1,253}$)[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,62})(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,62}))*\.?")
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


@dataclass(frozen=True)
class Address:
    """One Iggy server address: ``host`` without brackets (an IPv6 address is bare here)."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_address(text: str) -> Address:
    """``text`` as an :class:`Address`; ValueError with one line naming the expected form."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"give {EXPECTED}")
    if _URL.match(text):
        bare = _URL.sub("", text).split("/", 1)[0]
        raise ValueError(f"{text!r} is a URL; write {EXPECTED} (here: {bare!r}), without a scheme")
    if text.startswith("["):
        host, sep, port = text[1:].partition("]")
        if not _is_ipv6(host):
            raise ValueError(f"{text!r}: [...] holds an IPv6 address; write {EXPECTED}")
        if not sep or not port.startswith(":"):
            raise ValueError(f"{text!r} is not host:port: the port is missing (e.g. [{host}]:8090)")
        return Address(host, _port(text, port[1:]))
    if _is_ipv6(text) or text.count(":") > 1:
        raise ValueError(f"{text!r} looks like a bare IPv6 address; put it in brackets with the port:"
                         f" [v6-address]:port (e.g. [::1]:8090)")
    host, sep, port = text.rpartition(":")
    if not sep:
        raise ValueError(f"{text!r} is not host:port: the port is missing (e.g. {text}:8090)")
    if not host or not _is_host(host):
        raise ValueError(f"{text!r}: {host!r} is not a host name or IPv4 address; write {EXPECTED}")
    return Address(host, _port(text, port))


def _port(text: str, port: str) -> int:
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r}: the port must be a number from 1 to 65535; write {EXPECTED}")
    return int(port)


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def _is_host(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return bool(_HOST_NAME.fullmatch(text)) and not text.replace(".", "").isdigit()
    return True
