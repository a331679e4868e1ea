"""Builds the model a run trains: a fresh Llama, or a saved model with optional LoRA.

The model config and tokenizer travel inside every checkpoint, so export needs only the
checkpoint (plus the base weights for LoRA).
"""

from __future__ import annotations

import torch
from peft import (
    LoraConfig,
    PeftModel,
    get_peft_model,
    get_peft_model_state_dict,
    set_peft_model_state_dict,
)
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from training.config import FinetuneSection, ModelSection, TrainConfig


def llama_config(shape: ModelSection, tokenizer) -> LlamaConfig:
    """The HF config of a from-scratch model whose vocabulary is the trained tokenizer's."""
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_hidden_layers,
        num_attention_heads=shape.num_attention_heads,
        num_key_value_heads=shape.num_key_value_heads or shape.num_attention_heads,
        max_position_embeddings=shape.max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=shape.tie_word_embeddings,
    )


def peft_config(finetune: FinetuneSection) -> LoraConfig:
    lora = finetune.lora
    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        task_type="CAUSAL_LM",
    )


def build_model(config: TrainConfig, tokenizer, seed: int) -> torch.nn.Module:
    """Fresh Llama for pretraining; base weights (+ LoRA) for SFT. Same seed on every rank."""
    torch.manual_seed(seed)
    if config.kind == "pretrain":
        return LlamaForCausalLM(llama_config(config.pretrain_model, tokenizer))
    finetune = config.sft_finetune
    base = AutoModelForCausalLM.from_pretrained(finetune.base_model, dtype=torch.float32)
    if finetune.method == "lora":
        return get_peft_model(base, peft_config(finetune))
    return base


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """What a checkpoint stores: the adapter only for LoRA, every weight otherwise."""
    if isinstance(model, PeftModel):
        return get_peft_model_state_dict(model)
    return model.state_dict()


def load_trainable_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    if isinstance(model, PeftModel):
        result = set_peft_model_state_dict(model, state)
        # peft annotates the result as `namedtuple` (the factory); it is torch's _IncompatibleKeys.
        unexpected = result.unexpected_keys  # type: ignore[attr-defined]
        if unexpected:
            raise ValueError(f"adapter checkpoint has unexpected keys: {unexpected[:5]}")
        return
    model.load_state_dict(state)


def hf_config(model: torch.nn.Module):
    """The underlying transformers config (through a PeftModel if needed)."""
    return model.get_base_model().config if isinstance(model, PeftModel) else model.config
