"""Serving constants; each can be overridden by an ``LLM_CLUSTER_*`` environment variable."""

import os

# KV-cache size (GiB) a CPU replica reserves when its config does not say; vLLM's CPU
# default (a fraction of all memory) fails on small machines.
CPU_KV_CACHE_GIB = int(os.environ.get("LLM_CLUSTER_CPU_KV_CACHE_GIB", "1"))
# How long /health waits for every model's replicas to answer before reporting 503.
HEALTH_TIMEOUT_S = float(os.environ.get("LLM_CLUSTER_HEALTH_TIMEOUT_S", "5"))
# Name of the Serve application the CLI deploys.
APP_NAME = os.environ.get("LLM_CLUSTER_APP_NAME", "llm-cluster")

# The hot path on a head `llm-cluster up` starts (shared/ENVIRONMENT.md has the anchors).
# HAProxy in front of the ingress replicas instead of Serve's Python proxy actor: one C hop
# per streamed chunk instead of a Python process and a Ray RPC.
HA_PROXY = os.environ.get("LLM_CLUSTER_HA_PROXY", "1") == "1"
# HAProxy threads; Ray's default (4) oversubscribes a 2-core machine.
HAPROXY_THREADS = int(os.environ.get("LLM_CLUSTER_HAPROXY_THREADS", "1"))
# Serve runs user code on a second event loop in its own thread by default, so every chunk
# of a direct-ingress response crosses threads (and the GIL) once more. "0" runs the app on
# the replica's main loop, as vLLM's own server does.
SERVE_USER_CODE_THREAD = os.environ.get("LLM_CLUSTER_SERVE_USER_CODE_THREAD", "0") == "1"
# Niceness of Ray's worker processes (replicas, engines). Ray's default, 15, makes the
# serving path yield to every other process; 0 is what a bare vLLM server runs at.
WORKER_NICENESS = int(os.environ.get("LLM_CLUSTER_WORKER_NICENESS", "0"))
# CPU replicas on nodes with at most this many cores run vLLM's engine core without
# spin-waiting (callbacks.py).
SMALL_NODE_MAX_CORES = int(os.environ.get("LLM_CLUSTER_SMALL_NODE_MAX_CORES", "2"))
# Period of the Serve controller's loop on a head of at most SMALL_NODE_MAX_CORES cores. At
# Ray's 0.1 s an idle controller took 4.7% of a core (and the GCS it polls 2.1%) on 2 cores;
# at 0.5 s, 2.0% (1.0%), and during a concurrency-16 pass 0.25-0.31 s of CPU instead of
# 0.54-0.83 s, all of it from the core the replica and engine core share. Deploys, scaling
# and health changes are acted on up to 0.4 s later.
SMALL_NODE_CONTROL_LOOP_S = float(os.environ.get("LLM_CLUSTER_SMALL_NODE_CONTROL_LOOP_S", "0.5"))
# Niceness `up` gives Ray's control plane (GCS, dashboard, agents, monitors, Serve's controller)
# on a head of at most SMALL_NODE_MAX_CORES cores, so that it yields the shared core to the
# replica, its engine core, HAProxy and the clients. Alternating concurrency-16 passes on one
# 2-core cluster: time to first token 0.91x (median of 8 pairs, lower in 9 of 13 pairs), tokens/s
# unchanged. 0 keeps Ray's priorities.
SMALL_NODE_CONTROL_PLANE_NICENESS = int(
    os.environ.get("LLM_CLUSTER_SMALL_NODE_CONTROL_PLANE_NICENESS", "10")
)
# On a head of at most SMALL_NODE_MAX_CORES cores, what shares the core vLLM leaves free with
# the replica runs under SCHED_BATCH: Ray's control plane, HAProxyManager, HAProxy (`up`) and
# the engine core (vllm_plugin.py). Such a thread still gets its fair share of the CPU but no
# longer preempts the replica's event loop each time it wakes (HAProxy for every chunk, the
# engine core every 0.1 ms while it polls its worker). Alternating concurrency-16 passes on one
# 2-core cluster, switched at run time (the raylet too, which `up` leaves alone: replicas it
# starts would inherit the policy): time to first token 107 vs 165 ms (lower in 6 of 6 cycles),
# 1349 vs 1078 tokens/s; as shipped, across restarts: 118 vs 147 ms, 1262 vs 1181 tokens/s
# (benchmarks/README.md). "0" keeps SCHED_OTHER.
SMALL_NODE_SCHED_BATCH = os.environ.get("LLM_CLUSTER_SMALL_NODE_SCHED_BATCH", "1") == "1"
# For how long after its last message a reader still spins (sched_yield) as vLLM does before
# it sleeps. Off by default: 0.5 ms took a bare server's concurrency-1 TPOT from 5.5 to
# 4.3 ms (vLLM's full spin: 3.5 ms), but inside llm-cluster two full benchmark runs of the
# same day, with and without it, had the same ratios to bare vLLM (concurrency-1 TPOT
# 1.74x / 1.72x, concurrency-16 throughput 0.74x / 0.75x; benchmarks/README.md).
ENGINE_SPIN_S = float(os.environ.get("LLM_CLUSTER_ENGINE_SPIN_S", "0"))
