"""Request log files rotate by size, keep the newest few, and `llm-cluster logs` reads
across a rotation."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import pytest

from cluster import request_logs
from observability.request_log import FILE_GLOB, RequestLog, file_name, parse_name

NODE = "n1"


def _write(log: RequestLog, count: int, start: int = 0) -> None:
    for i in range(start, start + count):
        log.write({"ts": float(i), "status": 200, "model": "tiny", "request_id": f"r{i}"})


def _ids(path: Path) -> list[str]:
    return [json.loads(line)["request_id"] for line in path.read_text().splitlines()]


def test_a_full_file_rotates_and_only_the_newest_are_kept(tmp_path: Path) -> None:
    log = RequestLog(tmp_path, max_bytes=300, keep=3)
    _write(log, 40)
    files = sorted(tmp_path.glob(FILE_GLOB), key=lambda p: parse_name(p.name)[1])
    assert len(files) == 3 and files[-1] == log.path
    assert all(f.stat().st_size < 300 + 100 for f in files)  # at most one line past the cap
    ids = [i for f in files for i in _ids(f)]
    assert ids == [f"r{i}" for i in range(40 - len(ids), 40)]  # contiguous, newest last


def test_the_limits_come_from_the_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from common.settings import get_settings

    monkeypatch.setenv("LLM_CLUSTER_REQUEST_LOG_MAX_BYTES", "5000")
    monkeypatch.setenv("LLM_CLUSTER_REQUEST_LOG_KEEP", "2")
    get_settings.cache_clear()
    try:
        log = RequestLog(tmp_path)
        assert (log.max_bytes, log.keep) == (5000, 2)
    finally:
        get_settings.cache_clear()


def test_names_parse_and_the_old_unnumbered_name_still_counts() -> None:
    assert parse_name(file_name(42, 7)) == (42, 7)
    assert parse_name("llm_cluster_requests_42.jsonl") == (42, 0)
    assert parse_name("raylet.out") is None


@pytest.fixture
def fake_ray_logs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Ray's log API over a folder: list_logs by glob, get_log's tail."""

    def log_files(address: str) -> list[tuple[str, str]]:
        return [(NODE, p.name) for p in tmp_path.glob(FILE_GLOB)]

    def get_log(address: str, node_id: str, filename: str, tail: int) -> list[str]:
        lines = (tmp_path / filename).read_text().splitlines()
        return ["\n".join(lines[-tail:])] if tail > 0 else []

    monkeypatch.setattr(request_logs, "log_files", log_files)
    monkeypatch.setattr(request_logs, "get_log", get_log)
    return tmp_path


def test_tail_reads_back_across_a_rotation(fake_ray_logs: Path) -> None:
    log = RequestLog(fake_ray_logs, max_bytes=400, keep=5)
    _write(log, 12)
    assert len(list(fake_ray_logs.glob(FILE_GLOB))) >= 2
    assert len(_ids(log.path)) < 10  # the newest file alone is too short for the tail
    records = request_logs.recent("addr", 10)
    assert [r["request_id"] for r in records] == [f"r{i}" for i in range(2, 12)]


def test_tail_merges_processes_and_reads_only_the_files_it_needs(
    fake_ray_logs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = RequestLog(fake_ray_logs, max_bytes=400, keep=5)
    _write(log, 12)
    other = fake_ray_logs / file_name(os.getpid() + 1, 0)
    other.write_text(json.dumps({"ts": 5.5, "request_id": "other"}) + "\n")
    read: list[str] = []
    real_get_log = request_logs.get_log
    monkeypatch.setattr(request_logs, "get_log",
                        lambda **kw: read.append(kw["filename"]) or real_get_log(**kw))  # fmt: skip
    records = request_logs.recent("addr", 2)
    assert [r["request_id"] for r in records] == ["r10", "r11"]
    assert set(read) == {log.path.name, other.name}  # the newest file held enough


def test_follow_takes_only_each_processs_current_file() -> None:
    files = [(NODE, file_name(7, 0)), (NODE, file_name(7, 2)), (NODE, file_name(7, 1)),
             (NODE, file_name(8, 0)), ("n2", file_name(7, 0))]  # fmt: skip
    current = sorted(group[0] for group in request_logs.by_process(files))
    assert current == sorted([(NODE, file_name(7, 2)), (NODE, file_name(8, 0)),
                              ("n2", file_name(7, 0))])  # fmt: skip


def test_show_prints_the_tail(fake_ray_logs: Path, capsys: pytest.CaptureFixture) -> None:
    log = RequestLog(fake_ray_logs, max_bytes=400, keep=5)
    _write(log, 6)
    args = argparse.Namespace(tail=3, follow=False, model=None, json=True)
    request_logs.show(args, "addr")
    shown = [json.loads(line)["request_id"] for line in capsys.readouterr().out.splitlines()]
    assert shown == ["r3", "r4", "r5"]
