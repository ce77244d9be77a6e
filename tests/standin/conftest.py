"""Fixtures for the Iggy stand-in tests: a fresh stand-in per test, SDK clients on it."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest
from apache_iggy import AutoLogin, IggyClient, TcpConfig, TcpReconnectionConfig

from pgsource_testkit.iggy import IggyStandIn


@pytest.fixture
def standin():
    with IggyStandIn() as server:
        yield server


def run(coro):
    """Drive one SDK coroutine to completion (pytest-asyncio is not used)."""
    return asyncio.run(coro)


def reconnecting_config(address: str, retries: int = 5) -> TcpConfig:
    """Auto-login on every connect; a few quick redials, so a dead server fails a call fast."""
    return TcpConfig(
        server_address=address,
        auto_login=AutoLogin.username_password("iggy", "iggy"),
        reconnection=TcpReconnectionConfig(
            enabled=True,
            max_retries=retries,
            interval=dt.timedelta(milliseconds=100),
            reestablish_after=dt.timedelta(0),
        ),
    )


async def logged_in(address: str) -> IggyClient:
    client = IggyClient(reconnecting_config(address))
    await client.connect()
    return client
