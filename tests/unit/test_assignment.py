"""Which polling worker reads which table: balanced by size, chunks spread, a ``workers:`` mapping, same every start."""

from __future__ import annotations

import itertools

from pgsource.config import parse_config
from pgsource.plan.assignment import assign_units


def _config(tables: str, workers: str = "1", mode: str = "polling", extra: str = ""):
    return parse_config(
        f"source: {{connection_string: 'postgresql://u@h/db', mode: {mode}, tables: [{tables}]{extra}}}\n"
        f"workers: {workers}\n"
    )


def _who_reads(assignment) -> dict[str, list[str]]:
    return {worker: [unit.key.removeprefix("polling/") for unit in units] for worker, units in assignment.items()}


def test_the_biggest_table_gets_a_worker_of_its_own_and_the_rest_share():
    config = _config("users, orders, items, tags", workers="2")
    sizes = {"users": 1000, "orders": 600, "items": 300, "tags": 100}
    assert _who_reads(assign_units(config, sizes)) == {"worker-0": ["users"], "worker-1": ["orders", "items", "tags"]}


def test_loads_stay_close_with_many_tables():
    names = [f"t{i}" for i in range(12)]
    sizes = {name: (i + 1) * 100 for i, name in enumerate(names)}
    assignment = assign_units(_config(", ".join(names), workers="3"), sizes)
    loads = sorted(sum(sizes[unit.table.qualified] for unit in units) for units in assignment.values())
    assert len(loads) == 3 and sum(loads) == sum(sizes.values())
    assert loads[-1] - loads[0] <= max(sizes.values()) // 2  # greedy largest-first: within half the biggest table


def test_a_table_in_chunks_is_read_by_several_workers_each_chunk_once():
    config = _config("{name: events, chunks: 4}, users", workers="3")
    assignment = assign_units(config, {"events": 4000, "users": 500})
    read = _who_reads(assignment)
    chunks = sorted(key for keys in read.values() for key in keys if key.startswith("events"))
    assert chunks == ["events#0of4", "events#1of4", "events#2of4", "events#3of4"]  # every chunk, once
    assert sorted(key for keys in read.values() for key in keys) == sorted([*chunks, "users"])
    assert all(any(key.startswith("events") for key in keys) for keys in read.values())  # the big table is spread
    # a chunk weighs a quarter of its table: 1000 each, so the 500 of users joins the lightest worker
    assert read == {"worker-0": ["events#0of4", "events#3of4"], "worker-1": ["events#1of4", "users"],
                    "worker-2": ["events#2of4"]}
    units = {unit.key: unit for units in assignment.values() for unit in units}
    assert (units["polling/events#2of4"].chunk, units["polling/events#2of4"].chunks) == (2, 4)


def test_a_workers_mapping_is_followed_whatever_the_sizes():
    config = _config("users, orders, {name: events, chunks: 2}, audit.log",
                     workers="{fast: [events, users], slow: [orders, audit.log]}")
    assignment = assign_units(config, {"users": 10**9, "events": 1, "orders": 1, "audit.log": 1})
    assert _who_reads(assignment) == {"fast": ["events#0of2", "events#1of2", "users"], "slow": ["orders", "audit.log"]}


def test_the_same_configuration_gives_the_same_assignment_every_start():
    tables = ["users", "orders", "items", "tags", "audit.log"]
    sizes = {"users": 700, "orders": 700, "items": 300, "tags": 300, "audit.log": 0}  # ties on purpose
    expected = _who_reads(assign_units(_config(", ".join(tables), workers="3"), sizes))
    for order in itertools.permutations(tables):  # the order of tables in the file does not matter either
        config = _config(", ".join(order), workers="3")
        shuffled_sizes = {name: sizes[name] for name in reversed(order)}
        assert _who_reads(assign_units(config, shuffled_sizes)) == expected
    # equal sizes are broken by name (orders before users), equal loads by worker number
    assert expected == {"worker-0": ["orders"], "worker-1": ["users"], "worker-2": ["items", "tags", "audit.log"]}


def test_without_sizes_tables_are_dealt_out_by_name():
    assignment = assign_units(_config("c, a, b, d", workers="2"))
    assert _who_reads(assignment) == {"worker-0": ["a", "c"], "worker-1": ["b", "d"]}


def test_more_workers_than_tables_starts_only_the_workers_with_work():
    assert _who_reads(assign_units(_config("users, orders", workers="5"))) == {"worker-0": ["orders"],
                                                                               "worker-1": ["users"]}


def test_a_table_keeps_its_offset_key_when_it_moves_to_another_worker():
    one = assign_units(_config("users, orders, {name: events, chunks: 3}", workers="1"))
    three = assign_units(_config("users, orders, {name: events, chunks: 3}", workers="3"), {"users": 10})
    keys = sorted(unit.key for units in one.values() for unit in units)
    assert keys == sorted(unit.key for units in three.values() for unit in units)
    assert keys == ["polling/events#0of3", "polling/events#1of3", "polling/events#2of3", "polling/orders",
                    "polling/users"]


def test_cdc_does_not_balance_by_size():
    config = _config("users, orders", workers="2", mode="cdc")
    assert _who_reads(assign_units(config, {"users": 10**9})) == _who_reads(assign_units(config))


def test_a_custom_query_without_tables_is_one_worker():
    config = _config("", extra=", initial_offset: 0, custom_query: 'SELECT id FROM t WHERE id > $1 ORDER BY id LIMIT $2'")
    assert assign_units(config) == {"worker-0": []}
