"""Prometheus metrics of SPEC section 8.

One process: a registry per application instance. Several worker processes (`alice serve
--workers N` sets PROMETHEUS_MULTIPROC_DIR): prometheus_client's multiprocess mode, where every
worker writes its values to memory-mapped files in that directory and a scrape, whichever
worker answers it, sums the files of all of them. Counters and histograms add up over the
workers (those of a worker that has exited included); the gauges count live workers only.
"""

from __future__ import annotations

import atexit
import os

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def multiprocess_mode() -> bool:
    """Whether this process writes its metrics to the shared multiprocess directory."""
    return bool(os.environ.get(MULTIPROC_ENV))


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "alice_http_requests_total",
            "HTTP requests by route and status",
            ["method", "route", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "alice_http_request_duration_seconds",
            "HTTP request latency by route",
            ["method", "route"],
            registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self._request_children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}
        self.multiprocess = multiprocess_mode()
        if self.multiprocess:
            # A worker's gauges leave the sum when it exits (its live files are removed).
            atexit.register(multiprocess.mark_process_dead, os.getpid())
        self.open_streams = Gauge(
            "alice_open_streams", "SSE streams open", registry=r, multiprocess_mode="livesum"
        )
        self.tokens_streamed = Counter(
            "alice_tokens_streamed_total", "token events sent to clients", registry=r
        )
        self.reattaches = Counter(
            "alice_stream_reattach_total", "re-attached streams opened", registry=r
        )
        self.rate_limited = Counter(
            "alice_rate_limit_refusals_total", "requests refused by a rate limit", registry=r
        )
        self.replies_running = Gauge(
            "alice_generations_running",
            "replies being generated",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.replies_finished = Counter(
            "alice_generations_finished_total", "replies ended, by status", ["status"], registry=r
        )
        self.replies_reaped = Counter(
            "alice_generations_reaped_total", "replies of dead processes ended", registry=r
        )
        self.tokens_generated = Counter(
            "alice_generation_tokens_total", "text deltas generated", registry=r
        )
        self.unattended_tokens = Counter(
            "alice_generation_unattended_tokens_total",
            "text deltas generated while no reader was attached",
            registry=r,
        )
        self.ai_errors = Counter(
            "alice_ai_errors_total", "AI provider failures by cause", ["cause"], registry=r
        )
        self.ai_tokens = Counter(
            "alice_ai_tokens_total",
            "tokens of ended replies as the provider reported them, by model and kind",
            ["model", "kind"],
            registry=r,
        )
        # Accounts (SPEC section 13): e-mails sent and failed (SMTP down, slow or refusing).
        self.mails = Counter(
            "alice_mail_total",
            "e-mails handed to SMTP or the outbox, by outcome",
            ["kind", "outcome"],
            registry=r,
        )

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        # The labelled children are looked up once per (method, route, status): `labels()`
        # takes a lock and builds its key on every call. Routes are templates, so the keys
        # are as few as the label sets Prometheus keeps anyway.
        key = (method, route, status)
        children = self._request_children.get(key)
        if children is None:
            children = self._request_children[key] = (
                self.requests.labels(method, route, str(status)),
                self.latency.labels(method, route),
            )
        children[0].inc()
        children[1].observe(seconds)
        if status == 429:
            self.rate_limited.inc()

    def stream_opened(self, reattach: bool) -> None:
        self.open_streams.inc()
        if reattach:
            self.reattaches.inc()

    def stream_closed(self) -> None:
        self.open_streams.dec()

    def tokens_sent(self, n: int) -> None:
        self.tokens_streamed.inc(n)

    def reply_started(self) -> None:
        self.replies_running.inc()

    def reply_finished(self, status: str) -> None:
        self.replies_running.dec()
        self.replies_finished.labels(status).inc()

    def tokens(self, n: int, attended: bool) -> None:
        self.tokens_generated.inc(n)
        if not attended:
            self.unattended_tokens.inc(n)

    def reaped(self) -> None:
        self.replies_reaped.inc()

    def ai_error(self, cause: str) -> None:
        self.ai_errors.labels(cause).inc()

    def reply_tokens(self, model: str, input_tokens: int, output_tokens: int) -> None:
        """A reply's tokens (SPEC 15: what each model spends), counted when it ends."""
        if input_tokens:
            self.ai_tokens.labels(model, "input").inc(input_tokens)
        if output_tokens:
            self.ai_tokens.labels(model, "output").inc(output_tokens)

    def mail(self, kind: str, outcome: str) -> None:
        self.mails.labels(kind, outcome).inc()

    def render(self) -> bytes:
        if self.multiprocess:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)
