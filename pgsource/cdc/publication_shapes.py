"""The configured column lists and row filters against a publication (``check`` and each CDC start).

The configuration says what a table's publication entry holds (``columns`` or
``exclude_columns``, ``row_filter`` or ``where``). ``review_shapes`` compares it with what
the publication holds now and asks PostgreSQL whether it takes it
(``pgsource/pg/publication_shape.py``, in a transaction rolled back):

- a shape PostgreSQL refuses (a filter reading a column outside the replica identity, a
  column list not covering it, a mutable function...) is a problem, with PostgreSQL's reason;
- a shape that differs from the publication's is a change, applied at start with ``ALTER
  PUBLICATION`` (``apply_shape_changes``) and logged, when pgsource may alter the
  publication; otherwise a problem naming the statement its owner can run.

This is the configuration speaking, not a hand edit of the publication: the table stays in
the publication throughout (dropped and added again in one transaction).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from pgsource.config.model import TableConfig
from pgsource.pg import publication_shape as ps
from pgsource.pg.catalog import describe_table
from pgsource.pg.publications import Publication

log = logging.getLogger("pgsource.cdc")

EVERYTHING = ps.PublishedShape(None, None)
_IDENTITY = {"d": "its primary key", "f": "FULL (every column)", "i": "an index", "n": "NOTHING"}


@dataclass
class ShapeChange:
    table: TableConfig
    old: ps.PublishedShape
    new: ps.PublishedShape

    def describe(self, publication: str) -> str:
        return f"publication {publication}: table {self.table.qualified}: {self.old.describe()} → {self.new.describe()}"


@dataclass
class ShapeReview:
    problems: list[str] = field(default_factory=list)
    changes: list[ShapeChange] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def has_shape(table: TableConfig) -> bool:
    return table.columns is not None or bool(table.exclude_columns) or table.predicate is not None


def review_shapes(conn, publication: Publication | None, tables: list[TableConfig]) -> ShapeReview:
    """What the start would do with each table's shape in ``publication`` (None: to be created)."""
    review = ShapeReview()
    current = ps.published_shapes(conn, publication.name) if publication is not None else {}
    listed = set(current)
    wanted = [t for t in tables if has_shape(t) or current.get((t.schema_, t.name), EVERYTHING) != EVERYTHING]
    in_place = publication is not None and publication.owned
    trial = ps.try_shapes(conn, [t for t in wanted if has_shape(t)], publication.name if in_place else None,
                          listed if in_place else set())
    for table in wanted:
        key = (table.schema_, table.name)
        if table.qualified in trial.problems:
            review.problems.append(_refusal(conn, table, trial.problems[table.qualified]))
            continue
        if table.qualified in trial.unknown:
            review.notes.append(f"table {table.qualified}: its column list and row filter could not be tried"
                                f" in a publication ({trial.unknown[table.qualified]})")
            continue
        new = trial.shapes.get(table.qualified, EVERYTHING)
        if key not in listed or current[key] == new:
            continue  # joining: added with its shape; or unchanged
        change = ShapeChange(table, current[key], new)
        if in_place:
            review.changes.append(change)
        else:
            review.problems.append(
                f"{change.describe(publication.name)}: pgsource may not alter the publication (it is not its owner);"
                f" as its owner: ALTER PUBLICATION {publication.name} DROP TABLE {table.qualified};"
                f" ALTER PUBLICATION {publication.name} ADD TABLE {ps.build_target(conn, table).as_string(conn)}"
            )
    return review


def apply_shape_changes(conn, publication: str, changes: list[ShapeChange], worker: str) -> None:
    """The configuration's shapes into the publication (one transaction), each change logged."""
    if not changes:
        return
    ps.alter_shapes(conn, publication, [change.table for change in changes])
    for change in changes:
        log.warning("%s: %s (the configuration changed; rows already sent are not re-sent or deleted:"
                    " docs/cdc.md, \"Column lists and row filters\")", worker, change.describe(publication))


def _refusal(conn, table: TableConfig, reason: str) -> str:
    what = " and ".join(part for part, given in (
        ("column list", table.columns is not None or bool(table.exclude_columns)),
        ("row filter", table.predicate is not None)) if given) or "entry"
    line = f"table {table.qualified}: PostgreSQL refuses its {what} in cdc mode: {reason}"
    if "replica identity" not in reason:
        return line
    identity = describe_table(conn, table.schema_, table.name).replica_identity
    if identity == "f":
        hint = ("under REPLICA IDENTITY FULL PostgreSQL 15 takes no column list for a table whose UPDATE and DELETE"
                " are published (old rows carry every column): leave out columns/exclude_columns, or give the table"
                " REPLICA IDENTITY USING INDEX")
    else:
        hint = ("a row filter may read only the replica identity's columns, and a column list must keep them;"
                f" ALTER TABLE {table.qualified} REPLICA IDENTITY FULL lets a filter read any column")
    return f"{line} (the table's replica identity is {_IDENTITY.get(identity, identity)}: {hint})"
