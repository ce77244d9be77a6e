"""Column names as messages spell them."""

from __future__ import annotations

import re

_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
_SEPARATORS = re.compile(r"[^0-9A-Za-z]+")


def to_snake_case(name: str) -> str:
    """``userID`` → ``user_id``, ``HTTPStatus`` → ``http_status``, ``Order Items`` → ``order_items``."""
    spaced = _BOUNDARY.sub("_", name)
    return _SEPARATORS.sub("_", spaced).strip("_").lower() or name


def output_names(names: list[str], snake_case: bool) -> list[str]:
    """The keys of ``data``; two columns that snake-case to the same key keep their own names."""
    if not snake_case:
        return list(names)
    converted = [to_snake_case(name) for name in names]
    return [new if converted.count(new) == 1 else old for old, new in zip(names, converted)]
