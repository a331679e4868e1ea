"""The Prometheus server's config and command line, its preflight checks, and its stop; a
fake binary stands in for Prometheus where a process is needed (the e2e test runs the real one)."""

from __future__ import annotations

import dataclasses
import os
import shutil
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from common.config_file import ConfigError
from observability import prometheus
from observability.config import ObservabilityConfig, PrometheusConfig
from tests.conftest import free_port


def cfg(**fields: object) -> PrometheusConfig:
    return PrometheusConfig(**fields)


def test_file_sd_follows_rays_discovery_file(tmp_path: Path) -> None:
    sd = Path("/tmp/llmc-6430") / prometheus.SD_FILE
    targets = prometheus.Targets(sd_file=sd)
    written = prometheus.write_config(cfg(scrape_interval_s=1), targets, tmp_path)
    config = yaml.safe_load(written.read_text())
    assert config["global"] == {"scrape_interval": "1s", "evaluation_interval": "1s"}
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "ray"
    assert job["file_sd_configs"] == [
        {"files": ["/tmp/llmc-6430/prom_metrics_service_discovery.json"], "refresh_interval": "5s"}
    ]
    assert written == tmp_path / "prometheus.yml"


def test_http_sd_for_a_joined_cluster_with_its_token(tmp_path: Path) -> None:
    token = prometheus.save_token("secret", tmp_path)
    targets = prometheus.Targets(sd_url="http://10.0.0.1:8265/api/prometheus/sd", token_file=token)
    (job,) = prometheus.scrape_config(cfg(), targets)["scrape_configs"]
    assert job["http_sd_configs"] == [{
        "url": "http://10.0.0.1:8265/api/prometheus/sd",
        "refresh_interval": "5s",
        "authorization": {"type": "Bearer", "credentials_file": str(token)},
    }]  # fmt: skip
    assert "secret" not in yaml.safe_dump(prometheus.scrape_config(cfg(), targets))
    assert stat.S_IMODE(token.stat().st_mode) == 0o600


def test_static_targets_without_a_dashboard() -> None:
    targets = prometheus.Targets(static=("10.0.0.1:1234", "10.0.0.2:1234"))
    (job,) = prometheus.scrape_config(cfg(), targets)["scrape_configs"]
    assert job["static_configs"] == [{"targets": ["10.0.0.1:1234", "10.0.0.2:1234"]}]


@pytest.mark.parametrize(
    ("seconds", "text"), [(5, "5s"), (1, "1s"), (0.5, "500ms"), (2.25, "2250ms")]
)
def test_scrape_interval_in_prometheus_units(seconds: float, text: str) -> None:
    config = prometheus.scrape_config(cfg(scrape_interval_s=seconds), prometheus.Targets())
    assert config["global"]["scrape_interval"] == text


def test_command_line(tmp_path: Path) -> None:
    command = prometheus.command("/usr/bin/prometheus", cfg(port=9452, retention="3h"), tmp_path)
    assert command == [
        "/usr/bin/prometheus",
        f"--config.file={tmp_path}/prometheus.yml",
        f"--storage.tsdb.path={tmp_path}/prometheus-data",
        "--storage.tsdb.retention.time=3h",
        "--web.listen-address=127.0.0.1:9452",
    ]


def test_wildcard_host_is_reached_on_loopback() -> None:
    assert prometheus.url(cfg(host="0.0.0.0", port=9999)) == "http://127.0.0.1:9999"


def test_ipv6_hosts_in_brackets(tmp_path: Path) -> None:
    assert prometheus.url(cfg(host="::1", port=9999)) == "http://[::1]:9999"
    command = prometheus.command("prometheus", cfg(host="::", port=9999), tmp_path)
    assert "--web.listen-address=[::]:9999" in command


# ------------------------------------------------------------------ a password off loopback


@pytest.mark.parametrize(
    ("host", "asks"),
    [
        ("127.0.0.1", False),
        ("127.0.0.2", False),
        ("localhost", False),
        ("::1", False),
        ("0.0.0.0", True),
        ("::", True),
        ("", True),
        ("10.0.0.5", True),
        ("head.example.internal", True),
    ],
)
def test_a_password_is_asked_off_loopback(host: str, asks: bool) -> None:
    assert prometheus.needs_auth(cfg(host=host)) is asks


def test_loopback_command_and_files_are_as_before(tmp_path: Path) -> None:
    config = cfg(port=9452)
    assert not any("web.config" in arg for arg in prometheus.command("p", config, tmp_path))
    (tmp_path / prometheus.WEB_CONFIG_FILE).write_text("stale")  # from a non-loopback `up`
    assert prometheus.write_web_config(config, tmp_path) is None
    assert not (tmp_path / prometheus.WEB_CONFIG_FILE).exists()
    assert not (tmp_path / prometheus.PASSWORD_FILE).exists()
    assert prometheus.basic_auth(tmp_path) is None


def test_non_loopback_command_names_the_web_config(tmp_path: Path) -> None:
    command = prometheus.command("/usr/bin/prometheus", cfg(host="0.0.0.0", port=9452), tmp_path)
    assert command[-2:] == [
        "--web.listen-address=0.0.0.0:9452",
        f"--web.config.file={tmp_path}/prometheus-web.yml",
    ]


def test_web_config_holds_a_bcrypt_hash_of_a_private_reused_password(tmp_path: Path) -> None:
    import bcrypt

    path = prometheus.write_web_config(cfg(host="0.0.0.0"), tmp_path)
    assert path == tmp_path / "prometheus-web.yml"
    users = yaml.safe_load(path.read_text())["basic_auth_users"]
    secret = (tmp_path / "prometheus-password").read_text()
    assert list(users) == ["llm-cluster"] and len(secret) >= 32
    assert bcrypt.checkpw(secret.encode(), users["llm-cluster"].encode())
    assert secret not in path.read_text()
    for file in (path, tmp_path / "prometheus-password"):
        assert stat.S_IMODE(file.stat().st_mode) == 0o600
    assert prometheus.basic_auth(tmp_path) == ("llm-cluster", secret)
    prometheus.write_web_config(cfg(host="0.0.0.0"), tmp_path)  # the next `up`
    assert prometheus.password(tmp_path) == secret


def test_up_says_where_the_password_is(tmp_path: Path, home: Path) -> None:
    from cluster import metrics_server
    from cluster.state import ClusterState

    state = ClusterState(address="a", api_url="u", dashboard_url="d", config="c",
                         prometheus_url="http://127.0.0.1:9090")  # fmt: skip
    line = metrics_server.summary_line(cfg(host="0.0.0.0"), state)
    assert line == (
        "  Prometheus:     http://127.0.0.1:9090 "
        f"(user llm-cluster, password in {home / 'prometheus-password'})"
    )
    assert metrics_server.summary_line(cfg(), state) == "  Prometheus:     http://127.0.0.1:9090"


def test_ups_readiness_check_sends_the_credential(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cluster import metrics_server
    from cluster.state import ClusterState

    seen: list[prometheus.Running] = []
    monkeypatch.setattr(prometheus, "wait_ready", lambda running, _dir: seen.append(running))
    state = ClusterState(address="a", api_url="u", dashboard_url="d", config="c",
                         prometheus_pid=1, prometheus_url="http://127.0.0.1:9090")  # fmt: skip
    metrics_server.wait_ready(state)
    prometheus.write_web_config(cfg(host="0.0.0.0"), home)
    metrics_server.wait_ready(state)
    assert [r.auth for r in seen] == [None, ("llm-cluster", prometheus.password(home))]


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_prometheus_accepts_the_web_config(tmp_path: Path) -> None:
    path = prometheus.write_web_config(cfg(host="0.0.0.0"), tmp_path)
    check = subprocess.run(["promtool", "check", "web-config", str(path)], capture_output=True,
                           text=True)  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr


def test_off_starts_nothing_and_auto_tolerates_a_missing_binary() -> None:
    assert prometheus.binary(cfg(enabled="off")) is None
    assert prometheus.binary(cfg(enabled="auto", binary="no-such-prometheus")) is None


def test_on_without_the_binary_fails_clearly() -> None:
    with pytest.raises(ConfigError, match="'no-such-prometheus' was not found"):
        prometheus.binary(cfg(enabled="on", binary="no-such-prometheus"))


def test_port_in_use_fails_before_anything_starts() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(ConfigError, match=f"prometheus.port {port} is already in use"):
            prometheus.check_port(cfg(port=port))
    prometheus.check_port(cfg(port=free_port()))


def test_config_rejects_a_bad_retention_and_a_shared_port() -> None:
    with pytest.raises(ValueError, match="retention"):
        PrometheusConfig(retention="2 days")
    with pytest.raises(ValueError, match="must differ"):
        ObservabilityConfig(prometheus={"port": 9000}, dashboard={"port": 9000})


def fake_binary(tmp_path: Path, body: str) -> str:
    """An executable that behaves like a (broken) Prometheus for the lifecycle tests."""
    path = tmp_path / "fake-prometheus"
    path.write_text(f"#!{sys.executable}\n{body}\n")
    path.chmod(0o755)
    return str(path)


def test_start_runs_in_its_own_session_and_stop_ends_it(tmp_path: Path) -> None:
    exe = fake_binary(tmp_path, "import time\nprint('up', flush=True)\ntime.sleep(60)")
    running = prometheus.start(exe, cfg(port=free_port()), prometheus.Targets(), tmp_path)
    try:
        assert os.getsid(running.pid) == running.pid != os.getsid(0)
        assert prometheus.alive(running.pid, running.started_at)
        assert (tmp_path / "prometheus.yml").is_file()
    finally:
        assert prometheus.stop(running.pid, running.started_at)
    assert not prometheus.alive(running.pid, running.started_at)
    assert not prometheus.stop(running.pid, running.started_at)  # nothing left to stop


def test_stop_kills_a_server_that_ignores_sigterm(tmp_path: Path) -> None:
    body = "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\ntime.sleep(60)"
    exe = fake_binary(tmp_path, body)
    running = prometheus.start(exe, cfg(port=free_port()), prometheus.Targets(), tmp_path)
    assert prometheus.stop(running.pid, running.started_at, grace_s=0.5)
    assert not prometheus.alive(running.pid, running.started_at)


def test_a_reused_pid_is_not_stopped() -> None:
    assert not prometheus.alive(os.getpid(), started_at=1.0)
    assert not prometheus.stop(os.getpid(), started_at=1.0)


def test_wait_ready_reports_an_early_exit_with_its_log(tmp_path: Path) -> None:
    exe = fake_binary(tmp_path, "import sys\nprint('err: bad flag', flush=True)\nsys.exit(1)")
    running = prometheus.start(exe, cfg(port=free_port()), prometheus.Targets(), tmp_path)
    with pytest.raises(prometheus.PrometheusError, match="bad flag"):
        prometheus.wait_ready(running, tmp_path, timeout_s=10)


@pytest.mark.skipif(prometheus.binary(cfg()) is None, reason="prometheus is not installed")
def test_the_real_server_gets_ready_and_stops(tmp_path: Path) -> None:
    config = cfg(port=free_port(), scrape_interval_s=1)
    running = prometheus.start(prometheus.binary(config), config, prometheus.Targets(), tmp_path)
    try:
        prometheus.wait_ready(running, tmp_path, timeout_s=30)
    finally:
        assert prometheus.stop(running.pid, running.started_at)
    assert (tmp_path / "prometheus-data").is_dir()


@pytest.mark.skipif(prometheus.binary(cfg()) is None, reason="prometheus is not installed")
def test_the_real_server_off_loopback_asks_for_the_password(tmp_path: Path) -> None:
    import httpx

    config = cfg(host="0.0.0.0", port=free_port(), scrape_interval_s=1)
    running = prometheus.start(prometheus.binary(config), config, prometheus.Targets(), tmp_path)
    try:
        assert running.auth is not None
        prometheus.wait_ready(running, tmp_path, timeout_s=30)  # sends the credential
        ready = f"{running.url}/-/ready"
        assert httpx.get(ready).status_code == 401
        assert httpx.get(ready, auth=("llm-cluster", "wrong")).status_code == 401
        assert httpx.get(ready, auth=running.auth).status_code == 200
        query = httpx.get(f"{running.url}/api/v1/query", params={"query": "1"}, auth=running.auth)
        assert query.json()["status"] == "success"
    finally:
        assert prometheus.stop(running.pid, running.started_at)


# ------------------------------------------------------------------ `up` refuses early


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    from common.settings import get_settings

    monkeypatch.setenv("LLM_CLUSTER_STATE_DIR", str(tmp_path / "home"))
    get_settings.cache_clear()
    yield tmp_path / "home"
    get_settings.cache_clear()


def up_config(tmp_path: Path, prometheus_section: dict) -> Path:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    data = {
        "ray": {"port": free_port(), "dashboard_port": free_port()},
        "http": {"port": free_port()},
        "models": [{"id": "m", "source": "m"}],
        "observability": {"prometheus": prometheus_section},
    }
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_up_with_prometheus_on_but_missing_fails_before_starting(
    tmp_path: Path, home: Path, capsys: pytest.CaptureFixture
) -> None:
    from cluster.cli import main

    config = up_config(tmp_path, {"enabled": "on", "binary": "no-such-prometheus"})
    assert main(["up", "--config", str(config)]) == 2
    assert "'no-such-prometheus' was not found" in capsys.readouterr().err
    assert not (home / "state.json").exists() and not (home / "head.log").exists()


@pytest.mark.skipif(prometheus.binary(cfg()) is None, reason="prometheus is not installed")
def test_up_with_prometheus_port_taken_fails_before_starting(
    tmp_path: Path, home: Path, capsys: pytest.CaptureFixture
) -> None:
    from cluster.cli import main

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        config = up_config(tmp_path, {"enabled": "auto", "port": port})
        assert main(["up", "--config", str(config)]) == 2
    assert f"observability.prometheus.port {port} is already in use" in capsys.readouterr().err
    assert not (home / "state.json").exists() and not (home / "head.log").exists()


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
@pytest.mark.parametrize(
    "targets",
    [
        prometheus.Targets(sd_file=Path("/tmp/none") / prometheus.SD_FILE),
        prometheus.Targets(sd_url="http://127.0.0.1:8265/api/prometheus/sd"),
        prometheus.Targets(static=("127.0.0.1:1234",)),
    ],
    ids=["file_sd", "http_sd", "static"],
)
def test_prometheus_accepts_the_config(tmp_path: Path, targets: prometheus.Targets) -> None:
    if targets.sd_url is not None:  # with a token file, as for a token-auth cluster
        targets = dataclasses.replace(targets, token_file=prometheus.save_token("t", tmp_path))
    path = prometheus.write_config(cfg(scrape_interval_s=0.5), targets, tmp_path)
    check = subprocess.run(["promtool", "check", "config", str(path)], capture_output=True,
                           text=True)  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr
