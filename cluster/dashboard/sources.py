"""The dashboard's blocking reads of the cluster (Ray's GCS, Serve, the Jobs API).

Each call is a round trip to the head, so the collector runs them in a thread and far less
often than it scrapes metrics: nodes every 10 s, replica states every 3 s, jobs when the
page asks and at most every 5 s.
"""

from __future__ import annotations

import logging
from typing import Any

import ray

from cluster import jobs, serving

logger = logging.getLogger(__name__)

MAX_JOBS = 20  # the newest training jobs listed


def metrics_urls() -> list[str]:
    """Every alive node's metrics endpoint (Ray's per-node Prometheus exporter)."""
    return [
        f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"
        for node in ray.nodes()
        if node.get("Alive") and node.get("MetricsExportPort")
    ]


def model_states() -> dict[str, dict[str, Any]]:
    """Per model: Serve's deployment status and replica states, the live bounds, the
    policy's target and its last reason. Serve's own dashboard API is not asked (a
    heavier call): the policy's decision is the target Serve applies."""
    _, rows = serving.deployment_statuses()
    scaling = serving.scaling("")  # "": the policy's target, no HTTP round trip
    states: dict[str, dict[str, Any]] = {}
    for row in rows:
        scale = scaling.get(row.name)
        if scale is None:
            continue  # the ingress, not a model
        b = scale.bounds
        states[row.name] = {
            "status": row.status,
            "message": row.message,
            "replica_states": row.states,
            "current": row.running,
            "total": row.total,
            "target": scale.target,
            "min": b.min_replicas,
            "max": b.max_replicas,
            "pinned": b.pinned,
            "ceiling": b.ceiling,
            "policy": scale.policy,
            "reason": scale.reason,
        }
    return states


class JobReader:
    """Training jobs with their latest progress; a finished job's progress is read once."""

    def __init__(self, ray_dashboard_url: str) -> None:
        self._url = ray_dashboard_url
        self._client: Any = None
        self._final: dict[str, dict[str, Any]] = {}

    def client(self) -> Any:
        if self._client is None:
            self._client = jobs.make_client(self._url)
        return self._client

    def read(self) -> list[dict[str, Any]]:
        client = self.client()
        return [self._row(client, job) for job in jobs.training_jobs(client)[:MAX_JOBS]]

    def _row(self, client: Any, job: Any) -> dict[str, Any]:
        job_id = job.submission_id or job.job_id
        if job_id in self._final:
            return self._final[job_id]
        meta = dict(job.metadata or {})
        progress = jobs.last_progress(client.get_job_logs(job_id)) or {}
        row = {
            "id": job_id,
            "state": str(job.status),
            "run": meta.get("run_name"),
            "kind": meta.get("train_kind"),
            "step": progress.get("step"),
            "max_steps": _int(meta.get("max_steps")),
            "loss": progress.get("loss"),
            "tokens_per_s": progress.get("tokens_per_s"),
            "start_time": job.start_time,
            "end_time": job.end_time,
            "message": job.message or "",
        }
        if job.status.is_terminal():
            self._final[job_id] = row
        return row

    def stop(self, job_id: str) -> bool:
        """Asks Ray to stop the job; False when it had already ended. Raises KeyError for
        an unknown job."""
        client = self.client()
        try:
            client.get_job_info(job_id)
        except RuntimeError as exc:
            raise KeyError(job_id) from exc
        return bool(client.stop_job(job_id))


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None
