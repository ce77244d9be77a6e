"""pgsource's send path against the SDK's own ``send_messages``, into the same Iggy.

    python -m bench.send_path --iggy HOST:PORT [--messages 300000] [--batch 1000] [--payload 300] [--headers]

One process, one connection each, the same messages (ids, payloads, optional CDC-like user
headers) in batches of ``--batch`` to partition 0 of a fresh topic, ``--repeat`` rounds
alternating the two paths:

- ``sdk``: a list of ``SendMessage`` per batch, then ``IggyClient.send_messages`` (what a
  publisher using the SDK's API pays);
- ``pgsource``: the batch encoded into frames (``encode_partition_frames``, which the worker
  does in pgsource; timed apart as ``encode``), then ``IggySink.send_frames`` (the publisher's
  share: the request around the frames and ``send_binary_request``).

Reported per path: messages/s of the sends and client CPU µs/message (process time), plus
the server's CPU µs/message when it runs on this machine. Not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import uuid

import apache_iggy as iggy

from bench.iggy_target import create_topic_without_options, local_listener_pid, process_cpu_seconds
from pgsource.config.model import IggyConfig
from pgsource.encode.frames import encode_partition_frames
from pgsource.sink import IggySink

HEADERS = {"table": "public.orders", "operation": "UPDATE", "lsn": "16/B374D848", "xid": "771"}


async def _topic(client: iggy.IggyClient, stream: str) -> None:
    await client.create_stream(stream)
    await create_topic_without_options(client, stream, "t")  # older servers refuse the wheel's options


async def _measure(args, pid: int | None) -> dict:
    admin = iggy.IggyClient(args.iggy)
    await admin.connect()
    await admin.login_user(args.username, args.password)
    payloads = [("{" + f'"id":{i},"v":"' + "x" * max(args.payload - 20, 1) + '"}') for i in range(args.batch)]
    headers = [HEADERS] * args.batch if args.headers else None
    batches = args.messages // args.batch
    results: dict[str, list[dict]] = {"sdk": [], "pgsource": []}

    sdk = iggy.IggyClient(iggy.TcpConfig(server_address=args.iggy, nodelay=True))
    await sdk.connect()
    await sdk.login_user(args.username, args.password)
    sink = IggySink(IggyConfig(address=args.iggy, username=args.username, password=args.password,
                               stream="bench", create_missing=False))
    await sink.connect()

    for round_ in range(args.repeat):
        for path in ("sdk", "pgsource"):
            stream = f"sendpath-{path}-{round_}-{uuid.uuid4().hex[:6]}"
            await _topic(admin, stream)
            server0 = process_cpu_seconds(pid)
            encode_cpu = 0.0
            wall0, cpu0 = time.perf_counter(), time.process_time()
            for number in range(batches):
                base = number * args.batch
                if path == "sdk":
                    messages = [iggy.SendMessage(p, id=base + i + 1, user_headers=headers[i] if headers else None)
                                for i, p in enumerate(payloads)]
                    await sdk.send_messages(stream, "t", iggy.Partitioning.partition_id(0), messages)
                else:
                    start = time.process_time()
                    parts = encode_partition_frames(list(range(base + 1, base + args.batch + 1)), [0] * args.batch,
                                                    payloads, headers)
                    encode_cpu += time.process_time() - start
                    await sink.send_frames(stream, "t", parts)
            wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
            count = batches * args.batch
            topic = await admin.get_topic(stream, "t")
            assert topic.messages_count == count, (path, topic.messages_count, count)
            results[path].append({
                "messages_per_s": count / wall,
                "client_cpu_us": (cpu - encode_cpu) / count * 1e6,
                "encode_cpu_us": encode_cpu / count * 1e6,
                "server_cpu_us": (process_cpu_seconds(pid) - server0) / count * 1e6,
            })
            await admin.delete_stream(stream)
            print(f"round {round_} {path:8}: {count / wall:>10,.0f} msgs/s, client {results[path][-1]['client_cpu_us']:.2f}"
                  f" µs/msg (+ encode {results[path][-1]['encode_cpu_us']:.2f}), server"
                  f" {results[path][-1]['server_cpu_us']:.2f} µs/msg", file=sys.stderr, flush=True)
    return {path: {k: statistics.median(r[k] for r in runs) for k in runs[0]} for path, runs in results.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.send_path", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iggy", required=True, metavar="HOST:PORT")
    parser.add_argument("--username", default="iggy")
    parser.add_argument("--password", default="iggy")
    parser.add_argument("--messages", type=int, default=300_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--payload", type=int, default=300, help="bytes per message (bench_t's rows are ~330)")
    parser.add_argument("--headers", action="store_true", help="four CDC-like string user headers per message")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    figures = asyncio.run(_measure(args, local_listener_pid(args.iggy)))
    print(f"{'path (median)':<12} {'msgs/s':>12} {'client µs/msg':>14} {'encode µs/msg':>14} {'server µs/msg':>14}")
    for path, f in figures.items():
        print(f"{path:<12} {f['messages_per_s']:>12,.0f} {f['client_cpu_us']:>14.2f} {f['encode_cpu_us']:>14.2f}"
              f" {f['server_cpu_us']:>14.2f}")
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # apache-iggy 0.9.0 may abort the interpreter's teardown (see pgsource/sink/sockets.py)
