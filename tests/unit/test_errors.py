"""Errors cross process boundaries: each one survives pickling with its class, message and exit code."""

from __future__ import annotations

import pickle

import pytest

from pgsource import errors


@pytest.mark.parametrize(
    "error_class",
    [errors.PgSourceError, errors.ConfigError, errors.PrerequisiteError, errors.SourceError,
     errors.SourceUnavailable, errors.SinkError, errors.CrashLoopError],
)
def test_errors_pickle_round_trip(error_class):
    original = error_class("table users: tracking_column 'x' does not exist")
    copy = pickle.loads(pickle.dumps(original))
    assert type(copy) is error_class and str(copy) == str(original) and copy.exit_code == original.exit_code
    assert isinstance(copy, errors.PgSourceError)
