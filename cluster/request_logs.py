"""`llm-cluster logs`: the per-request JSON lines of every node, newest last.

The entry points write them into their node's Ray log directory (observability.request_log),
so Ray's log API reads them on any node: no agent, no side channel.
"""

from __future__ import annotations

import argparse
import json
import queue
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import ray
from ray.util.state import get_log, list_logs

from observability.request_log import FILE_GLOB, parse_name

_RELIST_S = 5.0  # how often --follow looks for the files of new replicas
_COLUMNS = f"{'TIME':<24}{'STATUS':<8}{'MODEL':<14}{'LATENCY':>10}{'TTFT':>10}{'TOKENS':>10}  "


def log_files(address: str) -> list[tuple[str, str]]:
    """(node id, file name) of every request log on the alive nodes of the cluster whose
    GCS is at ``address`` (Ray's log API needs it when several clusters share a machine)."""
    found = []
    for node in ray.nodes():
        if not node.get("Alive"):
            continue
        node_id = node["NodeID"]
        files = list_logs(address=address, node_id=node_id, glob_filter=FILE_GLOB)
        found += [(node_id, name) for names in files.values() for name in names]
    return found


def by_process(files: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    """The files grouped by the process that wrote them (node, pid), newest file first:
    a process's log rotates into numbered files (observability.request_log)."""
    groups: dict[tuple[str, int], list[tuple[int, tuple[str, str]]]] = {}
    for node_id, name in files:
        pid, number = parse_name(name) or (-1, 0)
        groups.setdefault((node_id, pid), []).append((number, (node_id, name)))
    return [[f for _, f in sorted(group, reverse=True)] for group in groups.values()]


def _records(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    for chunk in lines:
        for line in chunk.splitlines():
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut at the tail's start


def recent(address: str, tail: int) -> list[dict[str, Any]]:
    """The last ``tail`` requests of the whole cluster, oldest first."""
    if tail == 0:
        return []
    records = []
    for files in by_process(log_files(address)):
        records += _process_tail(address, files, tail)
    return sorted(records, key=lambda r: r.get("ts", 0))[-tail:]


def _process_tail(address: str, files: list[tuple[str, str]], tail: int) -> list[dict]:
    """A process's last ``tail`` records: its newest file, then older ones while short."""
    records: list[dict[str, Any]] = []
    for node_id, name in files:
        lines = get_log(address=address, node_id=node_id, filename=name, tail=tail)
        records = [*_records(lines), *records]
        if len(records) >= tail:
            break
    return records[-tail:]


def follow(address: str, out: queue.Queue, stop: threading.Event) -> None:
    """Streams every process's current request log into ``out`` (each file from its start:
    Ray's follow has no "from the end"), picking up new replicas' files and rotated ones."""
    followed: set[tuple[str, str]] = set()
    while not stop.is_set():
        for node_id, name in (files[0] for files in by_process(log_files(address))):
            if (node_id, name) not in followed:
                followed.add((node_id, name))
                threading.Thread(target=_follow_one, args=(address, node_id, name, out),
                                 daemon=True).start()  # fmt: skip
        stop.wait(_RELIST_S)


def _follow_one(address: str, node_id: str, name: str, out: queue.Queue) -> None:
    lines = get_log(address=address, node_id=node_id, filename=name, tail=0, follow=True)
    for record in _records(lines):
        out.put(record)


def format_record(record: dict[str, Any]) -> str:
    """One request as a table row (the ids last: they are long)."""
    when = datetime.fromtimestamp(record.get("ts", 0), UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:23]
    ttft = record.get("ttft_ms")
    tokens = record.get("completion_tokens")
    return (
        f"{when:<24}{record.get('status', ''):<8}{record.get('model', ''):<14}"
        f"{record.get('latency_ms', 0):>8.1f}ms"
        f"{f'{ttft:.1f}ms' if ttft is not None else '-':>10}"
        f"{tokens if tokens is not None else '-':>10}  "
        f"{record.get('request_id', '')} {record.get('trace_id', '')}"
    )


def show(args: argparse.Namespace, address: str) -> None:
    """Prints the recent requests, then (--follow) new ones as they come, until Ctrl-C."""

    def emit(record: dict[str, Any]) -> None:
        if args.model and record.get("model") != args.model:
            return
        print(json.dumps(record) if args.json else format_record(record), flush=True)

    if not args.json:
        print(_COLUMNS + "REQUEST_ID TRACE_ID")
    since = time.time()
    for record in recent(address, args.tail):
        emit(record)
        since = max(since, record.get("ts", 0))
    if not args.follow:
        return
    out: queue.Queue = queue.Queue()
    stop = threading.Event()
    threading.Thread(target=follow, args=(address, out, stop), daemon=True).start()
    try:
        while True:
            try:
                record = out.get(timeout=1.0)
            except queue.Empty:
                continue
            if record.get("ts", 0) > since:  # shown already, or older than the command
                emit(record)
    except KeyboardInterrupt:
        stop.set()
