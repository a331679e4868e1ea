"""One JSON line per request: ids, model, status, latency and token counts, never the text.

Each process writes its own files, ``llm_cluster_requests_<pid>_<n>.jsonl``, in its node's
Ray log directory, so Ray's log API (``ray.util.state.list_logs`` / ``get_log``) finds the
files of every node and ``llm-cluster logs`` reads them without a side channel. A file that
reaches ``LLM_CLUSTER_REQUEST_LOG_MAX_BYTES`` is closed and the next ``n`` opened; only the
newest ``LLM_CLUSTER_REQUEST_LOG_KEEP`` files of a process are kept. Files are never renamed:
a reader following one by name never loses the lines written after a rotation.
"""

from __future__ import annotations

import json
import os
import re
import threading
from pathlib import Path
from typing import Any

from common.settings import get_settings

FILE_PREFIX = "llm_cluster_requests_"
FILE_GLOB = f"{FILE_PREFIX}*.jsonl"
_NAME = re.compile(rf"{FILE_PREFIX}(\d+)(?:_(\d+))?\.jsonl$")


def file_name(pid: int, number: int) -> str:
    return f"{FILE_PREFIX}{pid}_{number}.jsonl"


def parse_name(name: str) -> tuple[int, int] | None:
    """(pid, file number) of a request log's file name, None for any other name."""
    match = _NAME.search(name)
    return (int(match[1]), int(match[2] or 0)) if match else None


class RequestLog:
    """Appends records to this process's file (one ``write`` per request, no buffering, so
    a line is never split and a crash loses nothing already answered)."""

    def __init__(self, directory: str | Path, max_bytes: int | None = None,
                 keep: int | None = None) -> None:  # fmt: skip
        settings = get_settings()
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes or settings.request_log_max_bytes
        self.keep = keep or settings.request_log_keep
        self._number = -1
        self._lock = threading.Lock()
        self._open_next()

    def _open_next(self) -> None:
        self._number += 1
        self.path = self.directory / file_name(os.getpid(), self._number)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._size = os.fstat(self._fd).st_size
        old = self.directory / file_name(os.getpid(), self._number - self.keep)
        old.unlink(missing_ok=True)

    def write(self, record: dict[str, Any]) -> None:
        line = json.dumps({k: v for k, v in record.items() if v is not None}, separators=(",", ":"))
        data = (line + "\n").encode()
        with self._lock:
            os.write(self._fd, data)
            self._size += len(data)
            if self._size >= self.max_bytes:
                os.close(self._fd)
                self._open_next()

    def close(self) -> None:
        os.close(self._fd)
