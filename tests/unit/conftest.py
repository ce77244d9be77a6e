"""The unit tier (``python -m pytest tests/unit``): no PostgreSQL, no Iggy, under a minute.

A test here that asks for the private cluster or starts an Iggy stand-in fails, saying where it
belongs: the end-to-end folders (tests/polling, tests/cdc, tests/standin, ...) have both.
"""

from __future__ import annotations

import pytest

_ELSEWHERE = ("tests/unit needs neither PostgreSQL nor Iggy: put a test that starts {what} into an end-to-end"
              " folder (tests/polling, tests/cdc, tests/standin)")


@pytest.fixture(scope="session")
def pg_cluster():
    pytest.fail(_ELSEWHERE.format(what="PostgreSQL"))


@pytest.fixture(autouse=True)
def _no_servers(monkeypatch):
    from pgsource_testkit.iggy import IggyStandIn
    from pgsource_testkit.postgres import LocalPostgres

    def refuse(what):
        def start(*args, **kwargs):
            pytest.fail(_ELSEWHERE.format(what=what))
        return start

    monkeypatch.setattr(IggyStandIn, "start", refuse("an Iggy stand-in"))
    monkeypatch.setattr(LocalPostgres, "start", refuse("PostgreSQL"))
