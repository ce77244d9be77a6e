"""Readiness that means something: is work waiting while nothing moves? (``readiness``, ``probe``)."""

from pgsource.ops.health.probe import SourceProbe
from pgsource.ops.health.readiness import PublisherView, Readiness, Stuck, WorkerView, judge

__all__ = ["PublisherView", "Readiness", "SourceProbe", "Stuck", "WorkerView", "judge"]
