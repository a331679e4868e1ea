"""Ports two `llm-cluster up`s pick at once: never the same one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cluster import ports
from tests.conftest import REPO

# A child process: picks PICKS ports from a narrow range (as `up` picks its head's ports),
# prints them, and holds its claims until the test closes its stdin.
_CHILD = """
import json, sys
from pathlib import Path
from cluster import ports
ports.CLAIMS_DIR = Path(sys.argv[1])
low = int(sys.argv[2])
ports._pick_range = lambda: (low, low + {span} - 1)
print(json.dumps([ports.free_port() for _ in range({picks})]), flush=True)
sys.stdin.read()
"""


@pytest.fixture(autouse=True)
def claims_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(ports, "CLAIMS_DIR", tmp_path / "claims")
    monkeypatch.setattr(ports, "_taken_ports", set())
    return tmp_path / "claims"


def _free_span(span: int) -> int:
    """The start of ``span`` consecutive ports in free_port()'s range that nothing holds."""
    low, high = ports._pick_range() or (20000, 29999)
    for start in range(low, high - span, span):
        if all(ports._bindable(p) for p in range(start, start + span)):
            return start
    pytest.skip("no free run of ports")


def test_two_processes_never_pick_the_same_port(claims_dir: Path) -> None:
    """Unbound picks from 48 ports, 20 each: without the claims they would overlap."""
    span, picks = 48, 20
    start = _free_span(span)
    code = _CHILD.format(span=span, picks=picks)
    children = [
        subprocess.Popen([sys.executable, "-c", code, str(claims_dir), str(start)], cwd=REPO,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]  # fmt: skip
    try:
        picked = [json.loads(child.stdout.readline()) for child in children]
    finally:
        for child in children:
            child.communicate("", timeout=30)
    assert all(len(set(p)) == picks for p in picked)
    assert not set(picked[0]) & set(picked[1])
    assert all(child.returncode == 0 for child in children)


def test_a_dead_processs_claims_are_free_again(
    claims_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    start = _free_span(2)
    claims_dir.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    stale = [int(dead.stdout), 0.0, 0.0]
    (claims_dir / "claims.json").write_text(json.dumps({str(start): stale}))
    monkeypatch.setattr(ports, "_pick_range", lambda: (start, start))
    assert ports.free_port() == start


def test_a_config_port_is_never_handed_out_elsewhere_until_released(
    claims_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    start = _free_span(2)
    ports.reserve_ports(start)
    claims = json.loads((claims_dir / "claims.json").read_text())
    assert claims[str(start)][0] == os.getpid()
    ports.release_ports()
    assert json.loads((claims_dir / "claims.json").read_text()) == {}


def test_without_a_claims_file_ports_are_kept_apart_in_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A /tmp one may not write to: picking still works."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setattr(ports, "CLAIMS_DIR", blocker / "claims")
    a, b = ports.free_port(), ports.free_port()
    assert a != b
