"""Prometheus metrics of one service, in its own registry (two apps in one process, as in the
tests, do not share counters). Rows, queue and throughput are read from the engines when scraped."""

from __future__ import annotations

import threading
import time
from collections import deque

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

from .pool import EnginePool

# complete: the model ended it; stopped: a limit did; cancelled: the client left; error: the backend
# failed; invalid / unauthorized / too_large / busy: refused before generating (4xx, 503).
OUTCOMES = ("complete", "stopped", "cancelled", "error", "invalid", "unauthorized", "too_large", "busy")
# "page": the pieces the web page (serve/ui.py) asks for, which go to the pool, not through an endpoint.
ENDPOINTS = ("/v1/pieces", "/v1/pieces/stream", "/v1/prompts", "/healthz", "/readyz", "/metrics", "page")
PIECE_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320, 600)
PATCH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
WINDOW = 10.0  # seconds of steps behind the patches-per-second gauge


def endpoint_label(path: str) -> str:
    return path if path in ENDPOINTS else "other"  # unknown paths must not grow the label set


class ServiceMetrics:
    def __init__(self, pool: EnginePool) -> None:
        self.pool = pool
        self.registry = r = CollectorRegistry()
        self.requests = Counter("notagen_requests", "Requests by endpoint and outcome", ["endpoint", "outcome"],
                                registry=r)
        self.patches = Counter("notagen_patches", "Patches sampled, summed over rows and engines (a piece's last "
                                                     "sample, past its limit, and bars sampled again included)",
                               registry=r)
        self.first_bar = Histogram("notagen_time_to_first_bar_seconds", "From a piece request to its first closed bar",
                                   buckets=PIECE_BUCKETS, registry=r)
        self.inter_patch = Histogram("notagen_inter_patch_seconds", "Between one piece's successive patches",
                                     buckets=PATCH_BUCKETS, registry=r)
        self.latency = Histogram("notagen_request_seconds", "End to end, request to whole response, of pieces",
                                 ["endpoint"], buckets=PIECE_BUCKETS, registry=r)
        r.register(_PoolCollector(self))
        self._steps: deque[tuple[float, int]] = deque()
        self._lock = threading.Lock()
        self.mean_piece_seconds = 0.0  # running mean, for a 503's Retry-After
        for engine in pool.engines:
            engine.on_step.append(self._stepped)

    def _stepped(self, seconds: float, rows: int, lane_rows: int) -> None:  # on an engine thread
        self.patches.inc(rows)
        now = time.monotonic()
        with self._lock:
            self._steps.append((now, rows))
            while self._steps and self._steps[0][0] < now - WINDOW:
                self._steps.popleft()

    def patches_per_second(self) -> float:
        now = time.monotonic()
        with self._lock:
            return sum(rows for t, rows in self._steps if t >= now - WINDOW) / WINDOW

    def outcome(self, path: str, outcome: str, seconds: float | None = None) -> None:
        self.requests.labels(endpoint_label(path), outcome).inc()
        if seconds is not None:
            self.latency.labels(endpoint_label(path)).observe(seconds)
            self.mean_piece_seconds += 0.1 * (seconds - self.mean_piece_seconds) if self.mean_piece_seconds else seconds

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class _PoolCollector:
    """Gauges read from the engines at scrape time, one series per engine."""

    def __init__(self, metrics: ServiceMetrics) -> None:
        self.metrics = metrics

    def collect(self):
        pool = self.metrics.pool
        rows = GaugeMetricFamily("notagen_rows", "Rows (pieces in flight at most) per engine", labels=["engine"])
        active = GaugeMetricFamily("notagen_active_rows", "Rows generating a piece now", labels=["engine"])
        waiting = GaugeMetricFamily("notagen_queue_depth", "Pieces waiting for a row", labels=["engine"])
        for i, engine in enumerate(pool.engines):
            rows.add_metric([str(i)], engine.executor.rows)
            active.add_metric([str(i)], engine.active)
            waiting.add_metric([str(i)], pool.waiting(i))
        speed = GaugeMetricFamily("notagen_patches_per_second", f"Patches sampled per second over the last {WINDOW:g} s",
                                  value=self.metrics.patches_per_second())
        return [rows, active, waiting, speed]
