"""Every example configuration in conf/ and every YAML snippet of the README and docs/ loads.

The README wrote ``late_commits: off`` while the configuration refused it (YAML reads an
unquoted ``off`` as false: issue 23, bug 7). Fenced ``yaml`` blocks are loaded as they stand
(a block without ``source:`` is a fragment, given a minimal source); inline snippets such as
`` `late_commits: off` `` or `` `iggy.tls.enabled: true` `` are placed under the section their
key belongs to and loaded too.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from pgsource.config import load_config, parse_config
from pgsource.config.model import CDC_ONLY_KEYS
from tests.support import REPO
from tests.unit.test_readme_config import model_keys

ENV = {"PG_DSN": "postgresql://pgsource@db.example.com:5432/app", "IGGY_PASSWORD": "secret",
       "IGGY_ADDRESS": "iggy.example.com:8090", "POD_ORDINAL": "0"}
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
POLLING = {"connection_string": "postgresql://u@db/app", "mode": "polling", "tables": ["users"]}
CDC = {"connection_string": "postgresql://u@db/app", "mode": "cdc", "tables": ["users"]}
# inline spans that name a key with a placeholder, not a value: `workers: N`, `shard: {index, count}`
PLACEHOLDERS = {"workers: N", "shard: {index, count}"}
OUTPUT_WORDS = {"error", "problem", "note", "warning", "ok"}  # `error: ...`: what the CLI prints, not YAML
_INLINE = re.compile(r"`([a-z_]+(?:\.[a-z_]+)*): ([^`]+)`")


def _blocks() -> list[tuple[str, str]]:
    out = []
    for page in PAGES:
        text = page.read_text()
        for match in re.finditer(r"```ya?ml\n(.*?)```", text, re.S):
            line = text[: match.start()].count("\n") + 1
            out.append((f"{page.relative_to(REPO)}:{line}", match.group(1)))
    return out


def _inline() -> list[tuple[str, str, str]]:
    out = []
    for page in PAGES:
        for line_no, line in enumerate(page.read_text().splitlines(), 1):
            for match in _INLINE.finditer(line):
                if (match.group(0).strip("`") in PLACEHOLDERS or "unknown key" in match.group(2)
                        or match.group(1) in OUTPUT_WORDS):
                    continue
                out.append((f"{page.relative_to(REPO)}:{line_no}", match.group(1), match.group(2)))
    return out


def _path_of(key: str) -> list[str]:
    """The dotted path of a key as a snippet names it (``late_commits`` → source.late_commits)."""
    keys = {k.replace("[].", ".") for k in model_keys()}
    sections = {k.split(".")[0] for k in keys}
    if key in keys or key in sections:
        return key.split(".")
    found = sorted({k for k in keys if k.endswith("." + key)})
    found = [k for k in found if k.count(".") == min(f.count(".") for f in found)] if found else []
    assert len(found) == 1, f"{key}: which section? {found}"
    return found[0].split(".")


@pytest.mark.parametrize("path", sorted((REPO / "conf").glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_configuration_loads(path: Path):
    config = load_config(str(path), ENV)
    assert config.source.tables


@pytest.mark.parametrize(("where", "text"), _blocks(), ids=lambda v: v if ":" in str(v) and "\n" not in str(v) else "")
def test_every_yaml_block_of_the_readme_and_docs_loads(where: str, text: str):
    raw = yaml.safe_load(text)
    if "source" not in raw:
        raw = {"source": POLLING, **raw}
    parse_config(yaml.safe_dump(raw), ENV, origin=where)


@pytest.mark.parametrize(("where", "key", "value"), _inline(), ids=lambda v: str(v))
def test_every_inline_snippet_loads(where: str, key: str, value: str):
    path = _path_of(key)
    leaf = path[-1]
    source = dict(CDC if leaf in CDC_ONLY_KEYS or (leaf == "mode" and "cdc" in value) else POLLING)
    raw: dict = {"source": source}
    section = raw
    for part in path[:-1]:
        section = section.setdefault(part, {})
    section[leaf] = yaml.safe_load(f"{leaf}: {value}")[leaf]
    config = parse_config(yaml.safe_dump(raw), ENV, origin=where)
    if leaf == "late_commits":
        assert config.source.late_commits == value.strip()


def test_the_words_yaml_reads_as_booleans_are_the_words_meant():
    for word, meant in (("off", "off"), ("no", "off"), ("false", "off"), ("on", "auto"), ("yes", "auto"),
                        ("true", "auto"), ("auto", "auto"), ('"off"', "off")):
        text = f"source: {{connection_string: x, mode: polling, tables: [u], late_commits: {word}}}\n"
        assert parse_config(text).source.late_commits == meant, word


def test_the_readme_minimal_configuration_is_conf_quickstart():
    readme = (REPO / "README.md").read_text().split("## 3. A configuration", 1)[1]
    block = re.search(r"```yaml\n(.*?)```", readme, re.S).group(1)
    file = "".join(line for line in (REPO / "conf" / "quickstart.yaml").read_text().splitlines(True)
                   if not line.startswith("#"))
    assert block == file
