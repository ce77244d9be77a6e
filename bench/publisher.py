"""The publisher alone: what one publisher process carries, fed ready blocks as fast as they can be written.

    python -m bench.publisher [--iggy HOST:PORT] [--messages 2000000] [--batch 1000] [--payload 400] [--repeat 3]

The service's own publisher (``workers/publisher.py``, spawned as the supervisor spawns it, on a
``BlockChannel`` as wide as the service's) is fed by this process, which plays every worker: it
builds one block of ``--batch`` messages of ``--payload`` bytes once (frames, request bodies: the
worker's share, not measured), then writes it again and again, numbered, taking the acks, never
more than ``--in-flight`` unacknowledged (the service's ``max_in_flight_batches``). Into the
stand-in (started here, its CPU reported apart) or a real Iggy server (``--iggy``; its CPU when it
runs on this machine).

Reported per round: messages/s acknowledged, and CPU µs per message of the publisher process (from
the first ack to the last: start-up and connecting left out), of this feeder, and of Iggy.
Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import uuid

import multiprocess
import psutil

from bench.iggy_target import IggyView, Target, local_listener_pid, process_cpu_seconds
from bench.processes import REPO


def _block(batch: int, payload: int, stream: str, topic: str) -> bytearray:
    from pgsource.encode.frames import encode_partition_frames
    from pgsource.pipeline.block import BlockHead, encode_block

    body = '{"id":%d,"v":"' + "x" * max(payload - 24, 1) + '"}'
    payloads = [body % i for i in range(batch)]
    parts = encode_partition_frames(list(range(1, batch + 1)), [0] * batch, payloads, where="bench")
    return encode_block(BlockHead("w1", stream, topic, topic), parts, where="bench")


def run_round(args, address: str, username: str, password: str, stream: str, iggy_pid: int | None) -> dict:
    from pgsource.config.model import Config
    from pgsource.pipeline.block import encode_stop_block
    from pgsource.pipeline.channel import BlockChannel, Empty, get_event
    from workers.publisher import run_publisher
    from workers.tuning import widen_pipe

    config = Config.model_validate({
        "source": {"connection_string": "postgresql://unused/db", "mode": "polling", "tables": ["t"],
                   "max_in_flight_batches": args.in_flight},
        "iggy": {"address": address, "username": username, "password": password, "stream": stream, "topic": "t"},
    })
    ctx = multiprocess.get_context("spawn")
    channel = BlockChannel(ctx, args.in_flight + 2)
    widen_pipe(channel.pipe_fd())
    acks, status = ctx.Queue(), ctx.Queue()
    publisher = ctx.Process(target=run_publisher, args=(config, channel, {"w1": acks}, status), name="publisher")
    publisher.start()
    block = _block(args.batch, args.payload, stream, "t")
    blocks = args.messages // args.batch
    proc = psutil.Process(publisher.pid)
    sent = acked = 0
    first = None
    feeder_start = time.process_time()
    while acked < blocks:
        while sent < blocks and sent - acked < args.in_flight:
            block[8:16] = (sent + 1).to_bytes(8, "little")  # the outbox's numbering (block.set_block_seq)
            channel.put(block)
            sent += 1
        try:
            get_event(acks, timeout=60)
        except Empty:
            raise RuntimeError("no ack for 60 s (is Iggy there?)") from None
        acked += 1
        if first is None:  # the first ack: connected, topic made; measure from here
            first = (time.perf_counter(), _cpu(proc), process_cpu_seconds(iggy_pid), time.process_time(), acked)
            print(f"publisher pid {publisher.pid} sending", file=sys.stderr, flush=True)
    end = (time.perf_counter(), _cpu(proc), process_cpu_seconds(iggy_pid), time.process_time())
    channel.put(encode_stop_block())
    publisher.join(30)
    messages = (blocks - first[4]) * args.batch
    return {"messages": messages, "messages_per_s": messages / (end[0] - first[0]),
            "publisher_us_per_message": (end[1] - first[1]) / messages * 1e6,
            "feeder_us_per_message": (end[3] - first[3]) / messages * 1e6,
            "iggy_us_per_message": (end[2] - first[2]) / messages * 1e6 if iggy_pid else None,
            "feeder_total_s": end[3] - feeder_start, "load_1m": os.getloadavg()[0]}


def _cpu(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return times.user + times.system


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.publisher", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iggy", metavar="HOST:PORT", help="a real Iggy server (default: the stand-in, started here)")
    parser.add_argument("--iggy-username", default="iggy")
    parser.add_argument("--iggy-password", default="iggy")
    parser.add_argument("--messages", type=int, default=2_000_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--payload", type=int, default=400, help="bytes per message (bench_t's envelope: ~400)")
    parser.add_argument("--in-flight", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))
    from pgsource_testkit.iggy import IggyStandInProcess

    standin = None
    if args.iggy:
        target = Target(args.iggy, "iggy-server", local_listener_pid(args.iggy), args.iggy_username, args.iggy_password)
    else:
        standin = IggyStandInProcess().start()
        target = Target(standin.address, "stand-in", standin.pid)
    view = IggyView(target)
    results = {"command": " ".join(["python -m bench.publisher", *(argv if argv is not None else sys.argv[1:])]),
               "target": target.kind, "nproc": os.cpu_count(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
               "rounds": []}
    try:
        for round_ in range(args.repeat):
            stream = f"pub_{uuid.uuid4().hex[:8]}"
            figures = run_round(args, target.address, target.username, target.password, stream, target.pid)
            view.drop(stream)
            results["rounds"].append(figures)
            print(f"round {round_ + 1}: {figures['messages_per_s']:,.0f} messages/s; CPU µs/message: publisher"
                  f" {figures['publisher_us_per_message']:.3f}, feeder {figures['feeder_us_per_message']:.3f},"
                  f" {target.kind} {figures['iggy_us_per_message'] or 0:.3f}; load {figures['load_1m']:.1f}",
                  file=sys.stderr)
    finally:
        if standin is not None:
            standin.stop()
    for key in ("messages_per_s", "publisher_us_per_message", "iggy_us_per_message"):
        values = [r[key] for r in results["rounds"] if r[key] is not None]
        if values:
            results[key] = statistics.median(values)
    print(json.dumps({k: v for k, v in results.items() if k != "rounds"}, indent=1))
    if args.json:
        with open(args.json, "w") as out:
            json.dump(results, out, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
