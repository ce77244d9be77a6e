"""The CDC table → slot map as a function of the configuration and the publications (no sizes at all)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from pgsource.config.load import build_config
from pgsource.errors import PrerequisiteError
from pgsource.plan.assignment import plan_cdc


@dataclass(frozen=True)
class Held:
    """A publication as ``plan_cdc`` sees it."""

    tables: frozenset

    def holds(self, table) -> bool:
        return table.qualified in self.tables


def config(tables, workers=1):
    return build_config({"source": {"connection_string": "x", "mode": "cdc", "tables": tables}, "workers": workers})


def slots_of(plan) -> dict[str, tuple[str, str]]:
    return {unit.table.qualified: (worker, unit.slot) for worker, units in plan.assignment.items() for unit in units}


def test_one_worker_keeps_the_configured_slot_whatever_is_added():
    plan = plan_cdc(config(["a", "b", "c"]), {"iggy_publication": Held(frozenset({"a"}))}, {"iggy_slot"})
    assert slots_of(plan) == {"a": ("worker-0", "iggy_slot"), "b": ("worker-0", "iggy_slot"), "c": ("worker-0", "iggy_slot")}


def test_new_tables_go_to_the_configured_worker_with_fewest_tables_in_configuration_order():
    plan = plan_cdc(config(["a", "b", "c"], workers=2), {}, set())
    assert slots_of(plan) == {"a": ("worker-0", "iggy_slot_worker_0"), "b": ("worker-1", "iggy_slot_worker_1"),
                              "c": ("worker-0", "iggy_slot_worker_0")}
    held = {"iggy_publication_worker_0": Held(frozenset({"a", "c"})), "iggy_publication_worker_1": Held(frozenset({"b"}))}
    again = plan_cdc(config(["d", "c", "b", "a"], workers=2), held, {"iggy_slot_worker_0", "iggy_slot_worker_1"})
    assert {k: v for k, v in slots_of(again).items() if k != "d"} == {k: v for k, v in slots_of(plan).items()}
    assert slots_of(again)["d"] == ("worker-1", "iggy_slot_worker_1")  # the one with fewer tables


def test_a_channel_the_configuration_no_longer_names_keeps_its_tables():
    held = {"iggy_publication": Held(frozenset({"a"}))}
    plan = plan_cdc(config(["a", "b"], workers=2), held, {"iggy_slot"})
    assert slots_of(plan) == {"a": ("iggy_slot", "iggy_slot"), "b": ("worker-0", "iggy_slot_worker_0")}
    held = {"iggy_publication_worker_0": Held(frozenset({"a"})), "iggy_publication_worker_1": Held(frozenset({"b"}))}
    plan = plan_cdc(config(["a", "b", "c"]), held, {"iggy_slot_worker_0", "iggy_slot_worker_1"})
    assert slots_of(plan) == {"a": ("iggy_slot_worker_0", "iggy_slot_worker_0"),
                              "b": ("iggy_slot_worker_1", "iggy_slot_worker_1"), "c": ("worker-0", "iggy_slot")}
    assert plan.notes == []


def test_a_publication_of_someone_else_with_a_similar_name_is_not_taken_for_a_channel():
    held = {"iggy_publication_reports": Held(frozenset({"a"}))}  # no iggy_slot_reports: not pgsource's
    plan = plan_cdc(config(["a"]), held, set())
    assert slots_of(plan) == {"a": ("worker-0", "iggy_slot")}


def test_a_table_in_two_publications_and_a_contradicting_mapping_are_refused():
    held = {"iggy_publication_wa": Held(frozenset({"a"})), "iggy_publication_wb": Held(frozenset({"a", "b"}))}
    with pytest.raises(PrerequisiteError, match="table a is in publications iggy_publication_wa and iggy_publication_wb"):
        plan_cdc(config(["a", "b"], workers={"wa": ["a"], "wb": ["b"]}), held, set())
    held = {"iggy_publication_wb": Held(frozenset({"a", "b"}))}
    with pytest.raises(PrerequisiteError, match="workers.wa: table a is captured by slot iggy_slot_wb"):
        plan_cdc(config(["a", "b"], workers={"wa": ["a"], "wb": ["b"]}), held, set())


def test_a_one_worker_mapping_uses_the_configured_names():
    plan = plan_cdc(config(["a"], workers={"main": ["a"]}), {}, set())
    assert slots_of(plan) == {"a": ("main", "iggy_slot")}
