"""The supervisor's HTTP endpoint: ``/metrics``, ``/healthz``, ``/readyz``, and 404 for anything else.

prometheus-client's own server answers every path with the metrics page, so a probe
pointed anywhere got 200 even while the pipeline was stalled. This one is a small stdlib
``ThreadingHTTPServer`` bound to ``metrics.host``:

- ``/metrics``: every process's metrics (multiprocess collector) plus what the supervisor
  collects at scrape time (``collectors``);
- ``/healthz`` and ``/readyz``: the answers of ``health`` (an object with ``healthz()`` and
  ``readyz()``, each returning ``(ok, body)``): 200 or 503 with a short JSON body.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

log = logging.getLogger("pgsource.metrics")


class _Handler(BaseHTTPRequestHandler):
    server_version = "pgsource"
    server: _Server

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._metrics()
        elif path in ("/healthz", "/readyz") and self.server.health is not None:
            try:
                ok, body = self.server.health.healthz() if path == "/healthz" else self.server.health.readyz()
            except Exception as exc:  # noqa: BLE001 - a probe must get an answer, not a reset connection
                log.exception("%s failed", path)
                ok, body = False, {"status": "error", "error": str(exc)}
            self._send(200 if ok else 503, "application/json", json.dumps(body).encode() + b"\n")
        else:
            self._send(404, "text/plain; charset=utf-8", b"not found: /metrics, /healthz, /readyz\n")

    def _metrics(self) -> None:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        self._send(200, CONTENT_TYPE_LATEST, generate_latest(self.server.registry))

    def _send(self, code: int, content_type: str, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the stdlib's signature
        log.debug("%s " + format, self.address_string(), *args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address, registry, health) -> None:
        super().__init__(address, _Handler)
        self.registry = registry
        self.health = health


def serve(host: str, port: int, *, health=None, collectors=()) -> _Server:
    """Start the endpoint on a daemon thread; ``server.server_port`` is the port it got."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        MultiProcessCollector(registry)
    for collector in collectors:
        registry.register(collector)
    server = _Server((host, port), registry, health)
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    return server
