"""Cleaning: Unicode and whitespace normalisation, so near-identical records dedup exactly."""

from __future__ import annotations

import json
import re
import unicodedata

from training.config import UnicodeForm

_SPACES = re.compile(r"[ \t\u00a0\u2000-\u200b\u3000]+")
_NEWLINES = re.compile(r"\s*\n\s*")
_CONTROL = {c for c in map(chr, range(32)) if c not in "\n\t"}


def normalize_text(text: str, form: UnicodeForm) -> str:
    """Unicode-normalises, drops control characters, collapses runs of spaces, trims."""
    if form != "none":
        text = unicodedata.normalize(form, text)
    text = "".join(c for c in text.replace("\r\n", "\n") if c not in _CONTROL)
    text = _SPACES.sub(" ", text)
    return _NEWLINES.sub("\n", text).strip()


def normalize_chat(text: str, form: UnicodeForm) -> str:
    """Normalises each turn's content; returns canonical JSON of the turns."""
    turns = json.loads(text)
    cleaned = [{"role": t["role"], "content": normalize_text(t["content"], form)} for t in turns]
    return json.dumps(cleaned, ensure_ascii=False)


def normalize_pair(text: str, form: UnicodeForm) -> str:
    """Normalises prompt and completion separately; returns them as a JSON pair."""
    prompt, completion = json.loads(text)
    return json.dumps([normalize_text(prompt, form), normalize_text(completion, form)])


def content_length(text: str, kind: str) -> int:
    """Characters of content; for chat, of the shortest reply (empty ones teach nothing)."""
    if kind == "text":
        return len(text)
    if kind == "pair":
        return len(json.loads(text)[1])
    turns = json.loads(text)
    return min(len(t["content"]) for t in turns if t["role"] == "assistant")


def clean_row(row: dict, kind: str, form: UnicodeForm) -> dict:
    """Ray Data ``map`` body: normalises ``text`` in place."""
    norm = {"text": normalize_text, "pair": normalize_pair, "chat": normalize_chat}[kind]
    row["text"] = norm(row["text"], form)
    return row
