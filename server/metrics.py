"""Prometheus exposition built from the shared state in Redis (so any API replica reports the same).

Workers count outcomes and inference seconds in the ``<prefix>:stats`` hash; queue depth and the
number of requests per status come from the queue lists and the status sets at scrape time.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from server.queue.records import INFERENCE_BUCKETS_S

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(frozen=True)
class Snapshot:
    """Everything one scrape reports."""

    queue_depth: Mapping[str, int]
    by_status: Mapping[str, int]
    stats: Mapping[str, str]
    workers_alive: int


class SnapshotCollector(Collector):
    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterable[Metric]:
        snap = self.snapshot
        depth = GaugeMetricFamily("bitdance_queue_depth", "Requests waiting in each queue", labels=["queue"])
        for queue, count in snap.queue_depth.items():
            depth.add_metric([queue], count)
        yield depth
        status = GaugeMetricFamily("bitdance_requests", "Requests currently in each status", labels=["status"])
        for name, count in snap.by_status.items():
            status.add_metric([name], count)
        yield status
        done = CounterMetricFamily(
            "bitdance_requests_completed",
            "Completed requests by outcome (ok or error_type)",
            labels=["outcome"],
        )
        for key, value in snap.stats.items():
            if key.startswith("completed:"):
                done.add_metric([key.split(":", 1)[1]], float(value))
        yield done
        submitted = CounterMetricFamily("bitdance_requests_submitted", "Accepted requests")
        submitted.add_metric([], float(snap.stats.get("submitted", 0)))
        yield submitted
        yield self._inference_histogram()
        workers = GaugeMetricFamily("bitdance_workers_alive", "Workers with a recent heartbeat")
        workers.add_metric([], snap.workers_alive)
        yield workers

    def _inference_histogram(self) -> Metric:
        stats = self.snapshot.stats
        buckets = [(str(b), float(stats.get(f"inference_le:{b}", 0))) for b in INFERENCE_BUCKETS_S]
        count = float(stats.get("inference_count", 0))
        buckets.append(("+Inf", count))
        histogram = HistogramMetricFamily("bitdance_inference_seconds", "Seconds spent in pipe.generate")
        histogram.add_metric([], buckets, sum_value=float(stats.get("inference_sum", 0)))
        return histogram


def render(snapshot: Snapshot) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(snapshot))
    return bytes(generate_latest(registry))
