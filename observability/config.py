"""The ``observability`` section of the config: metrics, traces, request logs, the dashboard
and the optional Prometheus server."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class TracingConfig(BaseModel):
    """OpenTelemetry spans per request (entry point, replica, engine)."""

    model_config = ConfigDict(extra="forbid")

    endpoint: str | None = Field(
        None,
        description=(
            "OTLP/HTTP endpoint spans are exported to, e.g. http://collector:4318 (its "
            "/v1/traces path is added). The engine's own spans go there too."
        ),
    )
    file: str | None = Field(
        None, description="Also (or only) write spans as JSON lines to this file, per process."
    )
    sample_ratio: float = Field(
        0.1,
        ge=0,
        le=1,
        description=(
            "Share of requests whose spans are exported (a caller's sampled traceparent is "
            "always followed). Every request gets a trace id in its response and log line."
        ),
    )


class PrometheusConfig(BaseModel):
    """A Prometheus server `up` starts next to the head, scraping every node's metrics."""

    model_config = ConfigDict(extra="forbid")

    enabled: Literal["auto", "on", "off"] = Field(
        "auto",
        description=(
            "'auto' starts it when the `prometheus` binary is installed, 'on' requires it, "
            "'off' never starts it. The dashboard works without it."
        ),
    )
    binary: str = Field("prometheus", description="The Prometheus executable (name or path).")
    host: str = Field(
        "127.0.0.1",
        description=(
            "Interface Prometheus listens on. Anything but loopback makes it ask for a "
            "password: user llm-cluster, the password in prometheus-password in the state dir."
        ),
    )
    port: int = Field(9090, ge=1, le=65535, description="Prometheus's HTTP port.")
    scrape_interval_s: float = Field(
        15,
        gt=0,
        le=300,
        description=(
            "How often it scrapes (Prometheus's default). Each scrape makes every node's "
            "exporter render all its series: tens of ms of CPU on a small node."
        ),
    )
    retention: str = Field(
        "2d", pattern=r"^\d+[smhdwy]$", description="How long it keeps samples (e.g. 2d)."
    )


class DashboardConfig(BaseModel):
    """The scaling dashboard page the cluster serves."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="Serve the dashboard page.")
    host: str = Field("127.0.0.1", description="Interface the dashboard listens on.")
    port: int = Field(8266, ge=1, le=65535, description="Port of the dashboard page.")
    refresh_s: float = Field(
        2.0,
        gt=0,
        le=60,
        description=(
            "How often the dashboard reads every node's metrics. Each read makes Ray's "
            "exporter render all of its node's series (benchmarks/README.md, Observability)."
        ),
    )
    history_s: int = Field(
        3600, ge=60, le=86400, description="How much history the dashboard keeps in memory."
    )


class ObservabilityConfig(BaseModel):
    """Metrics, traces, request logs and the dashboard."""

    model_config = ConfigDict(extra="forbid")

    request_logs: bool = Field(
        True, description="One JSON line per request (never its text); `llm-cluster logs`."
    )
    tracing: TracingConfig = Field(default_factory=TracingConfig, description="Traces.")
    prometheus: PrometheusConfig = Field(
        default_factory=PrometheusConfig, description="Prometheus server."
    )
    dashboard: DashboardConfig = Field(default_factory=DashboardConfig, description="Dashboard.")

    @model_validator(mode="after")
    def _distinct_ports(self) -> ObservabilityConfig:
        prometheus_on = self.prometheus.enabled != "off"
        if self.dashboard.enabled and prometheus_on and self.dashboard.port == self.prometheus.port:
            raise ValueError("dashboard.port and prometheus.port must differ")
        return self
