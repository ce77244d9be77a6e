"""A user's predicate checked as text: what would break out of the parentheses pgsource puts it in."""

from __future__ import annotations

import pytest

from pgsource.config.predicate import conjunction, predicate_problem


@pytest.mark.parametrize("predicate", [
    "tenant = 7", "(a OR b) AND c", "name = 'it''s (not) closed'", '"odd ) name" > 1', "x IN (1, (2))",
])
def test_one_expression_passes(predicate):
    assert predicate_problem(predicate) is None


@pytest.mark.parametrize(("predicate", "problem"), [
    ("true) OR (true", "a ')' closes a parenthesis the predicate did not open"),
    ("(a", "a '(' is not closed"),
    ("a = 'open", "a quote is not closed"),
    ("a; DROP TABLE t", "';' ends a statement: a predicate is one SQL expression"),
    ("a -- )", "comments are not allowed in a predicate"),
    ("a /* ) */", "comments are not allowed in a predicate"),
])
def test_what_would_change_the_statement_around_it_is_named(predicate, problem):
    assert predicate_problem(predicate) == problem


def test_two_predicates_are_both():
    assert conjunction("a OR b", "c") == "(a OR b) AND (c)"
    assert conjunction(None, "c") == "c" and conjunction("a", None) == "a" and conjunction(None, None) is None
