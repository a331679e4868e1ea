"""CLI argument handling and refusals: clear messages, non-zero exits, no tracebacks, no Ray."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from cluster.cli import build_parser, main
from cluster.state import ClusterState, load_state, save_state
from common.settings import get_settings
from tests.conftest import free_port


@pytest.fixture(autouse=True)
def isolated_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("LLM_CLUSTER_STATE_DIR", str(tmp_path / "home"))
    get_settings.cache_clear()
    yield tmp_path / "home" / "state.json"
    get_settings.cache_clear()


def config_file(tmp_path: Path, source: str, port: int | None = None) -> Path:
    data = {"http": {"port": port or free_port()}, "models": [{"id": "m", "source": source}]}
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def model_dir(tmp_path: Path) -> str:
    (tmp_path / "m").mkdir(exist_ok=True)
    (tmp_path / "m" / "config.json").write_text("{}")
    return "m"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


def test_parser_defaults() -> None:
    args = build_parser().parse_args(["up"])
    assert args.config is None and args.address is None  # then LLM_CLUSTER_CONFIG's default
    assert str(get_settings().config) == "deployments/local.yaml"
    args = build_parser().parse_args(["up", "--config", "x.yaml", "--address", "10.0.0.1:6379"])
    assert (args.config, args.address) == ("x.yaml", "10.0.0.1:6379")
    args = build_parser().parse_args(["model", "make-tiny", "--out", "d"])
    assert args.out == "d"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "required: COMMAND"),
        (["bogus"], "invalid choice: 'bogus'"),
        (["model"], "required: COMMAND"),
        (["model", "make-tiny"], "required: --out"),
        (["down", "--force"], "unrecognized arguments: --force"),
        (["scale"], "required: model"),
        (["scale", "m", "--min", "one"], "invalid int value: 'one'"),
        (["scale", "m", "--replicas", "2", "--auto"], "not allowed with argument --replicas"),
    ],
)
def test_usage_errors_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = run(capsys, *argv)
    assert code == 2 and message in err and "usage: llm-cluster" in err


def test_node_start_passes_rays_arguments_through(monkeypatch: pytest.MonkeyPatch) -> None:
    from cluster import ray_node

    calls = []
    monkeypatch.setattr(ray_node.subprocess, "call", lambda cmd, env: calls.append((cmd, env)))
    main(["node", "start", "--head", "--port=6379", "--tuning", "off", "--num-cpus=0"])
    ((command, env),) = calls
    assert command[1:] == ["start", "--head", "--port=6379", "--num-cpus=0",
                           "--disable-usage-stats"]  # fmt: skip
    assert env["RAY_SERVE_ENABLE_HA_PROXY"] == "1" and env["RAY_worker_niceness"] == "0"
    assert "RAY_SERVE_CONTROL_LOOP_INTERVAL_S" not in env  # tuning off


def test_a_bad_setting_names_its_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LLM_CLUSTER_UP_TIMEOUT_S", "soon")
    get_settings.cache_clear()
    code, err = run(capsys, "status")
    assert code == 2 and "LLM_CLUSTER_UP_TIMEOUT_S" in err and "valid number" in err


def test_down_and_status_with_nothing_up(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "down") == (1, "llm-cluster is not up: nothing to stop.\n")
    code, err = run(capsys, "status")
    assert code == 1 and "not up" in err
    code, err = run(capsys, "scale", "m", "--max", "2")
    assert code == 2 and "not up" in err


def test_up_with_missing_model_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run(capsys, "up", "--config", str(config_file(tmp_path, "no/such/model")))
    assert code == 2
    assert "models.0.source" in err and "does not exist" in err
    assert load_state() is None


def test_up_with_missing_or_invalid_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = run(capsys, "up", "--config", str(tmp_path / "nope.yaml"))
    assert code == 2 and "not found" in err
    bad = tmp_path / "bad.yaml"
    bad.write_text("models:\n  - id: m\n    source: m\n    gpus: 4\n")
    code, err = run(capsys, "up", "--config", str(bad))
    assert code == 2 and "models.0.gpus" in err


def test_up_twice_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # A live head: this very process stands in for it.
    save_state(ClusterState(address="127.0.0.1:1", api_url="http://127.0.0.1:9/v1",
                            dashboard_url="", config="c.yaml", head_pid=os.getpid()))  # fmt: skip
    code, err = run(capsys, "up", "--config", str(config_file(tmp_path, model_dir(tmp_path))))
    assert code == 2 and "already up" in err and "llm-cluster down" in err
    assert load_state() is not None  # the running cluster's record is untouched


def test_stale_state_is_cleared(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    save_state(ClusterState(address="127.0.0.1:1", api_url="http://127.0.0.1:9/v1",
                            dashboard_url="", config="c.yaml", head_pid=2**22 + 12345))  # fmt: skip
    code, _ = run(capsys, "status")
    assert code == 1
    # `up` with a busy HTTP port stops before starting anything, after clearing the stale file.
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        cfg = config_file(tmp_path, model_dir(tmp_path), port=port)
        code, err = run(capsys, "up", "--config", str(cfg))
    assert code == 2 and f"http.port {port} is already in use" in err
    assert load_state() is None


def test_up_creates_rays_auth_token_on_a_machine_that_never_ran_ray(tmp_path: Path) -> None:
    """`ray start --head` in token mode refuses to start without a token; `up` makes one."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    env["HOME"] = str(tmp_path)  # a user without ~/.ray
    code = "from common.internals import ensure_auth_token; ensure_auth_token()"
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=120)
    assert len((tmp_path / ".ray" / "auth_token").read_text().strip()) >= 32


def test_free_port_never_hands_out_a_port_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    """`up` picks several ports before Ray binds any; a repeat made `ray start` refuse."""
    from cluster import ports

    monkeypatch.setattr(ports, "_taken_ports", set())
    a, b, c = (free_port() for _ in range(3))
    ports._taken_ports.clear()
    ports.reserve_ports(a)
    picks = iter([a, b, b, c])  # the reserved port, then one port drawn twice
    monkeypatch.setattr(ports.random, "randint", lambda low, high: next(picks))
    assert [ports.free_port(), ports.free_port()] == [b, c]


@pytest.mark.parametrize(
    ("command", "code", "out", "err"),
    [
        # A pipe buffers stdout by blocks: without the flush, os._exit would drop this line.
        ("c.main = lambda: (print('served', end=''), 3)[1]", 3, "served", ""),
        ("sys.argv = ['llm-cluster', 'down']", 1, "", "nothing to stop"),
    ],
)
def test_console_entry_keeps_the_exit_code_and_every_line(
    tmp_path: Path, command: str, code: int, out: str, err: str
) -> None:
    """`llm-cluster` leaves through os._exit, skipping the interpreter's teardown."""
    entry = f"import sys; import cluster.cli as c; {command}; c.run()"
    env = {**os.environ, "LLM_CLUSTER_STATE_DIR": str(tmp_path / "home")}
    env.pop("PYTHONUNBUFFERED", None)  # CI sets it; a user's shell usually does not
    done = subprocess.run(
        [sys.executable, "-c", entry], capture_output=True, text=True, env=env, timeout=60
    )
    assert (done.returncode, done.stdout) == (code, out)
    assert err in done.stderr
