"""Finds input files on a local path or any ``pyarrow`` filesystem URI."""

from __future__ import annotations

import os

import pyarrow.fs as pafs

from training.data.errors import DataError

_EXTENSIONS = {".jsonl": "jsonl", ".json": "jsonl", ".txt": "text", ".parquet": "parquet"}


def filesystem_for(path: str) -> tuple[pafs.FileSystem, str]:
    """Returns the filesystem and in-filesystem path for a local path or a URI."""
    if "://" in path:
        return pafs.FileSystem.from_uri(path)
    return pafs.LocalFileSystem(), os.path.abspath(path)


def detect_format(path: str, configured: str) -> str:
    """The configured format, or the one the extension implies when configured is auto."""
    if configured != "auto":
        return configured
    ext = os.path.splitext(path)[1].lower()
    if ext not in _EXTENSIONS:
        raise DataError(f"cannot tell the format of {path}; set data.format")
    return _EXTENSIONS[ext]


def _expand(path: str) -> list[str]:
    fs, inner = filesystem_for(path)
    info = fs.get_file_info(inner)
    if info.type == pafs.FileType.NotFound:
        raise DataError(f"data path does not exist: {path}")
    if info.type == pafs.FileType.File:
        return [path]
    selector = pafs.FileSelector(inner, recursive=True)
    files = [i.path for i in fs.get_file_info(selector) if i.type == pafs.FileType.File]
    prefix = path[: len(path) - len(inner)] if "://" in path else ""
    keep = [f for f in files if os.path.splitext(f)[1].lower() in _EXTENSIONS]
    return sorted(prefix + f for f in keep if not os.path.basename(f).startswith("."))


def list_input_files(paths: list[str], configured_format: str) -> list[dict]:
    """Expands folders into sorted files; each row is {path, format, file_index}."""
    files = [f for p in paths for f in _expand(p)]
    if not files:
        raise DataError(f"no input files found under {paths}")
    return [
        {"path": f, "format": detect_format(f, configured_format), "file_index": i}
        for i, f in enumerate(files)
    ]
