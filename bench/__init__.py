"""The throughput/latency benchmark of pgsource (``python -m bench.run``); see bench/README.md."""
