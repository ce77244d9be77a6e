"""docs/configuration.md's "Configuration reference" against the configuration model, both ways, defaults included.

A key added to the model without a row (or a row left behind by a key removed, or a default
changed on one side only) fails here, so the table cannot drift from the code.
"""

from __future__ import annotations

import re
import typing
from enum import Enum

import yaml
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from pgsource.config.duration import parse_duration
from pgsource.config.model import Config
from tests.support import REPO

REQUIRED = "required"
NONE_CELLS = ("—", "(none)")
_DURATION = re.compile(r"^\d+(?:\.\d+)?(?:ms|s|m|h|d)$")


def _model_of(annotation) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_of(arg)
        if found:
            return found
    return None


def _is_list(annotation) -> bool:
    return typing.get_origin(annotation) is list or any(typing.get_origin(a) is list for a in typing.get_args(annotation))


def model_keys(model: type[BaseModel] = Config, prefix: str = "") -> dict[str, object]:
    """Every leaf key, dotted as users write them (aliases; ``[]`` for a list of sections), with its default."""
    keys: dict[str, object] = {}
    for name, field in model.model_fields.items():
        key = prefix + (field.alias or name)
        inner = _model_of(field.annotation)
        if inner is not None:
            keys |= model_keys(inner, key + ("[]." if _is_list(field.annotation) else "."))
            continue
        default = field.default_factory() if field.default_factory else field.default
        keys[key] = REQUIRED if default is PydanticUndefined else default
    return keys


def readme_rows() -> dict[str, str]:
    """key → default cell of the table under "### Configuration reference"."""
    text = (REPO / "docs" / "configuration.md").read_text()
    section = text.split("## Configuration reference", 1)[1].split("\n#", 1)[0]
    rows: dict[str, str] = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[0].startswith("`"):
            continue
        key = cells[0].strip("`")
        assert key not in rows, f"{key} is listed twice"
        rows[key] = cells[1]
    return rows


def _normal(value: object) -> object:
    """A default as comparable data: enums by value, durations in seconds, lists item by item."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, list):
        return [_normal(item) for item in value]
    if isinstance(value, float):
        return round(value, 6)
    return value


def _cell_value(cell: str, model_default: object) -> object:
    """The default cell read as YAML would read it (``1s`` in seconds where the model holds seconds)."""
    if cell == REQUIRED:
        return REQUIRED
    if cell in NONE_CELLS:
        return None
    text = cell.strip("`")
    if isinstance(model_default, float) and _DURATION.match(text):
        return round(parse_duration(text), 6)
    value = yaml.safe_load(text)
    if isinstance(model_default, str) and not isinstance(value, str):
        return text  # `1000000`-like strings stay strings where the model has one
    return _normal(value)


def test_every_model_key_has_a_row_and_every_row_a_key():
    keys, rows = set(model_keys()), set(readme_rows())
    assert keys - rows == set(), "keys missing from docs/configuration.md's Configuration reference"
    assert rows - keys == set(), "rows in docs/configuration.md's Configuration reference that are no keys of the model"


def test_the_defaults_in_the_table_are_the_models():
    keys, rows = model_keys(), readme_rows()
    wrong = {key: (rows[key], keys[key]) for key in keys.keys() & rows.keys()
             if _cell_value(rows[key], keys[key]) != _normal(keys[key])}
    assert not wrong, f"docs default ≠ model default: {wrong}"


def test_the_walk_sees_nested_sections_lists_and_aliases():
    keys = model_keys()
    assert {"iggy.tls.ca_file", "iggy.topic_settings.max_size", "source.tables[].schema", "shard.index",
            "supervisor.stop_timeout", "workers"} <= set(keys)
    assert keys["supervisor.stop_timeout"] == 15.0 and keys["source.tables[].name"] == REQUIRED
