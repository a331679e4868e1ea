"""The Prometheus server `up` may start next to the cluster: its config, command and lifetime.

Ray already exports every process's metrics from one port per node and keeps the list of those
ports current (nodes join and leave); Prometheus only has to follow that list:

- a head `up` started itself: Ray's service-discovery file in the head's temp dir
  (``file_sd_configs``; Ray's dashboard rewrites it every 5 s);
- a joined cluster: its dashboard's ``/api/prometheus/sd``, the same list over HTTP
  (``http_sd_configs``); without a dashboard, the nodes' addresses at `up` time.

The server runs in a session of its own, so neither Ctrl-C in the shell that ran `up` nor the
head's clean-up reaches it; `down` stops it by the pid and start time `up` recorded.

On loopback it answers anyone on this machine, as Ray's own ports do. Bound anywhere else it
asks for a password (basic auth in Prometheus's web config, ``--web.config.file``): user
``llm-cluster``, a random password kept in a 0600 file in the state dir and reused across
restarts, so bookmarks and Grafana data sources keep working.
"""

from __future__ import annotations

import contextlib
import ipaddress
import secrets
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import bcrypt
import httpx
import psutil
import yaml

from common.config_file import ConfigError
from observability.config import PrometheusConfig

SD_FILE = "prom_metrics_service_discovery.json"  # Ray's name, in the head's temp dir
SD_PATH = "/api/prometheus/sd"  # the same list, from Ray's dashboard
SD_REFRESH_S = 5  # Ray rewrites the list this often; re-read it as often
CONFIG_FILE = "prometheus.yml"
DATA_DIR = "prometheus-data"
LOG_FILE = "prometheus.log"
TOKEN_FILE = "prometheus-sd-token"
WEB_CONFIG_FILE = "prometheus-web.yml"  # basic auth, off loopback only
PASSWORD_FILE = "prometheus-password"
AUTH_USER = "llm-cluster"
READY_TIMEOUT_S = 60
STOP_GRACE_S = 3


class PrometheusError(Exception):
    """The server could not be started."""


@dataclass(frozen=True)
class Targets:
    """Where Prometheus learns the nodes' metrics ports: exactly one of the three is set."""

    sd_file: Path | None = None  # Ray's service-discovery file (our own head)
    sd_url: str | None = None  # a dashboard's HTTP service discovery (a joined cluster)
    static: tuple[str, ...] = ()  # host:port list, when neither is available
    token_file: Path | None = None  # bearer token for sd_url on a token-auth cluster


@dataclass(frozen=True)
class Running:
    """A started server: what `down` needs to stop it, and where it answers."""

    pid: int
    started_at: float
    url: str
    auth: tuple[str, str] | None = None  # (user, password) when it asks for a password


# ------------------------------------------------------------------ before anything starts


def binary(cfg: PrometheusConfig) -> str | None:
    """The executable to run, or None when it is off or ('auto') not installed.

    Raises ConfigError for 'on' without the binary: `up` must fail before it starts anything.
    """
    if cfg.enabled == "off":
        return None
    found = shutil.which(cfg.binary)
    if found is None and cfg.enabled == "on":
        raise ConfigError(
            f"observability.prometheus.enabled is 'on' but {cfg.binary!r} was not found "
            "(install Prometheus, e.g. `apt-get install prometheus`, or set it to 'auto')"
        )
    return found


def check_port(cfg: PrometheusConfig) -> None:
    """Raises ConfigError when the port is taken: better before `up` starts than after."""
    host = _reachable(cfg.host)
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.settimeout(0.5)
        if sock.connect_ex((host, cfg.port)) == 0:
            raise ConfigError(
                f"observability.prometheus.port {cfg.port} is already in use on {cfg.host}"
            )


def url(cfg: PrometheusConfig) -> str:
    return f"http://{_host_port(_reachable(cfg.host), cfg.port)}"


def _reachable(host: str) -> str:
    """A wildcard bind address is reached through loopback on this machine."""
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


def _host_port(host: str, port: int) -> str:
    """``host:port``, with an IPv6 address in brackets (``[::1]:9090``)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def needs_auth(cfg: PrometheusConfig) -> bool:
    """Whether the server asks for a password: bound to anything but loopback (a wildcard,
    an interface address or a host name), other machines may reach it."""
    if cfg.host == "localhost":
        return False
    try:
        return not ipaddress.ip_address(cfg.host).is_loopback
    except ValueError:  # a host name, or "" (every interface)
        return True


# ------------------------------------------------------------------ config and command


def scrape_config(cfg: PrometheusConfig, targets: Targets) -> dict:
    """prometheus.yml as a dict: one job, ``ray``, over every node's metrics port."""
    job: dict = {"job_name": "ray"}
    if targets.sd_file is not None:
        job["file_sd_configs"] = [
            {"files": [str(targets.sd_file)], "refresh_interval": f"{SD_REFRESH_S}s"}
        ]
    elif targets.sd_url is not None:
        sd: dict = {"url": targets.sd_url, "refresh_interval": f"{SD_REFRESH_S}s"}
        if targets.token_file is not None:
            sd["authorization"] = {"type": "Bearer", "credentials_file": str(targets.token_file)}
        job["http_sd_configs"] = [sd]
    else:
        job["static_configs"] = [{"targets": list(targets.static)}]
    interval = _duration(cfg.scrape_interval_s)
    return {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "scrape_configs": [job],
    }


def _duration(seconds: float) -> str:
    """Prometheus durations take whole units: 0.5 s is '500ms'."""
    ms = round(seconds * 1000)
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


def write_config(cfg: PrometheusConfig, targets: Targets, state_dir: Path) -> Path:
    path = state_dir / CONFIG_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(scrape_config(cfg, targets), sort_keys=False))
    return path


def command(exe: str, cfg: PrometheusConfig, state_dir: Path) -> list[str]:
    args = [
        exe,
        f"--config.file={state_dir / CONFIG_FILE}",
        f"--storage.tsdb.path={state_dir / DATA_DIR}",
        f"--storage.tsdb.retention.time={cfg.retention}",
        f"--web.listen-address={_host_port(cfg.host, cfg.port)}",
    ]
    if needs_auth(cfg):
        args.append(f"--web.config.file={state_dir / WEB_CONFIG_FILE}")
    return args


def save_token(token: str, state_dir: Path) -> Path:
    """The dashboard's bearer token, readable only by this user (never inside the config)."""
    return _write_private(state_dir / TOKEN_FILE, token)


def _write_private(path: Path, text: str) -> Path:
    """Writes ``text`` to a file only this user may read (0600 before any byte is in it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_text(text)
    return path


# ------------------------------------------------------------------ the password off loopback


def password_file(state_dir: Path) -> Path:
    return state_dir / PASSWORD_FILE


def password(state_dir: Path) -> str:
    """The server's password: the saved one, else a new random one, saved (0600) for the
    next `up`."""
    path = password_file(state_dir)
    with contextlib.suppress(FileNotFoundError):
        if saved := path.read_text().strip():
            return saved
    new = secrets.token_urlsafe(24)
    _write_private(path, new)
    return new


def web_config(secret: str) -> dict:
    """Prometheus's web config as a dict: one user, its password as a bcrypt hash (Prometheus
    caches a checked password, so the hash's cost is paid once, not per request)."""
    hashed = bcrypt.hashpw(secret.encode(), bcrypt.gensalt()).decode()
    return {"basic_auth_users": {AUTH_USER: hashed}}


def write_web_config(cfg: PrometheusConfig, state_dir: Path) -> Path | None:
    """Writes the web config when the server needs a password; otherwise removes a previous
    one (its absence tells `basic_auth` the server asks for none)."""
    path = state_dir / WEB_CONFIG_FILE
    if not needs_auth(cfg):
        path.unlink(missing_ok=True)
        return None
    return _write_private(path, yaml.safe_dump(web_config(password(state_dir))))


def basic_auth(state_dir: Path) -> tuple[str, str] | None:
    """The credential the server started from ``state_dir`` asks for, None when none."""
    if not (state_dir / WEB_CONFIG_FILE).is_file():
        return None
    return AUTH_USER, password(state_dir)


# ------------------------------------------------------------------ lifetime


def start(exe: str, cfg: PrometheusConfig, targets: Targets, state_dir: Path) -> Running:
    """Writes the configs and launches the server; returns at once (see wait_ready)."""
    write_config(cfg, targets, state_dir)
    write_web_config(cfg, state_dir)
    with open(state_dir / LOG_FILE, "wb") as log:  # the child keeps its own descriptor
        proc = subprocess.Popen(
            command(exe, cfg, state_dir),
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, cwd=state_dir,
        )  # fmt: skip
    return Running(proc.pid, _create_time(proc.pid), url(cfg), basic_auth(state_dir))


def wait_ready(running: Running, state_dir: Path, timeout_s: float = READY_TIMEOUT_S) -> None:
    """Returns once ``/-/ready`` answers 200 (to ``running.auth`` when it asks for a password);
    raises PrometheusError (with the log's tail) if the server exited or did not get ready in
    time."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not alive(running.pid, running.started_at):
            raise PrometheusError(f"prometheus exited at start: {_log_tail(state_dir)}")
        if _ready(running):
            return
        time.sleep(0.2)
    raise PrometheusError(
        f"prometheus was not ready in {timeout_s:.0f}s; see {state_dir / LOG_FILE}"
    )


def _ready(running: Running) -> bool:
    try:
        return httpx.get(f"{running.url}/-/ready", auth=running.auth, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _log_tail(state_dir: Path, lines: int = 3) -> str:
    try:
        tail = (state_dir / LOG_FILE).read_text(errors="replace").strip().splitlines()[-lines:]
    except OSError:
        tail = []
    return " | ".join(tail) or "(no output)"


def alive(pid: int, started_at: float | None) -> bool:
    """Whether ``pid`` is still our server (not a later process that reused the pid)."""
    try:
        proc = psutil.Process(pid)
        same = started_at is None or abs(proc.create_time() - started_at) < 1
        return same and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def stop(pid: int, started_at: float | None, grace_s: float = STOP_GRACE_S) -> bool:
    """SIGTERM (Prometheus flushes its head block), SIGKILL after ``grace_s``.

    Returns whether a server was running.
    """
    if not alive(pid, started_at):
        return False
    proc = psutil.Process(pid)
    with contextlib.suppress(psutil.Error):
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace_s)
        except psutil.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait(5)
    return True


def _create_time(pid: int) -> float:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:  # exited at once: wait_ready reports it
        return time.time()
