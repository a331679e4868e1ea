"""Writes a deterministic tiny Llama that vLLM loads: the model tests and the demo serve.

Random weights with a fixed seed, a BPE tokenizer trained on a small built-in corpus, and a
chat template. The same seed gives byte-identical weights, so test expectations are stable.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field
from transformers import LlamaConfig, LlamaForCausalLM

from training.export import save_servable
from training.tokenizer import train_bpe_tokenizer

_SUBJECTS = ["The cluster", "A replica", "The model", "Ray Serve", "The engine", "A worker"]
_VERBS = ["serves", "trains", "scales", "streams", "answers", "batches"]
_OBJECTS = ["tokens", "requests", "prompts", "checkpoints", "models", "numbers 12 and 34"]


class TinyModelSpec(BaseModel):
    """Shape of the tiny model; defaults are the ones measured to load fast in vLLM-CPU."""

    model_config = ConfigDict(extra="forbid")

    hidden_size: int = Field(128, description="Width of the residual stream.")
    intermediate_size: int = Field(256, description="Width of the MLP.")
    num_hidden_layers: int = Field(2, description="Transformer blocks.")
    num_attention_heads: int = Field(4, description="Attention heads.")
    max_position_embeddings: int = Field(2048, description="Longest context the model knows.")
    vocab_size: int = Field(2048, description="Upper bound for the BPE vocabulary.")
    seed: int = Field(0, description="Seed for the weights.")


def builtin_corpus() -> list[str]:
    """A small deterministic corpus, enough for BPE to learn common English merges."""
    lines = [f"{s} {v} {o}." for s in _SUBJECTS for v in _VERBS for o in _OBJECTS]
    lines += [f"{a} plus {b} is {a + b}." for a in range(0, 100, 7) for b in range(0, 100, 11)]
    return lines


def make_tiny_model(out_dir: str | Path, spec: TinyModelSpec | None = None) -> Path:
    """Writes model, tokenizer and generation config in Hugging Face format to ``out_dir``."""
    spec = spec or TinyModelSpec()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = train_bpe_tokenizer(builtin_corpus(), spec.vocab_size)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_attention_heads,
        max_position_embeddings=spec.max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(spec.seed)
    save_servable(LlamaForCausalLM(config), tokenizer, str(out))
    (out / "llm_cluster.json").write_text(json.dumps({"kind": "tiny", **spec.model_dump()}))
    return out
