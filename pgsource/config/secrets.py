"""Secrets: read from files (``*_file`` keys, for Kubernetes secrets), and kept out of every log.

``source.connection_string_file`` holds the whole connection string; ``source.password_file``
the PostgreSQL password, added to the connection string; ``iggy.password_file`` the Iggy
password. Files are read once, at start (restart to rotate); one trailing newline is
dropped. ``redact`` is what the logging of every process applies to each line: DSN
passwords (``user:secret@``, ``password=secret``) and the configured secrets themselves
become ``***``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote, unquote

MASK = "***"
# Too short or too public to hunt for in free text (the default Iggy password is "iggy").
_NOT_SECRET = {"", "iggy"}
_MIN_LENGTH = 4

_URI_USERINFO = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*:)([^@\s/?#]*)(@)")
_PASSWORD_PARAM = re.compile(r"(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s&'\"]+)", re.IGNORECASE)


def read_secret_file(key: str, path: Any) -> str:
    """The text of a secret file; ValueError naming the key when it cannot be read."""
    if not isinstance(path, str) or not path:
        raise ValueError(f"{key}: a file path is expected")
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as exc:
        raise ValueError(f"{key}: cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{key}: {path} is not UTF-8 text") from None
    return text[:-2] if text.endswith("\r\n") else text[:-1] if text.endswith("\n") else text


def with_password(dsn: str, password: str) -> str:
    """``dsn`` with ``password`` added: a URI parameter or a key/value pair (libpq: the last one wins)."""
    if re.match(r"^postgres(?:ql)?://", dsn):
        return dsn + ("&" if "?" in dsn else "?") + "password=" + quote(password, safe="")
    escaped = password.replace("\\", "\\\\").replace("'", "\\'")
    return f"{dsn} password='{escaped}'".lstrip()


def resolve_source_files(raw: Any) -> Any:
    """``source:`` with ``connection_string_file``/``password_file`` read into ``connection_string``."""
    if not isinstance(raw, dict):
        return raw
    out = dict(raw)
    if out.get("connection_string_file") is not None:
        if out.get("connection_string") is not None:
            raise ValueError("connection_string, connection_string_file: give one of them, not both")
        out["connection_string"] = read_secret_file("connection_string_file", out["connection_string_file"]).strip()
    if out.get("password_file") is not None:
        password = read_secret_file("password_file", out["password_file"])
        if isinstance(out.get("connection_string"), str):
            out["connection_string"] = with_password(out["connection_string"], password)
    return out


def resolve_iggy_files(raw: Any) -> Any:
    """``iggy:`` with ``password_file`` read into ``password``."""
    if not isinstance(raw, dict) or raw.get("password_file") is None:
        return raw
    if raw.get("password") is not None:
        raise ValueError("password, password_file: give one of them, not both")
    return {**raw, "password": read_secret_file("password_file", raw["password_file"])}


def dsn_passwords(dsn: str) -> list[str]:
    """The passwords a connection string carries (URI user info, ``password=`` parameters)."""
    found = [unquote(match.group(2)) for match in _URI_USERINFO.finditer(dsn)]
    for match in _PASSWORD_PARAM.finditer(dsn):
        value = match.group(2)
        if value.startswith("'"):
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        found += [value, unquote(value)]
    return found


def secret_forms(secrets: Iterable[str]) -> list[str]:
    """Each secret as it may appear in text: raw, percent-encoded, JSON-escaped; longest first."""
    forms = set()
    for secret in secrets:
        if secret in _NOT_SECRET or len(secret) < _MIN_LENGTH:
            continue
        forms |= {secret, quote(secret, safe=""), json.dumps(secret)[1:-1]}
    return sorted(forms, key=len, reverse=True)


def redact(text: str, forms: Iterable[str] = ()) -> str:
    """``text`` with DSN passwords and the given secret forms replaced by ``***``."""
    if not text:
        return text
    for form in forms:
        if form in text:
            text = text.replace(form, MASK)
    text = _URI_USERINFO.sub(lambda m: m.group(1) + MASK + m.group(3), text)
    return _PASSWORD_PARAM.sub(lambda m: m.group(1) + MASK, text)
