"""Run the Iggy stand-in (for tests and local use, not an Iggy server) until SIGTERM.

``python -m pgsource_testkit.iggy --host 127.0.0.1 --port 8090`` prints the address
it listens on as one line (``127.0.0.1:8090``) once it accepts connections, and
exits on SIGTERM or SIGINT, or when the process that started it goes away.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading

from .server import IggyStandIn


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pgsource_testkit.iggy", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--username", default="iggy")
    parser.add_argument("--password", default="iggy")
    parser.add_argument("--refuse-sdk-topic-options", action="store_true",
                        help="refuse the create-topic options apache-iggy 0.9.0 sends (UnsupportedOptionKey), as a"
                             " server older than the SDK does (the 0.9.0-edge.5 snapshot)")
    args = parser.parse_args(argv)

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    parent = os.getppid()

    standin = IggyStandIn(args.host, args.port, args.username, args.password,
                          accept_wheel_topic_options=not args.refuse_sdk_topic_options).start()
    print(standin.address, flush=True)
    try:
        while not stop.wait(0.5):
            if os.getppid() != parent:
                break
    finally:
        standin.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
