"""The driver of a run: prepare data, train on Ray Train, export, measure accuracy."""

from __future__ import annotations

import json
import logging
import os

os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")

from transformers import AutoTokenizer  # noqa: E402

from training import constants  # noqa: E402
from training.config import TrainConfig, check_runnable  # noqa: E402
from training.data.prepare import prepare_data  # noqa: E402
from training.evaluate import heldout_accuracy  # noqa: E402
from training.export import export_checkpoint, write_metadata  # noqa: E402

logger = logging.getLogger(__name__)


def _chosen_checkpoint(result, export_from: str):
    if export_from == "best" and result.best_checkpoints:
        scored = [(m.get("val_loss", float("inf")), c) for c, m in result.best_checkpoints]
        return min(scored, key=lambda x: x[0])[1]
    return result.checkpoint


def _export(config: TrainConfig, checkpoint) -> dict[str, str]:
    base = config.finetune.base_model if config.finetune else None
    with checkpoint.as_directory() as ckpt_dir:
        return export_checkpoint(ckpt_dir, config.export_dir, config.export.dtype, base)


def _evaluate(config: TrainConfig, model_dir: str) -> dict | None:
    ev = config.eval
    if not ev.heldout_path:
        return None
    return heldout_accuracy(
        model_dir, ev.heldout_path, ev.heldout_format, ev.heldout_limit, ev.max_new_tokens
    )


def run_training(config: TrainConfig) -> dict:
    """Runs the whole pipeline for an already-connected Ray; returns the summary it prints.

    A re-run with the same run name and storage resumes from the last checkpoint: Ray
    Train restores its checkpoint manager from storage and the prepared data is reused.
    """
    from training.loop.trainer import build_trainer  # imports ray.train after the env var

    check_runnable(config)
    prepared = prepare_data(config)
    print(f"data: {json.dumps(prepared.stats)} train_tokens={prepared.train_tokens}", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(prepared.tokenizer_dir)
    result = build_trainer(config, prepared, tokenizer).fit()
    checkpoint = _chosen_checkpoint(result, config.checkpoint.export_from)
    paths = _export(config, checkpoint)
    summary = {
        "run": config.run.name,
        "checkpoint": checkpoint.path,
        **paths,
        "metrics": result.metrics,
        "data": prepared.stats,
    }
    accuracy = _evaluate(config, paths["model"])
    if accuracy is not None:
        summary["heldout"] = accuracy
        write_metadata(paths["model"], {"heldout_accuracy": accuracy["accuracy"]})
    print(f"{constants.RESULT_MARKER} {json.dumps(summary, default=str)}", flush=True)
    return summary
