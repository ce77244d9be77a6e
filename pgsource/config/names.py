"""How a table is named in the configuration, in state keys and in the ``workers`` mapping.

One rule, so that ``schema.table`` and a table whose name holds a dot never meet:

- ``{schema: ..., name: ...}`` names a table exactly, whatever characters it holds;
- a string is ``table`` (in ``public``) or ``schema.table``: an unquoted dot always
  separates the schema from the table. A part may be written in double quotes, as in
  SQL, to hold a dot or a quote (``'"a.b"'`` is ``public."a.b"``; ``""`` is a quote inside);
  unlike SQL, an unquoted part keeps its case. More than one unquoted dot is refused.

``reference`` renders a table back in that syntax: bare ``name`` in ``public``, else
``schema.name``, a part quoted only when it holds a dot or a quote. For every table
without such characters it is exactly the old ``schema.name`` text, so existing state
files and mappings keep their keys.
"""

from __future__ import annotations

PUBLIC = "public"


def parse_table_reference(text: str) -> tuple[str, str]:
    """``(schema, name)`` of a table written as a string; ValueError saying why not."""
    parts: list[str] = []
    pos = 0
    while True:
        if text.startswith('"', pos):
            end = pos + 1
            chars: list[str] = []
            while True:
                close = text.find('"', end)
                if close < 0:
                    raise ValueError(f"{text!r}: a quoted name is not closed")
                chars.append(text[end:close])
                if text.startswith('"', close + 1):  # "" is a quote inside the name
                    chars.append('"')
                    end = close + 2
                    continue
                pos = close + 1
                break
            parts.append("".join(chars))
        else:
            dot = text.find(".", pos)
            end = len(text) if dot < 0 else dot
            part = text[pos:end]
            if '"' in part:
                raise ValueError(f"{text!r}: a quote may only open or close a quoted name")
            parts.append(part)
            pos = end
        if pos == len(text):
            break
        if text[pos] != ".":
            raise ValueError(f"{text!r}: a quoted name must be followed by '.' or end the string")
        pos += 1
    if len(parts) > 2:
        raise ValueError(
            f"{text!r}: a dotted string is schema.table; for a name that holds a dot write"
            f" {{schema: ..., name: ...}} (or quote it: schema.\"a.b\")"
        )
    if any(not part for part in parts):
        raise ValueError(f"{text!r}: empty schema or table name")
    return (PUBLIC, parts[0]) if len(parts) == 1 else (parts[0], parts[1])


def quote_part(part: str) -> str:
    """A schema or table name as the reference syntax writes it (quoted only when needed)."""
    if part and "." not in part and '"' not in part:
        return part
    return '"' + part.replace('"', '""') + '"'


def table_reference(schema: str, name: str) -> str:
    """The unambiguous string of a table: what state keys and the ``workers`` mapping use."""
    return quote_part(name) if schema == PUBLIC else f"{quote_part(schema)}.{quote_part(name)}"


def message_name(schema: str, name: str) -> str:
    """``table_name`` in messages: the names PostgreSQL stores, unquoted, ``schema.`` outside public."""
    return name if schema == PUBLIC else f"{schema}.{name}"
