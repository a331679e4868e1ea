"""LoRA SFT on Ray Train from a servable model directory, exported in both forms."""

from __future__ import annotations

import os

from tests.integration.training.helpers import write_chat_corpus
from training.config import parse_config
from training.run import run_training


def test_lora_sft_run_exports_merged_model_and_adapter(local_ray, tiny_model_dir, tmp_path):
    corpus = write_chat_corpus(tmp_path / "chat.jsonl")
    config = parse_config(
        {
            "kind": "sft",
            "run": {"name": "sft", "storage_path": str(tmp_path / "runs")},
            "data": {"paths": [str(corpus)], "max_length": 32, "valid_fraction": 0.1},
            "finetune": {"base_model": str(tiny_model_dir), "method": "lora", "lora": {"r": 4}},
            "optim": {"max_steps": 12, "micro_batch_size": 8, "lr": 5e-3, "warmup_steps": 2},
            "scaling": {"num_workers": 2},
            "checkpoint": {"every_steps": 6, "num_to_keep": 1, "export_from": "best"},
            "eval": {"every_steps": 6, "log_every_steps": 3, "max_batches": 2},
        }
    )
    summary = run_training(config)
    assert summary["metrics"]["step"] == 12
    assert summary["metrics"]["val_loss"] < 20
    assert os.path.exists(os.path.join(summary["adapter"], "adapter_config.json"))
    assert os.path.exists(os.path.join(summary["model"], "model.safetensors"))
    assert os.path.exists(os.path.join(summary["model"], "llm_cluster.json"))
