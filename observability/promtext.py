"""Parsing Prometheus's text exposition format (what every Ray node's metrics port serves).

A Ray node exports thousands of lines a second (every worker's gRPC and task metrics); the
dashboard needs a few families of them. Lines are filtered by name prefix before anything
else is parsed, so the cost is one ``startswith`` per unwanted line.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from typing import NamedTuple

# One label pair: name="value", the value with \\, \" and \n escaped.
_LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')
_UNESCAPE = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}
_ESCAPED = re.compile(r"\\[\\\"n]")


class Sample(NamedTuple):
    """One line of a scrape.

    ``series`` is the line up to its value (name and labels, verbatim): a cheap identity of
    the time series across scrapes, used to tell one replica's counter from another's.
    """

    name: str
    labels: dict[str, str]
    value: float
    series: str


def parse(text: str, prefixes: tuple[str, ...]) -> Iterator[Sample]:
    """Yields the samples of ``text`` whose metric name starts with one of ``prefixes``.

    Comments, blank lines, other families and malformed lines are skipped: a scrape is read
    for what it has, never refused for one bad line.
    """
    for line in text.splitlines():
        if not line.startswith(prefixes):
            continue
        sample = parse_line(line)
        if sample is not None:
            yield sample


def parse_line(line: str) -> Sample | None:
    """One sample line (``name{labels} value [timestamp]``); None when it is malformed."""
    brace = line.find("{")
    if brace < 0:
        name, _, rest = line.partition(" ")
        labels: dict[str, str] = {}
        series = name
    else:
        close = line.rfind("}")
        if close < brace:
            return None
        name, series, rest = line[:brace], line[: close + 1], line[close + 1 :]
        labels = _labels(line[brace + 1 : close])
    value = _value(rest)
    if value is None:
        return None
    return Sample(name, labels, value, series)


def _labels(body: str) -> dict[str, str]:
    labels = {}
    for key, raw in _LABEL.findall(body):
        labels[key] = _ESCAPED.sub(lambda m: _UNESCAPE[m.group(0)], raw) if "\\" in raw else raw
    return labels


def _value(rest: str) -> float | None:
    """The value field; Prometheus writes +Inf, -Inf and NaN as such."""
    fields = rest.split()
    if not fields:
        return None
    try:
        value = float(fields[0])
    except ValueError:
        return None
    return None if math.isnan(value) else value
