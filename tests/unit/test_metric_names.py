"""Every metric family is pgsource_<subsystem>_<name>_<unit>, labelled by table/worker (never a pid),
and every gauge says how the multiprocess collector combines processes (a live* mode: no pid label)."""

from __future__ import annotations

import re

from prometheus_client import Counter, Gauge, Histogram

from pgsource.metrics import Metrics

SUBSYSTEMS = {"source", "sink", "state", "cdc", "supervisor", "health"}
UNITS = {"total", "seconds", "bytes", "messages", "rows", "batches", "pid", "state", "in_flight"}
LABELS = {"table", "worker", "reason", "cause"}


def test_names_labels_and_multiprocess_modes():
    metrics = Metrics.get()
    families = [value for value in vars(metrics).values() if isinstance(value, (Counter, Gauge, Histogram))]
    assert len(families) >= 20
    for family in families:
        name = family._name + ("_total" if isinstance(family, Counter) else "")
        match = re.fullmatch(r"pgsource_([a-z]+)_[a-z0-9_]+", name)
        assert match and match[1] in SUBSYSTEMS, name
        assert any(name.endswith("_" + unit) for unit in UNITS), name
        assert set(family._labelnames) <= LABELS, (name, family._labelnames)
        if isinstance(family, Gauge):
            assert family._multiprocess_mode.startswith("live"), (name, family._multiprocess_mode)


def test_the_readme_metrics_table_lists_every_family():
    """docs/operations.md "Metrics": one row per family, none left out, none that does not exist."""
    import inspect
    from pathlib import Path

    import pgsource.metrics.scrape as scrape

    metrics = Metrics.get()
    defined = {value._name + ("_total" if isinstance(value, Counter) else "")
               for value in vars(metrics).values() if isinstance(value, (Counter, Gauge, Histogram))}
    defined |= set(re.findall(r'"(pgsource_[a-z0-9_]+)"', inspect.getsource(scrape)))
    page = (Path(__file__).resolve().parents[2] / "docs" / "operations.md").read_text()
    section = page.split("\n### Metrics\n", 1)[1].split("\n### ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `pgsource_")]
    documented = {name for row in rows for name in re.findall(r"`(pgsource_[a-z0-9_]+)", row.split(" | ")[0])}
    assert documented == defined, {"not in docs/operations.md": sorted(defined - documented),
                                   "not defined": sorted(documented - defined)}
