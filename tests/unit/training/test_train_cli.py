"""`llm-cluster train ...` with a fake Jobs client: submission, status, clear errors."""

from __future__ import annotations

import argparse
import json
from types import SimpleNamespace

import pytest
import yaml

from cluster import jobs, train_cli
from training import constants


class FakeClient:
    """The slice of JobSubmissionClient the CLI uses."""

    def __init__(self, logs: str = "", status: str = "RUNNING"):
        self.submitted: dict | None = None
        self.logs, self.status = logs, status

    def submit_job(self, **kwargs):
        self.submitted = kwargs
        return kwargs["submission_id"]

    def get_job_info(self, job_id):
        if job_id != "train-x-1":
            raise RuntimeError(f"Job {job_id} does not exist")
        meta = {
            "kind": jobs.JOB_KIND,
            "run_name": "x",
            "train_kind": "pretrain",
            "max_steps": "500",
        }
        return SimpleNamespace(status=self.status, metadata=meta, message="")

    def get_job_logs(self, job_id):
        return self.logs

    def list_jobs(self):
        meta = {"kind": jobs.JOB_KIND, "run_name": "x", "train_kind": "pretrain"}
        return [
            SimpleNamespace(
                submission_id="train-x-1",
                job_id=None,
                status="RUNNING",
                metadata=meta,
                start_time=1,
            ),
            SimpleNamespace(
                submission_id="other", job_id=None, status="SUCCEEDED", metadata={}, start_time=2
            ),
        ]

    def stop_job(self, job_id):
        return True


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llm-cluster")
    train_cli.add_train_commands(parser.add_subparsers(dest="command", required=True))
    return parser


def _run(argv, capsys) -> tuple[int, str, str]:
    args = _parser().parse_args(argv)
    code = args.func(args)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def fake(monkeypatch):
    client = FakeClient()
    monkeypatch.setattr(jobs, "make_client", lambda address: client)
    return client


def _config(tmp_path) -> str:
    (tmp_path / "data.jsonl").write_text('{"text": "1+1=2"}\n')
    raw = {
        "kind": "pretrain",
        "run": {"name": "x"},
        "data": {"paths": ["data.jsonl"]},
        "optim": {"max_steps": 5},
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def test_submit_ships_a_resolved_config(fake, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, out, _ = _run(["train", "submit", _config(tmp_path)], capsys)
    assert code == 0 and out.strip().startswith("train-x-")
    sent = fake.submitted
    assert sent["runtime_env"]["working_dir"] == str(tmp_path)
    shipped = json.loads(sent["runtime_env"]["env_vars"][constants.CONFIG_ENV_VAR])
    assert shipped["data"]["paths"] == [str(tmp_path / "data.jsonl")]
    assert sent["entrypoint"].startswith("python -m training --config-env")


def test_config_error_is_reported_before_submission(fake, tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: pretrain\nrun: {name: x}\n")
    code, _, err = _run(["train", "submit", str(bad)], capsys)
    assert code == 2 and "data" in err and "Traceback" not in err
    assert fake.submitted is None


def test_missing_data_is_reported_before_submission(fake, tmp_path, capsys):
    path = _config(tmp_path)
    (tmp_path / "data.jsonl").unlink()
    code, _, err = _run(["train", "submit", path], capsys)
    assert code == 2 and "does not exist" in err and fake.submitted is None


def test_status_shows_step_loss_throughput_and_checkpoint(fake, capsys):
    mark = constants.PROGRESS_MARKER
    fake.logs = "\n".join(
        [
            f"(TrainController pid=1) {mark} "
            '{"step": 100, "loss": 1.5, "tokens_per_s": 9000.0, "checkpoint": "/r/ckpt_100"}',
            f'(TrainController pid=1) {mark} {{"step": 110, "loss": 1.4, "tokens_per_s": 9100.0}}',
        ]
    )
    code, out, _ = _run(["train", "status", "train-x-1"], capsys)
    assert code == 0
    assert "110 / 500" in out and "1.4000" in out and "9,100" in out and "/r/ckpt_100" in out


def test_unknown_job_is_a_clear_error(fake, capsys):
    code, _, err = _run(["train", "status", "nope"], capsys)
    assert code == 1 and "does not exist" in err


def test_list_shows_only_training_jobs(fake, capsys):
    code, out, _ = _run(["train", "list"], capsys)
    assert code == 0 and "train-x-1" in out and "other" not in out


def test_unreachable_cluster(monkeypatch, capsys):
    def refuse(address):
        raise ConnectionError("refused")

    monkeypatch.setattr(jobs, "make_client", refuse)
    code, _, err = _run(["train", "list", "--address", "http://127.0.0.1:1"], capsys)
    assert code == 1 and "127.0.0.1:1" in err and "Traceback" not in err
