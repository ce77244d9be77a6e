"""Login, logout, ping and unknown commands, through the real SDK."""

from __future__ import annotations

import pytest
from apache_iggy import IggyClient

from .conftest import logged_in, run


def test_login_with_the_right_password_allows_reads(standin):
    async def scenario():
        client = IggyClient(standin.address)
        await client.connect()
        await client.login_user("iggy", "iggy")
        return await client.get_streams()

    assert run(scenario()) == []


def test_wrong_password_is_rejected_and_leaves_the_client_unauthenticated(standin):
    async def scenario():
        client = IggyClient(standin.address)
        await client.connect()
        with pytest.raises(RuntimeError, match="Invalid credentials"):
            await client.login_user("iggy", "wrong")
        with pytest.raises(RuntimeError, match="Unauthenticated"):
            await client.get_streams()

    run(scenario())


def test_ping_works_before_login(standin):
    async def scenario():
        client = IggyClient(standin.address)
        await client.connect()
        await client.ping()
        return True

    assert run(scenario())


def test_logout_ends_the_session(standin):
    async def scenario():
        client = IggyClient(standin.address)
        await client.connect()
        await client.login_user("iggy", "iggy")
        await client.logout_user()
        with pytest.raises(RuntimeError, match="Unauthenticated"):
            await client.get_streams()

    run(scenario())


def test_unknown_command_gets_an_error_not_a_hang(standin):
    async def scenario():
        client = await logged_in(standin.address)
        with pytest.raises(RuntimeError, match="Invalid command"):
            await client.send_binary_request(9999, b"")
        await client.ping()  # the connection is still usable

    run(scenario())


def test_custom_credentials(tmp_path):
    from pgsource_testkit.iggy import IggyStandIn

    with IggyStandIn(username="admin", password="s3cret") as server:

        async def scenario():
            client = IggyClient(server.address)
            await client.connect()
            with pytest.raises(RuntimeError):
                await client.login_user("iggy", "iggy")
            await client.login_user("admin", "s3cret")
            return await client.get_streams()

        assert run(scenario()) == []
