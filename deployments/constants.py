"""Serving constants; each can be overridden by an ``LLM_CLUSTER_*`` environment variable."""

import os

# KV-cache size (GiB) a CPU replica reserves when its config does not say; vLLM's CPU
# default (a fraction of all memory) fails on small machines.
CPU_KV_CACHE_GIB = int(os.environ.get("LLM_CLUSTER_CPU_KV_CACHE_GIB", "1"))
# How long /health waits for every model's replicas to answer before reporting 503.
HEALTH_TIMEOUT_S = float(os.environ.get("LLM_CLUSTER_HEALTH_TIMEOUT_S", "5"))
# Name of the Serve application the CLI deploys.
APP_NAME = os.environ.get("LLM_CLUSTER_APP_NAME", "llm-cluster")
