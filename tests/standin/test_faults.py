"""Restarts, refused and dropped connections, latency: what the SDK sees, and recovery."""

from __future__ import annotations

import time

import pytest
from apache_iggy import IggyClient, SendMessage

from .conftest import logged_in, reconnecting_config, run


async def _retry(call, attempts: int = 20):
    """The SDK reports the first call on a dead connection as failed and redials on the next."""
    for attempt in range(attempts):
        try:
            return await call()
        except RuntimeError:
            if attempt == attempts - 1:
                raise
            time.sleep(0.05)


async def _setup(address: str) -> IggyClient:
    client = await logged_in(address)
    await client.create_stream("s")
    await client.create_topic("s", "t", 1)
    await client.send_messages("s", "t", 0, [SendMessage(b"before")])
    return client


def test_restart_keeping_data_and_the_sdk_reconnects(standin):
    port = standin.port

    async def scenario():
        client = await _setup(standin.address)
        standin.restart(keep_data=True)
        await _retry(lambda: client.send_messages("s", "t", 0, [SendMessage(b"after")]))
        return await client.get_topic("s", "t")

    topic = run(scenario())
    assert standin.port == port
    assert topic.messages_count == 2
    assert [m.payload for m in standin.messages("s", "t")] == [b"before", b"after"]


def test_restart_without_data_empties_the_server(standin):
    async def scenario():
        client = await _setup(standin.address)
        standin.restart(keep_data=False)
        return await _retry(client.get_streams)

    assert run(scenario()) == []
    assert standin.streams() == []


def test_refused_and_dropped_connections_fail_calls_then_recover(standin):
    async def scenario():
        client = await _setup(standin.address)
        standin.refuse_connections()
        standin.drop_connections()
        with pytest.raises(RuntimeError):
            await client.send_messages("s", "t", 0, [SendMessage(b"lost")])
        with pytest.raises(RuntimeError):
            await client.ping()
        fresh = IggyClient(reconnecting_config(standin.address, retries=1))
        with pytest.raises(RuntimeError):
            await fresh.connect()
        standin.refuse_connections(False)
        # After a failed redial the SDK answers sends "Disconnected" without dialing
        # again; a ping (or its own heartbeat) reconnects and logs in again.
        with pytest.raises(RuntimeError, match="Disconnected"):
            await client.send_messages("s", "t", 0, [SendMessage(b"still lost")])
        await _retry(client.ping)
        await client.send_messages("s", "t", 0, [SendMessage(b"recovered")])

    run(scenario())
    assert [m.payload for m in standin.messages("s", "t")] == [b"before", b"recovered"]


def test_drop_connections_fails_the_next_send_and_the_one_after_redials(standin):
    async def scenario():
        client = await _setup(standin.address)
        standin.drop_connections()
        with pytest.raises(RuntimeError, match="Disconnected"):
            await client.send_messages("s", "t", 0, [SendMessage(b"lost")])
        await client.send_messages("s", "t", 0, [SendMessage(b"after")])
        standin.drop_connections()
        return await client.get_topic("s", "t")  # reads redial transparently

    assert run(scenario()).messages_count == 2
    assert [m.payload for m in standin.messages("s", "t")] == [b"before", b"after"]


def test_latency_delays_every_reply(standin):
    async def scenario():
        client = await _setup(standin.address)
        started = time.perf_counter()
        await client.ping()
        fast = time.perf_counter() - started
        standin.set_latency(0.3)
        started = time.perf_counter()
        await client.ping()
        await client.get_streams()
        slow = time.perf_counter() - started
        standin.set_latency(0)
        return fast, slow

    fast, slow = run(scenario())
    assert fast < 0.1
    assert slow >= 0.6


def test_a_frozen_server_holds_its_replies_until_thawed(standin):
    """``freeze``: the request is applied but not answered; thawing answers it, in order."""
    import asyncio

    async def scenario():
        client = await _setup(standin.address)
        standin.freeze()
        send = asyncio.ensure_future(client.send_messages("s", "t", 0, [SendMessage(b"frozen")]))
        done, _ = await asyncio.wait([send], timeout=1.0)
        answered_while_frozen = bool(done)
        standin.freeze(False)
        await asyncio.wait_for(send, 5)
        return answered_while_frozen, await client.get_topic("s", "t")

    answered_while_frozen, topic = run(scenario())
    assert not answered_while_frozen
    assert topic.messages_count == 2
