"""Maps a TrainConfig onto a Ray Train V2 TorchTrainer."""

from __future__ import annotations

import json
import os

os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")

import ray  # noqa: E402
from ray.train import (  # noqa: E402
    CheckpointConfig,
    FailureConfig,
    LoggingConfig,
    RunConfig,
    ScalingConfig,
    UserCallback,  # noqa: E402
)
from ray.train.torch import TorchConfig, TorchTrainer  # noqa: E402

from training import constants  # noqa: E402
from training.config import TrainConfig  # noqa: E402
from training.data.prepare import PreparedData  # noqa: E402
from training.loop.worker import train_loop_per_worker  # noqa: E402


class ProgressPrinter(UserCallback):
    """Prints one JSON progress line per report, on the controller, into the job's logs.

    ``llm-cluster train status`` reads the last of these lines: step, loss, tokens per
    second and the persisted checkpoint path, without any extra state service.
    """

    def __init__(self, progress_file: str | None = None):
        self.progress_file = progress_file

    def after_report(self, run_context, metrics, checkpoint):
        line = dict(metrics[0]) if metrics else {}
        if checkpoint is not None:
            line["checkpoint"] = checkpoint.path
        text = json.dumps(line, default=float)
        print(f"{constants.PROGRESS_MARKER} {text}", flush=True)
        if self.progress_file:
            with open(self.progress_file, "a") as f:
                f.write(text + "\n")


def progress_file(config: TrainConfig) -> str | None:
    """``progress.jsonl`` in a local run folder: every report, for benchmarks and debugging."""
    if "://" in config.run.storage_path:
        return None
    os.makedirs(config.run_dir, exist_ok=True)
    return os.path.join(config.run_dir, "progress.jsonl")


def scaling_config(config: TrainConfig) -> ScalingConfig:
    s = config.scaling
    resources = {"CPU": s.cpus_per_worker, **({"GPU": 1} if s.use_gpu else {})}
    return ScalingConfig(
        num_workers=s.num_workers, use_gpu=s.use_gpu, resources_per_worker=resources
    )


def run_config(config: TrainConfig) -> RunConfig:
    ckpt = config.checkpoint
    best = ckpt.export_from == "best"
    # ray.train exports Train V2's RunConfig at run time (RAY_TRAIN_V2_ENABLED, set above);
    # mypy sees the V1 class it imports first, which lacks logging_config and UserCallback.
    return RunConfig(  # type: ignore[call-arg]
        name=config.run.name,
        storage_path=config.run.storage_path,
        checkpoint_config=CheckpointConfig(
            num_to_keep=ckpt.num_to_keep,
            checkpoint_score_attribute="val_loss" if best else None,
            checkpoint_score_order="min",
        ),
        failure_config=FailureConfig(max_failures=ckpt.max_failures),
        callbacks=[ProgressPrinter(progress_file(config))],  # type: ignore[list-item]
        logging_config=LoggingConfig(log_level="WARNING"),
    )


def build_trainer(config: TrainConfig, prepared: PreparedData, tokenizer) -> TorchTrainer:
    """The trainer; the data goes to workers through the object store, not the filesystem."""
    data_ref = ray.put({"train": prepared.train, "valid": prepared.valid, "tokenizer": tokenizer})
    loop_config = {
        "config": config.model_dump(),
        "data_ref": data_ref,
        "failure_marker": os.path.join(config.run_dir, ".injected_failure"),
    }
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=scaling_config(config),
        run_config=run_config(config),
        torch_config=TorchConfig(backend="nccl" if config.scaling.use_gpu else "gloo"),
    )
