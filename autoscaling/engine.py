"""The simulation engine: one deployment, its replicas, Serve's control loop and our policy.

Per control tick (0.5 s as on the cluster's small nodes; 1 s is fine for long traces):

1. replicas whose cold start is over begin to serve;
2. the tick's arrivals join a FIFO queue as one cohort (count, mean prompt and output);
3. requests at the replicas advance by continuous batching (TPOT at the replicas' batch
   size) and leave when their output is done;
4. requests held longer than ``hold_timeout_s`` are rejected (503); while replicas run,
   arrivals beyond ``max_queued_requests`` per replica are refused at once (back-pressure);
5. the queue's head is admitted into free slots (``max_ongoing_requests`` per replica); a
   cohort's TTFT is its wait plus the replica model's TTFT at the batch it joins;
6. the replicas' and handles' load is sampled; like Serve, it is pushed every 2 s and the
   policy sees its average over ``look_back_period_s``;
7. the policy (autoscaling.policies.make_policy: the cluster's code) decides the target, with
   its state dict kept between ticks exactly as Serve keeps ``policy_state``; Serve starts
   replicas (ready after the cold start) or stops them (starting ones first).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from autoscaling import ttft_stats
from autoscaling.config import ScalingConfig
from autoscaling.policies import Load, make_policy
from autoscaling.replica_model import ReplicaModel
from autoscaling.traces import Trace

# Replicas and handles push their load to Serve's controller this often (cluster/ray_node.py
# sets RAY_SERVE_*_AUTOSCALING_METRIC_PUSH_INTERVAL_S to 2 s).
REPORT_S = 2.0
# Replicas report the TTFT p95 of this many seconds (deployments/engine_watch.py).
TTFT_WINDOW_S = 15.0


@dataclass(frozen=True)
class Deployment:
    """The model's replica bounds and per-replica request limit."""

    min_replicas: int = 1
    max_replicas: int = 8
    max_ongoing_requests: int = 64
    max_queued_requests: int | None = 64  # per running replica; beyond: 503 (None: no bound)


class ServeLoadView:
    """What Serve's controller hands the policy: the load sampled every tick, pushed every
    REPORT_S, averaged over the look-back window as of the last push."""

    def __init__(self, look_back_s: float) -> None:
        self.look_back_s = look_back_s
        self.samples: deque[tuple[float, float, float]] = deque()
        self.next_push = 0.0
        self.seen = (0.0, 0.0)  # ongoing, held

    def record(self, now: float, ongoing: float, held: float) -> None:
        self.samples.append((now, ongoing, held))
        while self.samples and self.samples[0][0] <= now - self.look_back_s:
            self.samples.popleft()
        if now >= self.next_push:
            n = len(self.samples)
            self.seen = (sum(s[1] for s in self.samples) / n, sum(s[2] for s in self.samples) / n)
            self.next_push = now + REPORT_S


@dataclass
class Tally:
    """Per-run totals and timeline windows."""

    windows: int
    arrivals: np.ndarray = field(init=False)
    running: np.ndarray = field(init=False)
    target: np.ndarray = field(init=False)
    ttft_hist: np.ndarray = field(init=False)
    total_hist: np.ndarray = field(init=False)
    within: float = 0.0
    admitted: float = 0.0
    held: float = 0.0
    rejected: float = 0.0
    refused: float = 0.0
    replica_seconds: float = 0.0
    replica_seconds_in_trace: float = 0.0
    scale_events: int = 0
    peak_replicas: int = 0

    def __post_init__(self) -> None:
        n = self.windows
        self.arrivals, self.running, self.target = np.zeros(n), np.zeros(n), np.zeros(n)
        self.ttft_hist = np.zeros((n, len(ttft_stats.EDGES) - 1))
        self.total_hist = np.zeros(len(ttft_stats.EDGES) - 1)


class Simulation:
    """One policy on one trace."""

    def __init__(
        self,
        trace: Trace,
        cfg: ScalingConfig,
        deployment: Deployment,
        replica: ReplicaModel,
        window_s: float | None = None,
    ) -> None:
        self.trace, self.cfg, self.dep, self.replica = trace, cfg, deployment, replica
        self.dt = trace.tick_s
        self.slots = replica.concurrency(deployment.max_ongoing_requests)
        default_window = max(self.dt, trace.duration_s / 1500)
        self.window_ticks = max(1, round((window_s or default_window) / self.dt))
        self.policy = make_policy(cfg)
        self.state: dict = {}
        self.view = ServeLoadView(cfg.look_back_period_s)
        self.ready = self.target = max(deployment.min_replicas, 1)  # Serve's initial_replicas
        self.starting: list[float] = []  # ready times of replicas in their cold start
        self.queue: deque[list[float]] = deque()  # [count, prompt, output, arrival_tick]
        self.active: list[list[float]] = []  # [count, remaining tokens]
        self.ongoing = 0.0
        self.queued = 0.0
        # The engines' TTFT p95 as replicas report it: (tick, count, p95) of recent cohorts.
        self.first_tokens: deque[tuple[int, float, float]] = deque()
        drain = math.ceil(cfg.hold_timeout_s / self.dt) + 1
        self.ticks = len(trace.count) + drain
        self.tally = Tally(math.ceil(self.ticks / self.window_ticks))

    def run(self) -> Tally:
        """Runs the trace, then lets held and running requests finish (the timeline and
        replica-seconds cover the trace only)."""
        for i in range(self.ticks):
            if i == len(self.trace.count):
                self.tally.replica_seconds_in_trace = self.tally.replica_seconds
            self._tick(i)
            if i >= len(self.trace.count) and not self.queue and not self.active:
                break
        return self.tally

    def _tick(self, i: int) -> None:
        now, dt, w = i * self.dt, self.dt, i // self.window_ticks
        self._start_ready(now)
        if i < len(self.trace.count) and self.trace.count[i] > 0:
            self._arrive(i, w)
        self._decode(dt)
        self._reject(i)
        self._admit(i, w)
        self.view.record(now, self.ongoing, self.queued)
        self._decide(now)
        replicas = self.ready + len(self.starting)
        self.tally.replica_seconds += replicas * dt
        self.tally.running[w] += self.ready
        self.tally.target[w] += self.target
        self.tally.peak_replicas = max(self.tally.peak_replicas, replicas)

    def _arrive(self, i: int, w: int) -> None:
        """The tick's arrivals join the queue, less those the replicas' queues refuse."""
        c = float(self.trace.count[i])
        self.tally.arrivals[w] += c
        prompt, output = self.trace.prompt_sum[i] / c, self.trace.output_sum[i] / c
        bound = self.dep.max_queued_requests
        if bound is not None and self.ready > 0:
            room = self.ready * (self.slots + bound) - self.ongoing - self.queued
            refused = min(c, max(0.0, c - math.floor(max(room, 0.0))))
            self.tally.refused += refused
            c -= refused
        if c > 0:
            self.queue.append([c, prompt, output, i])
            self.queued += c

    def _start_ready(self, now: float) -> None:
        while self.starting and self.starting[0] <= now + 1e-9:
            self.starting.pop(0)
            self.ready += 1

    def _batch(self, extra: float = 0.0) -> float:
        return (self.ongoing + extra) / max(self.ready, 1)

    def _decode(self, dt: float) -> None:
        """Every running request advances dt / TPOT tokens; finished cohorts leave."""
        if not self.active:
            return
        step = dt / self.replica.tpot(self._batch())
        kept = []
        for cohort in self.active:
            cohort[1] -= step
            if cohort[1] > 0:
                kept.append(cohort)
            else:
                self.ongoing -= cohort[0]
        self.active = kept
        if not kept:
            self.ongoing = 0.0

    def _reject(self, i: int) -> None:
        """Requests held longer than hold_timeout_s get a 503."""
        limit = i - self.cfg.hold_timeout_s / self.dt
        while self.queue and self.queue[0][3] < limit:
            count = self.queue.popleft()[0]
            self.queued -= count
            self.tally.rejected += count

    def _admit(self, i: int, w: int) -> None:
        """The queue's head into free slots; each admitted part's TTFT is recorded."""
        free = self.ready * self.slots - self.ongoing
        while self.queue and free >= 1:
            head = self.queue[0]
            take = min(head[0], math.floor(free))
            wait = max(0.0, (i - head[3] - 0.5) * self.dt)
            median, sigma = self.replica.ttft(self._batch(take), head[1])
            self._record(take, wait, median, sigma, w)
            self.first_tokens.append((i, take, median * math.exp(1.645 * sigma)))
            tpot = self.replica.tpot(self._batch(take))
            self.active.append([take, max(0.0, head[2] - 1) + median / tpot])
            self.ongoing += take
            self.queued -= take
            free -= take
            if take >= head[0]:
                self.queue.popleft()
            else:
                head[0] -= take

    def _record(self, count: float, wait: float, median: float, sigma: float, w: int) -> None:
        t = self.tally
        t.admitted += count
        if wait > 0:
            t.held += count
        t.within += count * ttft_stats.share_within(self.cfg.ttft_target_s, wait, median, sigma)
        mass = count * ttft_stats.histogram(wait, median, sigma)
        t.ttft_hist[w] += mass
        t.total_hist += mass

    def _decide(self, now: float) -> None:
        ongoing, held = self.view.seen
        if self.ready == 0 and self.queued > 0:  # Serve's handle reports a cold start at once
            held = max(held, self.queued)
        load = Load(
            now=now,
            replicas=self.ready,
            target=self.target,
            ongoing=ongoing,
            held=held,
            ttft_p95=self._engine_ttft_p95(now),
            min_replicas=self.dep.min_replicas,
            max_replicas=self.dep.max_replicas,
        )
        want = self.policy(load, self.state).replicas
        if want != self.target:
            self.tally.scale_events += 1
            self.target = want
        self._resize(now)

    def _engine_ttft_p95(self, now: float) -> float | None:
        """What replicas report: their engines' TTFT p95 over the last TTFT_WINDOW_S (the
        engine's TTFT starts when a replica admits the request, not while it is held)."""
        oldest = (now - TTFT_WINDOW_S) / self.dt
        while self.first_tokens and self.first_tokens[0][0] < oldest:
            self.first_tokens.popleft()
        total = sum(count for _, count, _ in self.first_tokens)
        if total == 0:
            return None
        return sum(count * p95 for _, count, p95 in self.first_tokens) / total

    def _resize(self, now: float) -> None:
        """Serve's reconciliation: start replicas up to the target, or stop the newest
        starting ones first, then running ones (their requests move to the others)."""
        current = self.ready + len(self.starting)
        for _ in range(self.target - current):
            self.starting.append(now + self.replica.cold_start_s)
        for _ in range(current - self.target):
            if self.starting:
                self.starting.pop()
            else:
                self.ready -= 1
