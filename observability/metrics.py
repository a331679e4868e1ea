"""Per-request metrics recorded where a request enters the cluster, in Prometheus form.

vLLM's engine metrics already reach Prometheus through Ray (``ray_vllm_*``: running and
waiting requests, KV-cache use, tokens, engine-side TTFT/TPOT). What they miss is added here:
requests by HTTP status (refused ones included), and latency seen from the entry point in
fine buckets, so a p50 read from them is within a few percent (vLLM's TTFT buckets jump
20 ms -> 40 ms). Ray exports each metric as ``ray_<name>`` from every node's metrics port.
"""

from __future__ import annotations

import math
from functools import cache

MODEL = "model"
STATUS = "status"

REQUESTS = "llm_cluster_requests"  # counter {model, status}
TTFT = "llm_cluster_request_ttft_seconds"  # histogram {model}: arrival -> first token sent
TPOT = "llm_cluster_request_tpot_seconds"  # histogram {model}: mean time per output token
LATENCY = "llm_cluster_request_latency_seconds"  # histogram {model}: arrival -> last byte
PROMPT_TOKENS = "llm_cluster_prompt_tokens"  # counter {model}
COMPLETION_TOKENS = "llm_cluster_completion_tokens"  # counter {model}


def exported(name: str, counter: bool = False) -> str:
    """The name Prometheus sees: Ray prefixes ``ray_``, counters end in ``_total``."""
    return f"ray_{name}_total" if counter else f"ray_{name}"


def geometric_buckets(low: float, high: float, ratio: float = 1.15) -> list[float]:
    """Bucket bounds from ``low`` to at least ``high``, each ``ratio`` times the last: a
    quantile interpolated inside one is off by a few percent at most."""
    count = math.ceil(math.log(high / low) / math.log(ratio)) + 1
    return [float(f"{low * ratio**i:.6g}") for i in range(count)]


LATENCY_BUCKETS = geometric_buckets(0.001, 600)
TPOT_BUCKETS = geometric_buckets(0.0001, 10)


class RequestMetrics:
    """The request metrics, created once per process (inside a Ray worker).

    The entry point records what a client sees (status, latency, TTFT); the replica records
    what its engine did for each finished request (tokens, TPOT), on either hot path.
    """

    def __init__(self) -> None:
        from ray.util import metrics  # only inside a Ray worker

        self.requests = metrics.Counter(REQUESTS, "Requests by model and HTTP status.",
                                        tag_keys=(MODEL, STATUS))  # fmt: skip
        self.ttft = metrics.Histogram(TTFT, "Time to first token at the entry point (s).",
                                      LATENCY_BUCKETS, (MODEL,))  # fmt: skip
        self.tpot = metrics.Histogram(TPOT, "Mean time per output token after the first (s).",
                                      TPOT_BUCKETS, (MODEL,))  # fmt: skip
        self.latency = metrics.Histogram(LATENCY, "Request latency at the entry point (s).",
                                         LATENCY_BUCKETS, (MODEL,))  # fmt: skip
        self.prompt_tokens = metrics.Counter(PROMPT_TOKENS, "Prompt tokens.", (MODEL,))
        self.completion_tokens = metrics.Counter(COMPLETION_TOKENS, "Generated tokens.", (MODEL,))

    def record_entry(self, model: str, status: int, latency_s: float, ttft_s: float | None):
        tags = {MODEL: model}
        self.requests.inc(1, {**tags, STATUS: str(status)})
        self.latency.observe(latency_s, tags)
        if ttft_s is not None:
            self.ttft.observe(ttft_s, tags)

    def record_engine(self, model: str, prompt: int, completion: int, tpot_s: float | None):
        tags = {MODEL: model}
        if prompt:
            self.prompt_tokens.inc(prompt, tags)
        if completion:
            self.completion_tokens.inc(completion, tags)
        if tpot_s:
            self.tpot.observe(tpot_s, tags)


@cache
def request_metrics() -> RequestMetrics:
    return RequestMetrics()


TENANT = "tenant"
KEY_ID = "key_id"
OUTCOME = "outcome"

GATEWAY_REQUESTS = "llm_cluster_gateway_requests"  # counter {model, tenant, key_id, outcome}
GATEWAY_TOKENS = "llm_cluster_gateway_tokens"  # counter {model, tenant, key_id, kind}


class GatewayMetrics:
    """Requests and tokens by tenant and key id (never the key itself), at the entry point.

    ``outcome``: ok, error, rate_limited, unauthorized, forbidden, unavailable (the limits
    could not be checked), cache_hit. ``kind``: prompt, completion.
    """

    def __init__(self) -> None:
        from ray.util import metrics  # only inside a Ray worker

        tags = (MODEL, TENANT, KEY_ID)
        self.requests = metrics.Counter(
            GATEWAY_REQUESTS, "Requests by tenant, key id and outcome.", (*tags, OUTCOME)
        )
        self.tokens = metrics.Counter(
            GATEWAY_TOKENS, "Tokens charged by tenant and key id.", (*tags, "kind")
        )

    def record(self, model: str, tenant: str, key_id: str, outcome: str,
               prompt: int = 0, completion: int = 0) -> None:  # fmt: skip
        tags = {MODEL: model, TENANT: tenant, KEY_ID: key_id}
        self.requests.inc(1, {**tags, OUTCOME: outcome})
        if prompt:
            self.tokens.inc(prompt, {**tags, "kind": "prompt"})
        if completion:
            self.tokens.inc(completion, {**tags, "kind": "completion"})


@cache
def gateway_metrics() -> GatewayMetrics:
    return GatewayMetrics()
