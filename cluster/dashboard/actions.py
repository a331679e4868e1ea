"""What the dashboard's controls do: the same as `llm-cluster scale` and `train stop`.

A scale request is validated like the CLI's options (``control.Bounds.check``) and applied
through ``serving.set_bounds``; errors name the request's field, in the OpenAI error shape
the server renders.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from cluster import serving

# The CLI's option names in Bounds.check()'s messages -> this API's fields.
_FIELDS = {"--min": "min_replicas", "--max": "max_replicas", "--replicas": "replicas"}


class ActionError(Exception):
    """A refused action: HTTP status, message and the offending field."""

    def __init__(self, status: int, message: str, param: str | None = None,
                 code: str | None = None) -> None:  # fmt: skip
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


class ScaleRequest(BaseModel):
    """``POST /api/models/{id}/scale``: any of new bounds, a pinned count, or back to auto."""

    model_config = ConfigDict(extra="forbid", strict=True)

    min_replicas: int | None = Field(None, description="Fewest replicas (0: may sleep).")
    max_replicas: int | None = Field(None, description="Most replicas (up to the ceiling).")
    replicas: int | None = Field(None, description="Pin this count (the policy pauses).")
    auto: bool | None = Field(None, description="true: unpin, the policy decides again.")

    def change(self) -> dict[str, int | None]:
        """The change for ``serving.set_bounds``; raises ActionError when it says nothing
        or contradicts itself."""
        if self.replicas is not None and self.auto:
            raise ActionError(400, "replicas (a pin) and auto exclude each other", "auto")
        change = serving.bounds_change(
            self.min_replicas, self.max_replicas, self.replicas, bool(self.auto)
        )
        if not change:
            raise ActionError(400, "nothing to change: give min_replicas, max_replicas, "
                              "replicas or auto", None)  # fmt: skip
        return change


def bounds_error(message: str) -> ActionError:
    """Bounds.check()'s message with the API's field names, naming the first field in it."""
    hits = sorted((message.find(flag), name) for flag, name in _FIELDS.items() if flag in message)
    for flag, name in _FIELDS.items():
        message = message.replace(flag, name)
    return ActionError(400, message, hits[0][1] if hits else None)


class ClusterActions:
    """The controls, run against the cluster this process is connected to."""

    def __init__(self, collector: Any) -> None:
        self._collector = collector

    async def scale(self, model_id: str, request: ScaleRequest) -> dict[str, Any]:
        change = request.change()
        if model_id not in self._collector.models:
            raise ActionError(404, f"no model {model_id!r} is served", "model", "model_not_found")
        try:
            bounds = await asyncio.to_thread(serving.set_bounds, model_id, change)
        except ValueError as exc:
            raise bounds_error(str(exc)) from None
        return {"model": model_id, **dataclasses.asdict(bounds)}

    async def stop_job(self, job_id: str) -> dict[str, Any]:
        try:
            stopped = await self._collector.stop_job(job_id)
        except KeyError:
            raise ActionError(404, f"no job {job_id!r}", "job_id", "job_not_found") from None
        return {"id": job_id, "stopped": stopped}
