"""Schema fuzz of a running llm-cluster API: every operation its OpenAPI schema serves.

Loads ``{url}/openapi.json`` with schemathesis and sends generated requests to every
operation in it, from four sources:

- ``coverage``: schemathesis' coverage cases (boundary values, wrong types, missing required
  properties, invalid enum values, unexpected HTTP methods, malformed and unsupported
  ``Content-Type``), a stratified sample when an operation has more than its share;
- ``positive`` / ``negative``: Hypothesis-generated data that matches / violates the schema;
- ``probe``: request shapes the schema cannot describe, for every operation with a body: no
  body, an empty body, ``null``, truncated JSON, bytes that are not UTF-8, deep nesting, a
  multi-megabyte body, the wrong media type, a body that claims to be gzip.

Requests go over real HTTP (``requests``, a few worker threads). A response is a finding
when its status is 5xx other than 503 (the server's deliberate "busy"), when a streamed
response carries an error of code 5xx other than 503, when the server drops the
connection, and when a request takes longer than ``--timeout-s`` (a hang). At the end the
server must still list its models and complete a short prompt. Prints a table per
operation, every finding with a curl line that reproduces it, and writes the whole report
as JSON. Exit code 1 when anything was found.

A cluster that requires API keys gets ``--api-key`` (default $OPENAI_API_KEY) as
``Authorization: Bearer`` on every request that does not set that header itself; reports and
curl lines show it as ``$OPENAI_API_KEY``, never the key.

    python benchmarks/api_fuzz.py --url http://127.0.0.1:8000 [--requests 10000] [--seed 1]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import random
import shlex
import statistics
import sys
import threading
import time
import zlib
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import requests

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"

DELIBERATE = 503  # "busy, try again": back-pressure, a replica not ready
SHOWN_BODY = 2000  # characters of a request or response body printed (the JSON keeps more)
KEPT_BODY = 64 * 1024
# Fields vLLM needs that its schema leaves optional: without one, nearly every generated body
# is refused before the engine sees it.
FILLS = {"/v1/completions": {"prompt": "Hello"}}
SLOWEST = 5  # answered requests kept in the report for their time
CURL_DROPS = (
    "content-length",
    "connection",
    "accept-encoding",
    "user-agent",
    "accept",
    "x-schemathesis-testcaseid",
)
MAX_READ = 4 * 1024 * 1024  # response bytes read before the rest is dropped unread
KEY_PLACEHOLDER = "Bearer $OPENAI_API_KEY"  # the API key as reports and curl lines show it
CAUGHT_TRANSPORT = (
    requests.exceptions.ConnectionError,
    requests.exceptions.ChunkedEncodingError,
    requests.exceptions.ContentDecodingError,
)


# --- what a run found -------------------------------------------------------------------


@dataclass
class Finding:
    kind: str  # "5xx", "stream-5xx", "hang", "transport", "unhealthy"
    operation: str
    source: str
    method: str
    url: str
    headers: dict[str, str]
    body: str
    status: int | None
    response: str
    elapsed_s: float
    curl: str

    @property
    def what(self) -> str:
        return {
            "5xx": f"status {self.status}",
            "stream-5xx": f"status {self.status}, a 5xx error inside the stream",
            "hang": f"no full answer within {self.elapsed_s:.1f} s",
            "transport": "connection dropped",
            "unhealthy": "the server is unhealthy after the fuzz",
            "slow": f"status {self.status}",
        }[self.kind]

    def group(self) -> tuple[str, str, str]:
        """Findings of one group are one bug, most likely: same kind, operation, status and
        error type (or message)."""
        cause = self.response[:120]
        with contextlib.suppress(ValueError, AttributeError, TypeError):
            error = json.loads(self.response)["error"]
            cause = str(error.get("type") or error.get("message"))[:120]
        return self.kind, f"{self.operation}: {self.what}", cause

    def describe(self) -> str:
        """The whole request: method, URL, headers, body (truncated) and a curl line."""
        lines = [f"  {self.method} {self.url}  ({self.source}, {self.elapsed_s:.2f} s)"]
        lines += [f"    {k}: {v}" for k, v in self.headers.items()]
        if self.body:
            lines.append(f"    body: {_shorten(self.body)}")
        if self.response:
            lines.append(f"    response: {_shorten(self.response)}")
        lines.append(f"    reproduce: {_shorten(self.curl)}")
        return "\n".join(lines)

    def one_line(self) -> str:
        body = _shorten(self.body, 200).replace("\n", " ")
        return f"  {self.method} {self.url} ({self.source}, {self.elapsed_s:.2f} s) {body}"


@dataclass
class FuzzReport:
    url: str
    seed: int
    requested: int
    workers: int
    timeout_s: float
    operations: list[str] = field(default_factory=list)
    generated: int = 0
    sent: int = 0
    unsendable: Counter = field(default_factory=Counter)  # why a case never left the client
    generation_errors: dict[str, str] = field(default_factory=dict)
    statuses: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    by_source: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    findings: list[Finding] = field(default_factory=list)
    slowest: list[Finding] = field(default_factory=list)  # kind "slow": the longest answers
    aborted: str = ""
    generation_s: float = 0.0
    duration_s: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.findings and not self.aborted

    def count(self, kind: str) -> int:
        return sum(f.kind == kind for f in self.findings)

    def table(self) -> str:
        rows = [("operation", "requests", "statuses", "p50 ms", "max ms")]
        for op in sorted(self.statuses, key=_op_order):
            counts, lat = self.statuses[op], sorted(self.latencies[op])
            rows.append(
                (
                    op,
                    str(sum(counts.values())),
                    _statuses(counts),
                    f"{1000 * statistics.median(lat):.0f}" if lat else "-",
                    f"{1000 * lat[-1]:.0f}" if lat else "-",
                )
            )
        total: Counter = Counter()
        for counts in self.statuses.values():
            total.update(counts)
        all_lat = sorted(x for lat in self.latencies.values() for x in lat)
        rows.append(
            (
                "all",
                str(self.sent),
                _statuses(total),
                f"{1000 * statistics.median(all_lat):.0f}" if all_lat else "-",
                f"{1000 * all_lat[-1]:.0f}" if all_lat else "-",
            )
        )
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        lines = [
            "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[4]
            for r in rows
        ]
        lines.insert(1, "-" * len(lines[0]))
        lines.insert(len(lines) - 1, "-" * len(lines[0]))
        lines.append("")
        for source in ("coverage", "positive", "negative", "probe"):
            if source in self.by_source:
                counts = self.by_source[source]
                lines.append(f"{source:>8}: {sum(counts.values())} requests, {_statuses(counts)}")
        return "\n".join(lines)

    def summary(self) -> str:
        lines = [self.table(), ""]
        lines.append(
            f"{self.sent} requests sent ({self.generated} generated, seed {self.seed}) "
            f"to {len(self.operations)} operations in {self.duration_s:.0f} s, {self.workers} "
            f"workers (the last case generated after {self.generation_s:.0f} s)"
        )
        if self.unsendable:
            lines.append(f"not sendable by the client: {dict(self.unsendable)}")
        if self.generation_errors:
            lines.append(
                "nothing generated for: "
                + ", ".join(f"{k} ({v})" for k, v in sorted(self.generation_errors.items()))
            )
        groups: dict[tuple[str, str, str], list[Finding]] = defaultdict(list)
        for finding in self.findings:
            groups[finding.group()].append(finding)
        for (_, what, cause), found in groups.items():
            found.sort(key=lambda f: len(f.body))
            lines += ["", f"[{what}] {len(found)} time(s): {cause}", found[0].describe()]
            if len(found) > 1:
                lines.append("  and:")
                lines += [f.one_line() for f in found[1:]]
        if self.slowest:
            lines += ["", f"slowest answers (within {self.timeout_s:g} s: not findings):"]
            lines += [f"{f.one_line()}: {f.what}" for f in self.slowest]
        if self.aborted:
            lines += ["", f"ABORTED: {self.aborted}"]
        lines += [
            "",
            f"{'OK' if self.ok else 'FAILED'}: {self.count('5xx')} responses 5xx other than "
            f"{DELIBERATE}, {self.count('stream-5xx')} streams with a 5xx error, "
            f"{self.count('hang')} hangs (> {self.timeout_s:g} s), "
            f"{self.count('transport')} dropped connections"
            + (", server unhealthy afterwards" if self.count("unhealthy") else ""),
        ]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "seed": self.seed,
            "requested": self.requested,
            "workers": self.workers,
            "timeout_s": self.timeout_s,
            "ok": self.ok,
            "aborted": self.aborted,
            "generated": self.generated,
            "sent": self.sent,
            "duration_s": round(self.duration_s, 1),
            "generation_s": round(self.generation_s, 1),
            "operations": self.operations,
            "unsendable": dict(self.unsendable),
            "generation_errors": self.generation_errors,
            "statuses": {
                op: dict(sorted(c.items(), key=lambda kv: str(kv[0])))
                for op, c in self.statuses.items()
            },
            "by_source": {
                s: dict(sorted(c.items(), key=lambda kv: str(kv[0])))
                for s, c in self.by_source.items()
            },
            "latency_ms": {
                op: {
                    "p50": round(1000 * statistics.median(lat), 1),
                    "max": round(1000 * max(lat), 1),
                }
                for op, lat in self.latencies.items()
                if lat
            },
            "findings": [asdict(f) for f in self.findings],
            "slowest": [asdict(f) for f in self.slowest],
        }


def _by_status(counts: Counter) -> dict:
    """Statuses in order; a hang counts as "timeout", so keys are ints and strings."""
    return dict(sorted(counts.items(), key=lambda kv: str(kv[0])))


def _statuses(counts: Counter) -> str:
    return " ".join(f"{k}:{v}" for k, v in sorted(counts.items(), key=lambda kv: str(kv[0])))


def _op_order(label: str) -> tuple[str, str]:
    method, _, path = label.partition(" ")
    return path, method


def _shorten(text: str, limit: int = SHOWN_BODY) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


# --- what gets sent ---------------------------------------------------------------------


@dataclass
class _Item:
    operation: str  # the schema's operation label, "POST /v1/completions"
    source: str  # coverage / positive / negative / probe
    detail: str  # the coverage scenario or probe name
    prepare: Callable[[requests.Session], requests.PreparedRequest]


_REQUEST_KEYS = ("method", "url", "headers", "params", "cookies", "json", "data", "files", "auth")


def _steer(case: Any, models: list[str], rng: random.Random) -> Any:
    """Half the bodies name a served model instead of the string generated (a random name only
    ever reaches the 404) and get the fields vLLM needs where its schema leaves them optional:
    the rest of the body then reaches sampling and the engine."""
    body = case.body
    if not isinstance(body, dict) or rng.random() >= 0.5:
        return case
    steered = dict(body)
    if models and isinstance(body.get("model"), str):
        steered["model"] = rng.choice(models)
    for key, value in FILLS.get(case.operation.path, {}).items():
        if steered.get(key) is None:
            steered[key] = value
    if steered != body:
        case.body = steered
    return case


def _case_item(case: Any, base_url: str, source: str, detail: str = "") -> _Item:
    def prepare(session: requests.Session) -> requests.PreparedRequest:
        kwargs = case.as_transport_kwargs(base_url=base_url)
        request = requests.Request(**{k: v for k, v in kwargs.items() if k in _REQUEST_KEYS})
        return session.prepare_request(request)

    return _Item(case.operation.label, source, detail, prepare)


def _raw_item(
    operation: Any, base_url: str, name: str, body: bytes | None, headers: dict[str, str]
) -> _Item:
    def prepare(session: requests.Session) -> requests.PreparedRequest:
        url = base_url.rstrip("/") + operation.path.replace("{", "").replace("}", "")
        request = requests.Request(operation.method.upper(), url, headers=headers, data=body)
        return session.prepare_request(request)

    return _Item(operation.label, "probe", name, prepare)


def _probes(operation: Any, base_url: str) -> list[_Item]:
    """Bodies no schema describes, for an operation that takes one."""
    big = "a " * 500_000
    shapes: list[tuple[str, bytes | None, dict[str, str]]] = [
        ("no body", None, {}),
        ("empty JSON body", b"", {"Content-Type": "application/json"}),
        ("JSON null", b"null", {"Content-Type": "application/json"}),
        ("truncated JSON", b'{"model": "', {"Content-Type": "application/json"}),
        ("not UTF-8", b'{"prompt": "\xff\xfe\xc3"}', {"Content-Type": "application/json"}),
        (
            "deeply nested JSON",
            b"[" * 100_000 + b"]" * 100_000,
            {"Content-Type": "application/json"},
        ),
        (
            "deeply nested object",
            b'{"a":' * 20_000 + b"1" + b"}" * 20_000,
            {"Content-Type": "application/json"},
        ),
        (
            "3 MB body",
            json.dumps(
                {"prompt": big, "input": big, "messages": [{"role": "user", "content": big}]}
            ).encode(),
            {"Content-Type": "application/json"},
        ),
        ("JSON as text/plain", b"{}", {"Content-Type": "text/plain"}),
        ("form body", b"model=x&prompt=y", {"Content-Type": "application/x-www-form-urlencoded"}),
        (
            "garbage gzip",
            b'{"prompt": "hi"}',
            {"Content-Type": "application/json", "Content-Encoding": "gzip"},
        ),
        ("charset", b'{"prompt": "hi"}', {"Content-Type": "application/json; charset=latin-1"}),
    ]
    return [_raw_item(operation, base_url, name, body, headers) for name, body, headers in shapes]


def _stratified(cases: list[Any], quota: int, rng: random.Random) -> tuple[list[Any], list[Any]]:
    """`quota` coverage cases, every scenario represented before any repeats; and the rest."""
    if len(cases) <= quota:
        return cases, []
    groups: dict[tuple[str, str], list[Any]] = defaultdict(list)
    for case in cases:
        groups[(case.method, _scenario(case))].append(case)
    for group in groups.values():
        rng.shuffle(group)
    order = sorted(groups)
    rng.shuffle(order)
    chosen: list[Any] = []
    while len(chosen) < quota:
        for key in order:
            if groups[key] and len(chosen) < quota:
                chosen.append(groups[key].pop())
    rest = [case for group in groups.values() for case in group]
    return chosen, rest


def _scenario(case: Any) -> str:
    with contextlib.suppress(AttributeError):
        return str(case.meta.phase.data.scenario)
    return ""


def _hypothesis_cases(operation: Any, mode: Any, n: int, seed: int) -> list[Any]:
    """Up to `n` cases Hypothesis draws for `operation` (fewer when the space is smaller)."""
    from hypothesis import HealthCheck, Phase, Verbosity, given, settings
    from hypothesis import seed as hypothesis_seed

    out: list[Any] = []
    if n <= 0:
        return out

    @hypothesis_seed(seed)
    @settings(
        max_examples=n,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
        verbosity=Verbosity.quiet,
    )
    @given(operation.as_strategy(generation_mode=mode))
    def collect(case: Any) -> None:
        out.append(case)

    collect()
    return out[:n]


def _is_open(operation: Any) -> bool:
    """Whether generated data can vary: a body or parameters to fill."""
    return bool(operation.body) or any(True for _ in operation.iter_parameters())


def _generate(
    schema: Any,
    operations: list[Any],
    base_url: str,
    n: int,
    seed: int,
    models: list[str],
    report: FuzzReport,
    put: Callable[[_Item], None],
    stop: threading.Event,
) -> None:
    """Hands `put` at least `n` items (fewer only if stopped), coverage and probes first.

    Closed operations (no parameters, no body) get their coverage cases, a handful each; the
    others share the rest equally: the probes, a stratified half of their coverage cases, and
    Hypothesis' positive and negative cases in equal parts. What an operation cannot fill
    (no negative data for a lone string parameter) goes to the others, with other seeds."""
    from hypothesis.errors import Unsatisfiable
    from schemathesis import GenerationMode

    rng = random.Random(seed)

    def item(case: Any, source: str) -> _Item:
        detail = _scenario(case) if source == "coverage" else ""
        return _case_item(_steer(case, models, rng), base_url, source, detail)

    modes = [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]
    coverage: dict[str, list[Any]] = {}
    for op in operations:
        try:
            config = schema.config.generation_for(operation=op)
            coverage[op.label] = list(
                schema.iter_coverage_cases(op, generation_modes=modes, generation_config=config)
            )
        except Exception as exc:  # a schema construct schemathesis cannot cover
            coverage[op.label] = []
            report.generation_errors[f"{op.label} coverage"] = f"{type(exc).__name__}: {exc}"[:200]
    closed = [op for op in operations if not _is_open(op)]
    opened = [op for op in operations if _is_open(op)]
    first: list[_Item] = []
    for op in closed:  # nothing to vary: their coverage cases are all there is
        first += [item(c, "coverage") for c in coverage[op.label]]
    left = max(0, n - len(first))
    share = left // max(1, len(opened))
    spare: list[Any] = []
    quotas: dict[tuple[str, Any], int] = {}
    for op in opened:
        probes = _probes(op, base_url) if op.body else []
        chosen, rest = _stratified(coverage[op.label], max(0, share // 2 - len(probes)), rng)
        spare += rest
        first += probes + [item(c, "coverage") for c in chosen]
        fuzzed = max(0, share - len(probes) - len(chosen))
        quotas[(op.label, modes[0])] = fuzzed - fuzzed // 2
        quotas[(op.label, modes[1])] = fuzzed // 2
    rng.shuffle(first)
    produced = 0
    for ready in first:
        put(ready)
    produced += len(first)
    by_label = {op.label: op for op in operations}
    for round_ in range(3):
        full: list[tuple[str, Any]] = []
        for (label, mode), quota in quotas.items():
            if stop.is_set():
                return
            op = by_label[label]
            try:
                cases = _hypothesis_cases(op, mode, quota, _seed(seed + round_, label, mode))
            except Exception as exc:  # Unsatisfiable (nothing negative to say), a schema error
                cases = []
                report.generation_errors[f"{label} {mode.value}"] = type(exc).__name__
                if not isinstance(exc, Unsatisfiable):
                    report.generation_errors[f"{label} {mode.value}"] += f": {exc}"[:200]
            for case in cases:
                put(item(case, mode.value))
            produced += len(cases)
            if cases and len(cases) >= quota:
                full.append((label, mode))
        deficit = n - produced
        if deficit <= 0 or not full:
            break
        quotas = {key: -(-deficit // len(full)) for key in full}  # another seed, the deficit
    rng.shuffle(spare)
    while produced < n and spare and not stop.is_set():
        case = spare.pop()
        put(item(case, "coverage"))
        produced += 1


def _seed(seed: int, label: str, mode: Any) -> int:
    return (seed * 1_000_003 + zlib.crc32(f"{label} {mode.value}".encode())) % 2**32


# --- sending ----------------------------------------------------------------------------


def _text(data: bytes | None, limit: int = KEPT_BODY) -> str:
    """A body as text; a long one says its size first, so that any shortening keeps it."""
    if data is None:
        return ""
    text = data[:limit].decode("utf-8", errors="backslashreplace")
    return f"[{len(data)} bytes, the first {limit}:] {text}" if len(data) > limit else text


def _wire_body(request: requests.PreparedRequest) -> bytes | None:
    body = request.body
    if isinstance(body, str):
        return body.encode()
    return bytes(body) if isinstance(body, bytes | bytearray) else None  # None: none, or a stream


def _headers(request: requests.PreparedRequest, api_key: str | None = None) -> dict[str, str]:
    """The request's headers as text, the API key (if any) replaced by KEY_PLACEHOLDER."""
    shown = {}
    for name, value in request.headers.items():
        text = value if isinstance(value, str) else value.decode("latin-1")
        secret = api_key and name.lower() == "authorization" and text == f"Bearer {api_key}"
        shown[name] = KEY_PLACEHOLDER if secret else text
    return shown


def _curl(request: requests.PreparedRequest, api_key: str | None = None) -> str:
    parts = ["curl", "-sS", "-i", "-X", request.method or "GET", shlex.quote(request.url or "")]
    for name, value in _headers(request, api_key).items():
        if name.lower() in CURL_DROPS:
            continue
        header = f"{name}: {value}"
        parts += ["-H", f'"{header}"' if value == KEY_PLACEHOLDER else shlex.quote(header)]
    raw = _wire_body(request)
    if raw is None:
        return " ".join(parts)
    text = raw.decode("utf-8", errors="replace")
    if len(raw) > 100_000:
        return " ".join(parts) + f" --data-binary @body.bin  # body: {len(raw)} bytes, see JSON"
    if text.isprintable() and text.encode() == raw:
        return " ".join([*parts, "--data-binary", shlex.quote(text)])
    escaped = "".join(
        chr(b) if 32 <= b < 127 and chr(b) not in "\\'%" else f"\\x{b:02x}" for b in raw
    )
    return f"printf '{escaped}' | " + " ".join([*parts, "--data-binary", "@-"])


def _stream_error(body: bytes) -> str:
    """The first error event of code 5xx other than 503 in a server-sent event stream."""
    for line in body.splitlines():
        if not line.startswith(b"data:"):
            continue
        with contextlib.suppress(ValueError):
            event = json.loads(line[5:])
            error = event.get("error") if isinstance(event, dict) else None
            code = error.get("code") if isinstance(error, dict) else None
            if isinstance(code, int) and code >= 500 and code != DELIBERATE:
                return line.decode("utf-8", errors="replace")
    return ""


class _Sender:
    def __init__(
        self, report: FuzzReport, timeout_s: float, max_failures: int, api_key: str | None = None
    ) -> None:
        self.report, self.timeout_s, self.max_failures = report, timeout_s, max_failures
        self.api_key = api_key
        self.lock = threading.Lock()
        self.local = threading.local()
        self.stop = threading.Event()
        self.broken = 0  # hangs and dropped connections

    def session(self) -> requests.Session:
        if not hasattr(self.local, "session"):
            self.local.session = requests.Session()
            self.local.session.headers.update(_auth(self.api_key))
        return self.local.session

    def send(self, item: _Item) -> None:
        session = self.session()
        try:
            request = item.prepare(session)
        except Exception as exc:  # e.g. a header value requests refuses, NaN in JSON
            with self.lock:
                self.report.unsendable[type(exc).__name__] += 1
            return
        start = time.monotonic()
        deadline = start + self.timeout_s
        status: int | None = None
        kind, body, response_text = "", bytearray(), ""
        try:
            response = session.send(
                request,
                stream=True,
                allow_redirects=False,
                timeout=(min(10.0, self.timeout_s), self.timeout_s),
            )
            status = response.status_code
            with contextlib.closing(response):
                for chunk in response.iter_content(chunk_size=65536):
                    if len(body) < MAX_READ:
                        body += chunk
                    if time.monotonic() > deadline:
                        kind = "hang"
                        break
            if not kind and time.monotonic() - start > self.timeout_s:
                kind = "hang"
            if not kind and status >= 500 and status != DELIBERATE:
                kind = "5xx"
            if not kind and "event-stream" in response.headers.get("content-type", ""):
                response_text = _stream_error(bytes(body))
                kind = "stream-5xx" if response_text else ""
        except requests.exceptions.Timeout:
            kind = "hang"
        except CAUGHT_TRANSPORT as exc:
            kind, response_text = "transport", f"{type(exc).__name__}: {exc}"
        elapsed = time.monotonic() - start
        label = status if status is not None else ("timeout" if kind == "hang" else "error")
        with self.lock:
            self.report.sent += 1
            self.report.statuses[item.operation][label] += 1
            self.report.by_source[item.source][label] += 1
            self.report.latencies[item.operation].append(elapsed)
            slowest = self.report.slowest
            if kind or len(slowest) < SLOWEST or elapsed > slowest[-1].elapsed_s:
                finding = Finding(
                    kind=kind or "slow",
                    operation=item.operation,
                    source=f"{item.source}: {item.detail}" if item.detail else item.source,
                    method=request.method or "",
                    url=request.url or "",
                    headers=_headers(request, self.api_key),
                    body=_text(_wire_body(request)),
                    status=status,
                    response=response_text or _text(bytes(body)),
                    elapsed_s=round(elapsed, 3),
                    curl=_curl(request, self.api_key),
                )
                if kind:
                    self.report.findings.append(finding)
                else:
                    slowest.append(finding)
                    slowest.sort(key=lambda f: -f.elapsed_s)
                    del slowest[SLOWEST:]
            if kind in ("hang", "transport"):
                self.broken += 1
                if self.broken >= self.max_failures and not self.report.aborted:
                    self.report.aborted = (
                        f"{self.broken} hangs or dropped connections: the server stopped answering"
                    )
                    self.stop.set()


def _auth(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def _served_models(url: str, timeout_s: float, api_key: str | None = None) -> list[str]:
    with contextlib.suppress(requests.RequestException, ValueError, KeyError, TypeError):
        listing = requests.get(f"{url}/v1/models", headers=_auth(api_key), timeout=timeout_s)
        return [model["id"] for model in listing.json()["data"]]
    return []


def _health(url: str, timeout_s: float, api_key: str | None = None) -> str:
    """Empty when the server still lists its models and completes a short prompt."""
    try:
        models = requests.get(f"{url}/v1/models", headers=_auth(api_key), timeout=timeout_s)
        if models.status_code != 200:
            return f"GET /v1/models: {models.status_code} {models.text[:500]}"
        model = models.json()["data"][0]["id"]
        reply = requests.post(
            f"{url}/v1/completions",
            headers=_auth(api_key),
            timeout=timeout_s,
            json={"model": model, "prompt": "hi", "max_tokens": 2},
        )
        if reply.status_code != 200:
            return f"POST /v1/completions: {reply.status_code} {reply.text[:500]}"
    except (requests.RequestException, ValueError, KeyError, IndexError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return ""


def fuzz(
    url: str,
    requests: int = 10_000,
    timeout_s: float = 30.0,
    seed: int | None = None,
    workers: int = 6,
    max_failures: int = 20,
    progress: Callable[[str], None] | None = None,
    api_key: str | None = None,
) -> FuzzReport:
    """Fuzz the server at `url` (no /v1) with at least `requests` generated requests, each
    with `api_key` unless it sets its own ``Authorization``.

    Stops early (``report.aborted``) once `max_failures` requests hung or lost their
    connection: the server is then down or wedged, and more requests would only wait."""
    import schemathesis
    from schemathesis.core.result import Ok

    url = url.rstrip("/")
    seed = random.randrange(2**31) if seed is None else seed
    report = FuzzReport(
        url=url, seed=seed, requested=requests, workers=workers, timeout_s=timeout_s
    )
    started = time.monotonic()
    schema = schemathesis.openapi.from_url(
        f"{url}/openapi.json", timeout=timeout_s, wait_for_schema=timeout_s
    )
    operations = []
    for result in schema.get_all_operations():
        if isinstance(result, Ok):
            operations.append(result.ok())
        else:
            report.generation_errors[str(result.err())[:80]] = "invalid in the schema"
    report.operations = [op.label for op in operations]
    models = _served_models(url, timeout_s, api_key)
    sender = _Sender(report, timeout_s, max_failures, api_key)
    items: queue.Queue[_Item | None] = queue.Queue()
    generated = 0

    def put(item: _Item) -> None:
        nonlocal generated
        generated += 1
        items.put(item)

    def work() -> None:
        while (item := items.get()) is not None:
            if not sender.stop.is_set():
                sender.send(item)

    threads = [threading.Thread(target=work, daemon=True) for _ in range(workers)]
    for thread in threads:
        thread.start()
    done = threading.Event()
    if progress is not None:
        threading.Thread(target=_tick, args=(report, requests, progress, done), daemon=True).start()
    try:
        _generate(schema, operations, url, requests, seed, models, report, put, sender.stop)
        report.generation_s = time.monotonic() - started
    finally:
        for _ in threads:
            items.put(None)
        for thread in threads:
            thread.join()
        done.set()
    report.generated = generated
    if not report.aborted and (problem := _health(url, timeout_s, api_key)):
        report.findings.append(
            Finding(
                "unhealthy",
                "after the fuzz",
                "health check",
                "GET",
                f"{url}/v1/models",
                {},
                "",
                None,
                problem,
                0.0,
                f"curl -sS {shlex.quote(url + '/v1/models')}",
            )
        )
    report.duration_s = time.monotonic() - started
    return report


def _tick(
    report: FuzzReport, target: int, out: Callable[[str], None], done: threading.Event
) -> None:
    started = time.monotonic()
    while not done.wait(30):
        out(
            f"  {time.monotonic() - started:.0f} s: {report.sent}/{target} sent, "
            f"{len(report.findings)} findings"
        )


# --- command line -----------------------------------------------------------------------


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--url", default="http://127.0.0.1:8000", help="the API's base URL, without /v1"
    )
    parser.add_argument(
        "--requests",
        type=_positive_int,
        default=10_000,
        help="generated requests to send, at least (default 10000)",
    )
    parser.add_argument(
        "--timeout-s",
        type=float,
        default=30.0,
        help="a request taking longer is a hang (default 30)",
    )
    parser.add_argument("--seed", type=int, default=None, help="default: random, printed")
    parser.add_argument(
        "--workers", type=_positive_int, default=6, help="requests in flight (default 6)"
    )
    parser.add_argument(
        "--max-failures",
        type=_positive_int,
        default=20,
        help="stop after this many hangs or dropped connections (default 20)",
    )
    parser.add_argument(
        "--out", default=None, help="report JSON (default benchmarks/results/api_fuzz-<time>.json)"
    )
    parser.add_argument(
        "--api-key",
        default=os.environ.get("OPENAI_API_KEY"),
        help="sent as `Authorization: Bearer KEY` (default $OPENAI_API_KEY)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from schemathesis.errors import LoaderError

    try:
        args = parse_args(argv)
    except SystemExit as exc:  # argparse printed the usage error
        return exc.code if isinstance(exc.code, int) else 2
    seed = random.randrange(2**31) if args.seed is None else args.seed
    print(f"fuzzing {args.url} with {args.requests} requests, seed {seed}", flush=True)
    try:
        report = fuzz(
            args.url,
            args.requests,
            args.timeout_s,
            seed,
            args.workers,
            args.max_failures,
            progress=lambda line: print(line, flush=True),
            api_key=args.api_key,
        )
    except LoaderError as exc:  # no server there, or no schema
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    print(report.summary())
    out = (
        Path(args.out) if args.out else RESULTS / f"api_fuzz-{time.strftime('%Y%m%d-%H%M%S')}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report.to_dict(), indent=2, default=str))
    print(f"\nwrote {out}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
