"""Column lists and row filters in ``check``: PostgreSQL's word on a predicate, and on a publication's shape."""

from __future__ import annotations

from pgsource.cdc.publication_shapes import review_shapes
from pgsource.errors import PrerequisiteError
from pgsource.pg import connect as pg
from pgsource.pg.row_filter import build_filter_probe
from pgsource.pg.statements import result_columns


def check_row_filter(conn, table) -> None:
    """The predicate parsed and planned against the table by PostgreSQL, which says what is wrong."""
    if table.predicate is None:
        return
    key = "row_filter" if table.row_filter is not None else "where"
    try:
        result_columns(conn, build_filter_probe(table.schema_, table.name, table.predicate), {})
    except pg.DatabaseError as exc:
        raise PrerequisiteError(f"table {table.qualified}: {key}: {str(exc).strip().splitlines()[0]}") from None



def check_shapes(conn, publication, name: str, tables: list, relations: dict, report) -> None:
    """Column lists and row filters PostgreSQL refuses, and the changes a start will make (``review_shapes``)."""
    shapes = review_shapes(conn, publication, [t for t in tables if relations.get(t.qualified) is not None])
    report.problems += shapes.problems
    report.notes += shapes.notes + [f"at start, {change.describe(name)}" for change in shapes.changes]
