"""Parses raw lines and rows into records, or into an error naming the file and line.

A record row is ``{source, order, text, error}``. Chat records keep their turns as
canonical JSON in ``text``, so cleaning, de-duplication and splitting treat both kinds alike.
"""

from __future__ import annotations

import json

import pyarrow.parquet as pq

from training.data.sources import filesystem_for

ROLES = ("system", "user", "assistant")
_LINE_STRIDE = 1 << 32  # order = file_index * stride + line: a total, stable order


def _row(path: str, file_index: int, line: int, text: str = "", error: str = "") -> dict:
    return {
        "source": f"{path}:{line}",
        "order": file_index * _LINE_STRIDE + line,
        "text": text,
        "error": error,
    }


def validate_messages(messages: object) -> str:
    """Returns '' for well-formed chat turns, else the reason they are malformed."""
    if not isinstance(messages, list) or not messages:
        return "messages must be a non-empty list"
    for i, turn in enumerate(messages):
        if not isinstance(turn, dict) or set(turn) != {"role", "content"}:
            return f"turn {i} must be an object with exactly 'role' and 'content'"
        if turn["role"] not in ROLES:
            return f"turn {i} has unknown role {turn['role']!r}"
        if not isinstance(turn["content"], str):
            return f"turn {i} content must be a string"
    if not any(t["role"] == "assistant" for t in messages):
        return "messages have no assistant turn to learn from"
    return ""


def _parse_pair(obj: dict, field: str, prompt_field: str) -> tuple[str, str]:
    for name in (prompt_field, field):
        if not isinstance(obj.get(name), str):
            return "", f"field {name!r} is missing or not a string"
    return json.dumps([obj[prompt_field], obj[field]], ensure_ascii=False), ""


def parse_object(obj: object, kind: str, field: str, prompt_field: str = "") -> tuple[str, str]:
    """Extracts (text, error) from one decoded JSON object or Parquet row.

    ``kind`` is "text", "pair" (prompt + completion, stored as a JSON pair) or "chat".
    """
    if not isinstance(obj, dict):
        return "", "record is not an object"
    if kind == "pair":
        return _parse_pair(obj, field, prompt_field)
    if field not in obj:
        return "", f"missing field {field!r}"
    value = obj[field]
    if kind == "text":
        return (value, "") if isinstance(value, str) else ("", f"field {field!r} is not a string")
    error = validate_messages(value)
    return ("", error) if error else (json.dumps(value, ensure_ascii=False), "")


def _parse_jsonl_line(raw: bytes, kind: str, field: str, prompt_field: str) -> tuple[str, str]:
    try:
        obj = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        return "", "line is not valid UTF-8"
    except json.JSONDecodeError as err:
        return "", f"invalid JSON: {err.msg}"
    return parse_object(obj, kind, field, prompt_field)


def _read_lines(path: str) -> list[bytes]:
    fs, inner = filesystem_for(path)
    with fs.open_input_stream(inner) as f:
        lines = f.read().split(b"\n")
    return lines[:-1] if lines and not lines[-1] else lines  # the final newline ends a line


def _jsonl_rows(path: str, file_index: int, kind: str, field: str, pf: str) -> list[dict]:
    rows = []
    for n, raw in enumerate(_read_lines(path), start=1):
        if raw.strip():
            text, error = _parse_jsonl_line(raw, kind, field, pf)
            rows.append(_row(path, file_index, n, text, error))
    return rows


def _text_rows(path: str, file_index: int, kind: str) -> list[dict]:
    if kind != "text":
        return [_row(path, file_index, 0, error=f"plain text files cannot hold {kind} records")]
    rows = []
    for n, raw in enumerate(_read_lines(path), start=1):
        try:
            rows.append(_row(path, file_index, n, raw.decode("utf-8")))
        except UnicodeDecodeError:
            rows.append(_row(path, file_index, n, error="line is not valid UTF-8"))
    return rows


def _parquet_rows(path: str, file_index: int, kind: str, field: str, pf: str) -> list[dict]:
    fs, inner = filesystem_for(path)
    try:
        table = pq.read_table(inner, filesystem=fs)
    except Exception as err:  # noqa: BLE001 - any unreadable file is reported, not raised
        return [_row(path, file_index, 0, error=f"unreadable Parquet: {err}")]
    rows = []
    for n, obj in enumerate(table.to_pylist(), start=1):
        text, error = parse_object(obj, kind, field, pf)
        rows.append(_row(path, file_index, n, text, error))
    return rows


def read_file(file_row: dict, kind: str, field: str, prompt_field: str = "") -> list[dict]:
    """Ray Data ``flat_map`` body: one input file in, its records (or errors) out."""
    path, fmt, index = file_row["path"], file_row["format"], file_row["file_index"]
    if fmt == "jsonl":
        return _jsonl_rows(path, index, kind, field, prompt_field)
    if fmt == "text":
        return _text_rows(path, index, kind)
    return _parquet_rows(path, index, kind, field, prompt_field)
