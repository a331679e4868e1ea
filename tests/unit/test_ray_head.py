"""What `down` removes besides the cluster's processes."""

from __future__ import annotations

from pathlib import Path

import pytest

from cluster import ray_head

OURS, JOINED, OTHER = "a" * 56, "b" * 56, "c" * 56


def test_down_removes_only_its_own_nodes_haproxy_folders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Serve's HAProxy leaves <base>/<node id>/ per node; another cluster's stay."""
    base = tmp_path / "haproxy-serve"
    monkeypatch.setenv("RAY_SERVE_HAPROXY_SERVER_STATE_BASE", str(base))
    for var in ray_head._HAPROXY_PATHS:
        monkeypatch.setenv(var, str(base / Path(ray_head._HAPROXY_PATHS[var]).name))
    session = tmp_path / "llmc-1" / "session_2026-01-01_00-00-00_1_2"
    session.mkdir(parents=True)
    for name in (f"gcs_server_port_{OURS}", f"metrics_agent_port_{OURS}",
                 f"metrics_agent_port_{JOINED}", "ray_current_cluster"):  # fmt: skip
        (session / name).write_text("1")
    for node in (OURS, JOINED, OTHER):
        (base / node).mkdir(parents=True)
        (base / node / "haproxy.cfg").write_text("")
    removed = ray_head.remove_haproxy_files(tmp_path / "llmc-1")
    assert sorted(removed) == [base / OURS, base / JOINED]
    assert [p.name for p in base.iterdir()] == [OTHER]


def test_no_session_removes_nothing(tmp_path: Path) -> None:
    assert ray_head.remove_haproxy_files(tmp_path) == []


def test_a_dead_heads_clean_up_keeps_its_logs_and_removes_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import subprocess
    import sys

    from common.settings import get_settings

    monkeypatch.setenv("LLM_CLUSTER_STATE_DIR", str(tmp_path / "state"))
    base = tmp_path / "haproxy-serve"
    monkeypatch.setenv("RAY_SERVE_HAPROXY_SERVER_STATE_BASE", str(base))
    get_settings.cache_clear()
    temp = tmp_path / "llmc-2"
    session = temp / "session_2026-01-01_00-00-00_1_2"
    (session / "logs").mkdir(parents=True)
    (session / "logs" / "raylet.out").write_text("the raylet's last words")
    (temp / "session_latest").symlink_to(session)
    (session / f"metrics_agent_port_{OURS}").write_text("1")
    (base / OURS).mkdir(parents=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    try:
        assert ray_head.clean_up(int(dead.stdout), None, str(temp), []) == []
        kept = ray_head.crash_logs_dir() / "raylet.out"
        assert kept.read_text() == "the raylet's last words"
    finally:
        get_settings.cache_clear()
    assert not temp.exists() and not (base / OURS).exists()
