"""One JSON line per request: ids, model, status, latency and token counts, never the text.

Each process writes its own file, ``llm_cluster_requests_<pid>.jsonl``, in its node's Ray
log directory, so Ray's log API (``ray.util.state.list_logs`` / ``get_log``) finds the files
of every node and ``llm-cluster logs`` reads them without a side channel.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

FILE_PREFIX = "llm_cluster_requests_"
FILE_GLOB = f"{FILE_PREFIX}*.jsonl"


class RequestLog:
    """Appends records to this process's file (one ``write`` per request, no buffering, so
    a line is never split and a crash loses nothing already answered)."""

    def __init__(self, directory: str | Path) -> None:
        path = Path(directory) / f"{FILE_PREFIX}{os.getpid()}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write(self, record: dict[str, Any]) -> None:
        line = json.dumps({k: v for k, v in record.items() if v is not None}, separators=(",", ":"))
        os.write(self._fd, (line + "\n").encode())

    def close(self) -> None:
        os.close(self._fd)
