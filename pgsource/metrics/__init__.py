"""Prometheus metrics shared by every process (client_python multiprocess mode).

The supervisor sets ``PROMETHEUS_MULTIPROC_DIR`` (wiped at start) before any child is
spawned, so each process writes its own files there; only the supervisor serves
``/metrics``. Names follow ``pgsource_<subsystem>_<name>_<unit>``; labels are ``table``
and ``worker``, never a pid.
"""

from pgsource.metrics.registry import Metrics, serve_metrics

__all__ = ["Metrics", "serve_metrics"]
