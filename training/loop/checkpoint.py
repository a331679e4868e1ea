"""Checkpoint layout: trainable weights, optimizer, scheduler and progress in one folder.

``state.pt`` resumes training; ``model_config/`` and ``tokenizer/`` make the folder
self-describing, so export and evaluation need nothing from the run that wrote it.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

import torch

from training.loop.model import hf_config, load_trainable_state, trainable_state

STATE_FILE = "state.pt"
META_FILE = "meta.json"


@dataclass
class Progress:
    """Where training stands; restored exactly on resume."""

    step: int = 0
    tokens_seen: int = 0


def save_checkpoint(
    dirpath: str, model, optimizer, scheduler, progress: Progress, tokenizer, meta: dict
) -> None:
    """Writes everything needed to resume or export into ``dirpath``."""
    state = {
        "model": {k: v.detach().cpu() for k, v in trainable_state(model).items()},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "progress": asdict(progress),
    }
    torch.save(state, os.path.join(dirpath, STATE_FILE))
    hf_config(model).save_pretrained(os.path.join(dirpath, "model_config"))
    tokenizer.save_pretrained(os.path.join(dirpath, "tokenizer"))
    with open(os.path.join(dirpath, META_FILE), "w") as f:
        json.dump({**meta, **asdict(progress)}, f, indent=2)


def load_checkpoint(dirpath: str, model, optimizer, scheduler) -> Progress:
    """Restores weights, optimizer and schedule in place; returns the saved progress."""
    state = torch.load(os.path.join(dirpath, STATE_FILE), map_location="cpu", weights_only=True)
    load_trainable_state(model, state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    return Progress(**state["progress"])


def load_weights(dirpath: str) -> dict[str, torch.Tensor]:
    """Only the trained weights, for export."""
    state = torch.load(os.path.join(dirpath, STATE_FILE), map_location="cpu", weights_only=True)
    return state["model"]


def read_meta(dirpath: str) -> dict:
    with open(os.path.join(dirpath, META_FILE)) as f:
        return json.load(f)
