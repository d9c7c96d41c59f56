"""Prometheus metrics of one server (prometheus-client; a registry per app, so several apps share a process)."""
from __future__ import annotations

import collections
import threading
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import CONTENT_TYPE_LATEST  # noqa: F401  (re-exported for the /metrics route)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
TOKENS_PER_SECOND_WINDOW = 10.0          # seconds of finished tokens the tokens/s gauge averages over


class ServingMetrics:
    def __init__(self):
        r = self.registry = CollectorRegistry()
        self.requests = Counter("paddle2ort_requests", "HTTP requests by route and status code",
                                ["route", "status"], registry=r)
        self.latency = Histogram("paddle2ort_request_latency_seconds", "request latency (to the last byte)",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.ttft_hist = Histogram("paddle2ort_time_to_first_token_seconds",
                                   "from admission to the first generated token", ["model"],
                                   buckets=LATENCY_BUCKETS, registry=r)
        self.generated = Counter("paddle2ort_generated_tokens", "tokens generated", ["model"], registry=r)
        self.tps = Gauge("paddle2ort_generated_tokens_per_second",
                         f"tokens generated per second over the last {TOKENS_PER_SECOND_WINDOW:g} s", ["model"],
                         registry=r)
        self.queue = Gauge("paddle2ort_queue_depth", "requests waiting for a batch slot", ["model"], registry=r)
        self.active = Gauge("paddle2ort_active_rows", "rows (choices) in the decode batch", ["model"], registry=r)
        self.occupancy = Gauge("paddle2ort_batch_occupancy", "active rows / max batch", ["model"], registry=r)
        self.step_rows = Histogram("paddle2ort_decode_step_rows", "rows a decode step advanced", ["model"],
                                   buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=r)
        self.step_time = Histogram("paddle2ort_decode_step_seconds", "time of one batched decode step", ["model"],
                                   buckets=LATENCY_BUCKETS, registry=r)
        self.classify_batch = Histogram("paddle2ort_classify_batch_texts", "texts a classifier batch ran",
                                        ["model"], buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=r)
        self._window: dict[str, collections.deque] = collections.defaultdict(collections.deque)
        self._lock = threading.Lock()

    # the engine's hooks (engine thread)
    def step(self, rows: int, max_batch: int, tokens: int, seconds: float, model: str = "") -> None:
        self.step_rows.labels(model).observe(rows)
        self.step_time.labels(model).observe(seconds)

    def ttft(self, model: str, seconds: float) -> None:
        self.ttft_hist.labels(model).observe(seconds)

    def tokens(self, model: str, n: int) -> None:
        self.generated.labels(model).inc(n)
        now = time.monotonic()
        with self._lock:
            w = self._window[model]
            w.append((now, n))
            self._update_tps(model, now)

    def load(self, model: str, queued: int, active: int, max_batch: int) -> None:
        self.queue.labels(model).set(queued)
        self.active.labels(model).set(active)
        self.occupancy.labels(model).set(active / max_batch)

    # the app's hooks
    def request(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def _update_tps(self, model: str, now: float) -> None:
        w = self._window[model]
        while w and now - w[0][0] > TOKENS_PER_SECOND_WINDOW:
            w.popleft()
        self.tps.labels(model).set(sum(n for _, n in w) / TOKENS_PER_SECOND_WINDOW)

    def render(self) -> bytes:
        now = time.monotonic()
        with self._lock:
            for model in list(self._window):
                self._update_tps(model, now)
        return generate_latest(self.registry)
