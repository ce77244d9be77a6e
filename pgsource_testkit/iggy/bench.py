"""Throughput of the Iggy stand-in (for tests and local use, not an Iggy server).

Sends 1,000,000 messages of ~200 bytes in batches of 1000 through the real SDK and
prints messages per second. Not a test.

    python -m pgsource_testkit.iggy.bench [--process] [--messages N] [--batch N]
"""

from __future__ import annotations

import argparse
import asyncio
import time

from apache_iggy import IggyClient, SendMessage

from . import IggyStandIn, IggyStandInProcess


async def _send_all(address: str, total: int, batch: int, with_headers: bool) -> float:
    client = IggyClient(address)
    await client.connect()
    await client.login_user("iggy", "iggy")
    await client.create_stream("bench")
    await client.create_topic("bench", "events", 1)
    payload = b"x" * 200
    headers = {"table": "public.orders", "op": "INSERT"} if with_headers else None
    messages = [SendMessage(payload, user_headers=headers) for _ in range(batch)]
    started = time.perf_counter()
    for _ in range(total // batch):
        await client.send_messages("bench", "events", 0, messages)
    elapsed = time.perf_counter() - started
    topic = await client.get_topic("bench", "events")
    assert topic.messages_count == total // batch * batch, topic.messages_count
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--process", action="store_true", help="run the stand-in in its own process")
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--headers", action="store_true", help="attach two string user headers")
    args = parser.parse_args()
    standin = IggyStandInProcess() if args.process else IggyStandIn()
    standin.start()
    try:
        elapsed = asyncio.run(_send_all(standin.address, args.messages, args.batch, args.headers))
    finally:
        standin.stop()
    mode = "separate process" if args.process else "in-process thread"
    print(f"{args.messages} messages in {elapsed:.2f} s: {args.messages / elapsed:,.0f} msgs/s ({mode})")


if __name__ == "__main__":
    main()
