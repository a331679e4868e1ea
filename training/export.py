"""Checkpoint -> Hugging Face folder that vLLM loads: safetensors, tokenizer, chat template.

For LoRA runs both forms are written: ``model/`` with the adapter merged into the base
(what vLLM serves without LoRA support), and ``adapter/`` with the adapter alone.
"""

from __future__ import annotations

import json
import os

import torch
from peft import get_peft_model, set_peft_model_state_dict
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from training.config import LoraSection
from training.loop.checkpoint import load_weights, read_meta
from training.tokenizer import CHAT_TEMPLATE

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def _tokenizer(ckpt_dir: str):
    tokenizer = AutoTokenizer.from_pretrained(os.path.join(ckpt_dir, "tokenizer"))
    if not tokenizer.chat_template:
        tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def _full_model(ckpt_dir: str):
    config = AutoConfig.from_pretrained(os.path.join(ckpt_dir, "model_config"))
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(load_weights(ckpt_dir))
    return model


def _peft_model(ckpt_dir: str, base_model: str, lora: dict):
    from training.config import FinetuneSection
    from training.loop.model import peft_config  # local import: only LoRA exports need it

    base = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.float32)
    section = FinetuneSection(base_model=base_model, method="lora", lora=LoraSection(**lora))
    model = get_peft_model(base, peft_config(section))
    set_peft_model_state_dict(model, load_weights(ckpt_dir))
    return model


def save_servable(model, tokenizer, out: str, dtype: str = "float32") -> None:
    """Writes what vLLM loads: safetensors weights, generation config and tokenizer."""
    model = model.to(_DTYPES[dtype])
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def export_checkpoint(
    ckpt_dir: str, out_dir: str, dtype: str = "float32", base_model: str | None = None
) -> dict[str, str]:
    """Writes the servable model (and the adapter for LoRA); returns their paths."""
    meta = read_meta(ckpt_dir)
    tokenizer = _tokenizer(ckpt_dir)
    paths = {"model": os.path.join(out_dir, "model")}
    if meta.get("method") == "lora":
        peft_model = _peft_model(ckpt_dir, base_model or meta["base_model"], meta["lora"])
        paths["adapter"] = os.path.join(out_dir, "adapter")
        peft_model.save_pretrained(paths["adapter"])
        tokenizer.save_pretrained(paths["adapter"])
        model = peft_model.merge_and_unload()
    else:
        model = _full_model(ckpt_dir)
    save_servable(model, tokenizer, paths["model"], dtype)
    write_metadata(paths["model"], {"checkpoint": ckpt_dir, **meta})
    return paths


def write_metadata(model_dir: str, info: dict) -> None:
    """``llm_cluster.json`` beside the weights: where they came from and how good they are."""
    path = os.path.join(model_dir, "llm_cluster.json")
    current = {}
    if os.path.exists(path):
        with open(path) as f:
            current = json.load(f)
    with open(path, "w") as f:
        json.dump({**current, **info}, f, indent=2, default=str)
