"""Live bounds: a model's min/max replicas (or a pinned count) changed on a running cluster.

One small detached actor holds them; ``llm-cluster scale`` writes it, and each model's
policy, inside Serve's controller, reads it without blocking (``LiveBounds``). Serve's own
bounds stay wide (0 to the ceiling), so a change takes effect at the next control-loop tick:
no redeploy, no replica restarted, no request dropped.

Serve 2.60's external scaler (per application, plus the dashboard's REST scale endpoint) was
the other way; it requires Serve's autoscaling to be off for the whole application and sets
a count only, so a pin would stop every model's policy and min/max could not be kept.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, dataclass
from typing import Any

import ray

NAMESPACE = "llm-cluster"
ACTOR_NAME = "scaling-control"
POLL_S = 1.0


@dataclass(frozen=True)
class Bounds:
    min_replicas: int
    max_replicas: int
    pinned: int | None = None  # a fixed count: the policy is suspended while set
    ceiling: int = 8  # Serve's max_replicas for the model: the bounds move below it

    def check(self) -> None:
        """Raises ValueError naming the bad value."""
        ceiling = self.ceiling
        if self.min_replicas < 0:
            raise ValueError(f"--min must be 0 or more, not {self.min_replicas}")
        if self.max_replicas < 1:
            raise ValueError(f"--max must be 1 or more, not {self.max_replicas}")
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"--min {self.min_replicas} exceeds --max {self.max_replicas}")
        if self.max_replicas > ceiling:
            raise ValueError(f"--max {self.max_replicas} exceeds the ceiling {ceiling} "
                             "(the model's replica_ceiling)")  # fmt: skip
        # Pinned at 0, Serve would still wake the model for each request and the pin would
        # stop it again: a model sleeps through --min 0 and its idle time instead.
        if self.pinned is not None and not 1 <= self.pinned <= ceiling:
            raise ValueError(f"--replicas must be between 1 and {ceiling}, not {self.pinned}")


@ray.remote(num_cpus=0, max_restarts=-1)
class ScalingControl:
    """Per model: live bounds, and the policy's latest decision (for `status`)."""

    def __init__(self, bounds: dict[str, dict[str, Any]]) -> None:
        self._bounds = bounds
        self._decisions: dict[str, dict[str, Any]] = {}

    def reset(self, bounds: dict[str, dict[str, Any]]) -> None:
        self._bounds, self._decisions = bounds, {}

    def bounds(self, model_id: str) -> dict[str, Any] | None:
        return self._bounds.get(model_id)

    def set_bounds(self, model_id: str, bounds: dict[str, Any]) -> None:
        self._bounds[model_id] = bounds

    def report(self, model_id: str, decision: dict[str, Any]) -> None:
        self._decisions[model_id] = decision

    def snapshot(self) -> dict[str, Any]:
        return {"bounds": self._bounds, "decisions": self._decisions}


def start(bounds: dict[str, Bounds]) -> Any:
    """Creates the actor (or resets an existing one) with the config's bounds."""
    initial = {model: asdict(b) for model, b in bounds.items()}
    actor = ScalingControl.options(  # type: ignore[attr-defined]
        name=ACTOR_NAME, namespace=NAMESPACE, lifetime="detached", get_if_exists=True
    ).remote(initial)
    ray.get(actor.reset.remote(initial))
    return actor


def handle() -> Any:
    """The running cluster's actor; raises ValueError when there is none."""
    return ray.get_actor(ACTOR_NAME, namespace=NAMESPACE)


def stop() -> None:
    with contextlib.suppress(ValueError):  # no actor: nothing to stop
        ray.kill(handle())


class LiveBounds:
    """A model's live bounds as seen by its policy: refreshed about every second in the
    background (one actor call in flight at most), never waited for; the config's bounds
    until the first answer or when the actor is gone."""

    def __init__(self, model_id: str, default: Bounds) -> None:
        self.model_id, self.current = model_id, default
        self._actor: Any = None
        self._pending: Any = None
        self._next_poll = 0.0
        self._reported: dict[str, Any] | None = None

    def get(self) -> Bounds:
        now = time.monotonic()
        if self._pending is not None:
            ready, _ = ray.wait([self._pending], timeout=0)
            if ready:
                self._take(self._pending)
                self._pending = None
        if self._pending is None and now >= self._next_poll:
            self._next_poll = now + POLL_S
            actor = self._find_actor()
            if actor is not None:
                self._pending = actor.bounds.remote(self.model_id)
        return self.current

    def report(self, decision: dict[str, Any]) -> None:
        """Tells `status` the policy's latest decision (only when it changed)."""
        if decision != self._reported and self._actor is not None:
            self._actor.report.remote(self.model_id, decision)
            self._reported = decision

    def _take(self, ref: Any) -> None:
        try:
            value = ray.get(ref, timeout=0)
        except Exception:  # the actor restarted or is gone: look it up again
            self._actor = None
            return
        if value is not None:
            self.current = Bounds(**value)

    def _find_actor(self) -> Any:
        if self._actor is None and ray.is_initialized():  # outside a cluster: config bounds
            try:
                self._actor = handle()
            except ValueError:
                self._next_poll = time.monotonic() + 5 * POLL_S
        return self._actor
