"""The gateway's Prometheus metrics, read from the router's backends at scrape time: requests,
errors, time to first byte, generated tokens and their seconds (tokens/s = their ratio), requests
in flight and waiting, and each backend's breaker (0 closed, 1 half-open, 2 open). Per model and
backend, under the seed documents' names: model_inference_time, model_tokens_generated,
model_load_time, model_cache_hit_rate; beside them the cold loads, what is loaded, and the replicas
gateway.models asks for."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric, SummaryMetricFamily
from prometheus_client.registry import Collector

from clusterai.placement.breaker import BREAKER_VALUES


class GatewayCollector(Collector):
    def __init__(self, gateway: Any):
        self.gateway = gateway

    def collect(self) -> Iterator[Metric]:
        backends = list(self.gateway.router.backends)
        labels = ["backend"]
        requests = CounterMetricFamily("gateway_requests", "Live requests sent to a backend", labels=labels)
        errors = CounterMetricFamily("gateway_errors", "Requests a backend failed (before or during the answer)",
                                     labels=labels)
        first = SummaryMetricFamily("gateway_time_to_first_byte_seconds", "From the request to the backend's "
                                    "first byte", labels=labels)
        tokens = CounterMetricFamily("gateway_generated_tokens", "Tokens generated, as backends report them",
                                     labels=labels)
        seconds = CounterMetricFamily("gateway_generation_seconds", "Seconds spent generating those tokens",
                                      labels=labels)
        inflight = GaugeMetricFamily("gateway_in_flight", "Requests in flight on a backend", labels=labels)
        breaker = GaugeMetricFamily("gateway_breaker_state", "0 closed, 1 half-open, 2 open", labels=labels)
        now = time.time()
        for b in backends:
            requests.add_metric([b.name], b.requests)
            errors.add_metric([b.name], b.errors)
            first.add_metric([b.name], count_value=b.answered, sum_value=b.first_byte_seconds)
            tokens.add_metric([b.name], b.tokens)
            seconds.add_metric([b.name], b.token_seconds)
            inflight.add_metric([b.name], b.inflight)
            breaker.add_metric([b.name], BREAKER_VALUES[b.breaker.state(now).value])
        queued = GaugeMetricFamily("gateway_queued", "Requests waiting for a free backend")
        queued.add_metric([], self.gateway.router.queued)
        yield from (requests, errors, first, tokens, seconds, inflight, breaker, queued)
        yield from self._per_model(backends)

    def _per_model(self, backends: list[Any]) -> Iterator[Metric]:
        labels = ["model", "backend"]
        inference = SummaryMetricFamily("model_inference_time", "Seconds from a live request to its last byte",
                                        labels=labels)
        generated = CounterMetricFamily("model_tokens_generated", "Tokens generated, as backends report them",
                                        labels=labels)
        load = SummaryMetricFamily("model_load_time", "Seconds a backend took to load the model (its answers' "
                                   "load_duration)", labels=labels)
        hits = GaugeMetricFamily("model_cache_hit_rate", "Share of requests that found the model loaded",
                                 labels=labels)
        cold = CounterMetricFamily("gateway_cold_loads", "Requests that had to load the model first", labels=labels)
        loaded = GaugeMetricFamily("gateway_model_loaded", "1 while the backend holds the model in memory",
                                   labels=labels)
        for b in backends:
            for model, stats in sorted(b.stats.items()):
                inference.add_metric([model, b.name], count_value=stats.answered, sum_value=stats.inference_seconds)
                generated.add_metric([model, b.name], stats.tokens)
                load.add_metric([model, b.name], count_value=stats.timed_loads, sum_value=stats.load_seconds)
                if stats.requests:
                    hits.add_metric([model, b.name], stats.warm / stats.requests)
                cold.add_metric([model, b.name], stats.cold_loads)
            for model in sorted(b.loaded):
                loaded.add_metric([model, b.name], 1)
        replicas = GaugeMetricFamily("gateway_model_replicas", "Backends gateway.models asks to keep the model",
                                     labels=["model"])
        for model, placement in sorted(self.gateway.settings.models.items()):
            replicas.add_metric([model], placement.replicas)
        yield from (inference, generated, load, hits, cold, loaded, replicas)
