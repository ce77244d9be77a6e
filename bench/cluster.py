"""What replication costs pgsource: the same benchmark into one iggy-server and into a 3-node cluster.

``python -m bench.cluster --server /path/to/iggy-server --rows 200000 --json-prefix out``: for each
``--nodes`` count (default ``1,3``), in this order and in one sitting, starts the server from the
binary (one plain node, or a ``[cluster]`` of N nodes on loopback, ``tests/real/cluster.py``),
runs ``python -m bench.run --iggy <node 0> --iggy-pids <every node> --latency-visible`` on it
(polling and CDC throughput, latency at ``--latency-rate``), writes ``<prefix>-<N>node-<round>.json``
and stops the server. ``--nodes 1,3,1,3,1,3`` interleaves the two, so that a change of the
machine's load touches both alike. The CPU of the server is the sum over its nodes. The machine's load average is
recorded before and after each run (``load_before``/``load_after``): on a shared machine a figure
taken under a higher load is to be run again. Nothing of the server is part of this repository.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

from bench.processes import REPO


def _start(binary: str, nodes: int, workdir: str):
    sys.path.insert(0, str(REPO))
    from tests.real.cluster import IggyCluster
    from tests.real.server import IggyServerProcess

    if nodes == 1:
        server = IggyServerProcess(binary, data_dir=os.path.join(workdir, "single")).start()
        return server, server.address, [server.pid]
    cluster = IggyCluster(binary, nodes, data_dir=os.path.join(workdir, f"cluster{nodes}")).start()
    return cluster, cluster.addresses[0], [node.pid for node in cluster.nodes]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cluster", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", required=True, help="the iggy-server binary")
    parser.add_argument("--nodes", default="1,3", help="comma-separated node counts, run in this order")
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--only", default="polling,cdc,latency")
    parser.add_argument("--cdc-transport", default="replication")
    parser.add_argument("--latency-seconds", type=float, default=30)
    parser.add_argument("--latency-rate", type=int, default=2000)
    parser.add_argument("--json-prefix", required=True, help="writes <prefix>-<N>node-<round>.json")
    args = parser.parse_args(argv)

    from bench import run

    workdir = tempfile.mkdtemp(prefix="pgsource-bench-cluster-")
    try:
        seen: dict[int, int] = {}
        for nodes in [int(n) for n in args.nodes.split(",")]:
            seen[nodes] = seen.get(nodes, 0) + 1  # "1,3,1,3": interleaved rounds, one file each
            server, address, pids = _start(args.server, nodes, workdir)
            path = f"{args.json_prefix}-{nodes}node-{seen[nodes]}.json"
            load_before = os.getloadavg()
            try:
                run.main(["--rows", str(args.rows), "--repeat", str(args.repeat), "--only", args.only,
                          "--cdc-transport", args.cdc_transport, "--latency-seconds", str(args.latency_seconds),
                          "--latency-rate", str(args.latency_rate), "--iggy", address,
                          "--iggy-pids", ",".join(map(str, pids)), "--latency-visible", "--json", path])
            finally:
                server.close()
            with open(path) as handle:
                results = json.load(handle)
            results.update(nodes=nodes, load_before=load_before, load_after=os.getloadavg(),
                           finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
            with open(path, "w") as handle:
                json.dump(results, handle, indent=2)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # apache-iggy 0.9.0 may abort the interpreter's teardown (see pgsource/sink/sockets.py)
