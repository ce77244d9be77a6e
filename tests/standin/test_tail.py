"""``pgsource tail``: the messages of the configuration's topics, one a line, like ``kcat -C``;
reading leaves no trace on the server (no consumer offset stored, no consumer group joined)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys

import apache_iggy as iggy
import pytest
import yaml

from tests.support import REPO, run_cli

LINE = re.compile(r"^id 0x([0-9a-f]{32}) partition (\d+) offset (\d+) (.*)$")


def _config(tmp_path, address: str, tables=("orders", "items")) -> str:
    path = tmp_path / "pgsource.yaml"
    path.write_text(yaml.safe_dump({
        "source": {"connection_string": "postgresql://nobody@127.0.0.1:1/none", "mode": "polling", "tables": list(tables)},
        "iggy": {"address": address, "stream": "shop", "topic": "{table}"},
        "state": {"dir": str(tmp_path / "state")}}))
    return str(path)


def _send(address: str, topic: str, partition: int, payloads: list[bytes | str], first_id: int = 1) -> None:
    async def send() -> None:
        client = iggy.IggyClient(address)
        await client.connect()
        await client.login_user("iggy", "iggy")
        if "shop" not in [s.name for s in await client.get_streams()]:
            await client.create_stream("shop")
        if await client.get_topic("shop", topic) is None:
            await client.create_topic("shop", topic, 2)
        messages = [iggy.SendMessage(p, id=first_id + i) for i, p in enumerate(payloads)]
        await client.send_messages("shop", topic, iggy.Partitioning.partition_id(partition), messages)

    asyncio.run(send())


def _parsed(stdout: str) -> list[tuple[int, int, int, str]]:
    out = []
    for line in stdout.splitlines():
        match = LINE.match(line)
        assert match, f"not a message line: {line!r}"
        out.append((int(match.group(1), 16), int(match.group(2)), int(match.group(3)), match.group(4)))
    return out


@pytest.fixture
def filled(iggy, tmp_path):
    """orders: 15 JSON messages on partition 0, 3 on partition 1 (one not JSON, one JSON over two lines)."""
    _send(iggy.address, "orders", 0, [json.dumps({"n": n}) for n in range(15)], first_id=100)
    _send(iggy.address, "orders", 1, [b"\x00\x01raw\xff", '{"a":\n 1}', '{"n": "last"}'], first_id=200)
    return iggy, _config(tmp_path, iggy.address)


def test_the_last_ten_of_each_partition_then_it_exits(filled):
    server, config = filled
    result = run_cli("tail", "--config", config, "--table", "orders")
    assert result.returncode == 0, result.stderr
    lines = _parsed(result.stdout)
    assert [(p, o) for _, p, o, _ in lines] == [(0, o) for o in range(5, 15)] + [(1, 0), (1, 1), (1, 2)]
    assert lines[0][0] == 105 and lines[0][3] == '{"n": 5}'
    assert lines[10][3] == "[not JSON] b'\\x00\\x01raw\\xff'"
    assert lines[11][3] == '{"a":  1}'  # one message, one line
    assert server.consumer_offsets("shop", "orders") == {}  # no trace on the server
    assert "Traceback" not in result.stderr
    _poll_storing_the_offset(server.address)  # what a reader that leaves a trace would have left
    [(partition, _, consumer)] = server.consumer_offsets("shop", "orders")
    assert partition == 0 and consumer.endswith(b"someone")


def _poll_storing_the_offset(address: str) -> None:
    async def poll() -> None:
        client = iggy.IggyClient(address)
        await client.connect()
        await client.login_user("iggy", "iggy")
        await client.poll_messages("shop", "orders", consumer=iggy.Consumer.Single("someone"),
                                   polling_strategy=iggy.PollingStrategy.First(), count=1, auto_commit=True, partition_id=0)

    asyncio.run(poll())


def test_n_from_start_and_every_topic(filled):
    server, config = filled
    _send(server.address, "items", 0, ['{"item": 1}'])
    last_two = _parsed(run_cli("tail", "--config", config, "--table", "orders", "-n", "2").stdout)
    assert [(p, o) for _, p, o, _ in last_two] == [(0, 13), (0, 14), (1, 1), (1, 2)]
    first_three = _parsed(run_cli("tail", "--config", config, "--table", "orders", "--from-start", "-n", "3").stdout)
    assert [(p, o) for _, p, o, _ in first_three] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    everything = run_cli("tail", "--config", config, "--from-start")
    assert everything.returncode == 0, everything.stderr
    lines = everything.stdout.splitlines()
    assert len(lines) == 19 and lines[-1].startswith("topic items id 0x") and lines[-1].endswith('{"item": 1}')
    assert server.consumer_offsets("shop", "orders") == {} and server.consumer_offsets("shop", "items") == {}


def test_a_topic_that_does_not_exist_yet_is_a_note(iggy, tmp_path):
    result = run_cli("tail", "--config", _config(tmp_path, iggy.address))
    assert result.returncode == 0 and result.stdout == ""
    assert "note: Iggy topic shop/orders does not exist (yet)" in result.stderr


def test_follow_shows_new_messages_until_ctrl_c(filled):
    server, config = filled
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen([sys.executable, "-m", "workers.cli", "tail", "--config", config, "--table", "orders",
                                "-n", "1", "--follow"], cwd=str(REPO), env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        assert LINE.match(process.stdout.readline())  # partition 0's last
        assert LINE.match(process.stdout.readline())  # partition 1's last
        _send(server.address, "orders", 1, ['{"n": "new"}'], first_id=300)
        line = process.stdout.readline()
        assert line.rstrip().endswith('{"n": "new"}') and " partition 1 offset 3 " in line, line
        process.send_signal(signal.SIGINT)
        assert process.wait(10) == 0
        assert "Traceback" not in process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert server.consumer_offsets("shop", "orders") == {}
