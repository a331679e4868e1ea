"""Observability primitives: request metrics, OpenTelemetry traces, JSON request logs, and the
Prometheus server `up` may start. The dashboard that reads them lives in ``cluster.dashboard``."""
