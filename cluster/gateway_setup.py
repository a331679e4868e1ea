"""The gateway's state in `up` and `down`: the durable store made ready before anything
serves, the Redis server `up` starts when the config asks for one (``gateway.redis.url:
auto``), and the concrete URLs every entry point is deployed with."""

from __future__ import annotations

import sys

from cluster import redis_server
from cluster.ports import reserve_ports
from cluster.state import ClusterState, save_state
from common.config_file import ConfigError
from common.settings import get_settings
from deployments.gateway.config import AUTO, GatewayConfig


def preflight(cfg: GatewayConfig) -> None:
    """Raises before anything starts: no redis-server to start, its port taken."""
    if not (cfg.needs_redis() and cfg.redis.url == AUTO):
        return
    try:
        redis_server.binary(cfg.redis.binary)
        redis_server.check_port(cfg.redis.host, cfg.redis.port)
    except redis_server.RedisServerError as exc:
        raise ConfigError(f"gateway.redis: {exc}") from None
    reserve_ports(cfg.redis.port)


def prepare(cfg: GatewayConfig, state: ClusterState) -> GatewayConfig:
    """Migrates the store, starts Redis if it is ours to start (recorded in ``state`` at
    once, so `down` finds it), and returns the config with both URLs concrete."""
    from deployments.store import Store, default_url

    store_url = cfg.store.url or default_url()
    if cfg.auth:
        Store(store_url).revision()  # creates and migrates it now, not on the first request
    redis_url = cfg.redis.url
    if cfg.needs_redis() and redis_url == AUTO:
        state_dir = get_settings().state_dir
        running = redis_server.start(cfg.redis.host, cfg.redis.port, state_dir, cfg.redis.binary)
        state.redis_pid, state.redis_started_at = running.pid, running.started_at
        save_state(state)
        redis_server.wait_ready(running, state_dir)
        redis_url = running.url
    return cfg.model_copy(
        update={
            "store": cfg.store.model_copy(update={"url": store_url}),
            "redis": cfg.redis.model_copy(update={"url": redis_url}),
        }
    )


def stop(state: ClusterState) -> None:
    """Stops the Redis server `up` started (its data stays for the next `up`)."""
    pid = state.redis_pid
    if pid is None:
        return
    if redis_server.stop(pid, state.redis_started_at):
        print(f"Stopped Redis (pid {pid})")
    elif state.ready:
        print(f"Redis (pid {pid}) was not running.", file=sys.stderr)
    state.redis_pid = None
