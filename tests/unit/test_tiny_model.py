"""The tiny model maker: deterministic, Hugging Face format, digit-splitting, chat template."""

from __future__ import annotations

import hashlib
from pathlib import Path

from transformers import AutoConfig, AutoTokenizer

from training.tiny_model import TinyModelSpec, make_tiny_model


def digest(path: Path) -> str:
    return hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()


def test_same_seed_same_bytes_other_seed_other_bytes(tiny_model_dir: Path, tmp_path: Path) -> None:
    again = make_tiny_model(tmp_path / "again")
    assert digest(again) == digest(tiny_model_dir)
    other = make_tiny_model(tmp_path / "other", TinyModelSpec(seed=1))
    assert digest(other) != digest(tiny_model_dir)


def test_loads_as_a_llama_with_its_tokenizer(tiny_model_dir: Path) -> None:
    config = AutoConfig.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert config.model_type == "llama" and config.vocab_size == len(tokenizer)
    assert tokenizer.tokenize("12+345") == ["1", "2", "+", "3", "4", "5"]
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert prompt == "<|user|>hi<|end|><|assistant|>"
    assert tokenizer.eos_token == "<|end|>"
