"""Byte sizes as users write them: ``1000000``, ``"512MiB"``, ``"10GB"`` (KB = 1000, KiB = 1024, as Iggy's)."""

from __future__ import annotations

import re
from decimal import Decimal

_UNITS = {
    "": 1, "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$")
_FORMS = "use e.g. 1000000, '512MiB', '10GB'"


def parse_size(value: str | int) -> int:
    """Bytes as an int; raises ValueError naming the accepted forms on anything else."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"{value!r} is not a size: {_FORMS}")
    if isinstance(value, int):
        return value
    match = _PATTERN.match(value)
    unit = match and match.group(2).lower()
    if not match or unit not in _UNITS:
        raise ValueError(f"{value!r} is not a size: {_FORMS} (units B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)")
    size = Decimal(match.group(1)) * _UNITS[unit]
    if size != size.to_integral_value():
        raise ValueError(f"{value!r} is not a whole number of bytes")
    return int(size)
