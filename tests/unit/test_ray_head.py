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
