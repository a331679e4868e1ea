"""A LoRA export: the merged model generates the same greedy tokens as base + adapter."""

from __future__ import annotations

import os

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from training.config import FinetuneSection, LoraSection, OptimSection
from training.export import export_checkpoint
from training.loop.checkpoint import Progress, save_checkpoint
from training.loop.model import peft_config
from training.loop.schedule import make_scheduler


def _lora_checkpoint(base_dir, ckpt_dir):
    """A checkpoint whose adapter has non-zero B matrices, so it changes the outputs."""
    finetune = FinetuneSection(
        base_model=str(base_dir), method="lora", lora=LoraSection(r=4, alpha=8)
    )
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    from peft import get_peft_model

    model = get_peft_model(base, peft_config(finetune))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    sched = make_scheduler(opt, OptimSection(max_steps=1))
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    meta = {
        "kind": "sft",
        "method": "lora",
        "base_model": str(base_dir),
        "lora": finetune.lora.model_dump(),
    }
    save_checkpoint(str(ckpt_dir), model, opt, sched, Progress(step=1), tokenizer, meta)


def _greedy(model, tokenizer, prompt: str) -> list[int]:
    enc = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    out = model.generate(
        **enc,
        max_new_tokens=12,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=None,
    )
    return out[0, enc["input_ids"].shape[1] :].tolist()


@pytest.fixture(scope="module")
def exported(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("lora")
    (root / "ckpt").mkdir()
    _lora_checkpoint(tiny_model_dir, root / "ckpt")
    return export_checkpoint(str(root / "ckpt"), str(root / "export"))


def test_both_forms_are_written(exported):
    assert os.path.exists(os.path.join(exported["adapter"], "adapter_model.safetensors"))
    assert os.path.exists(os.path.join(exported["model"], "model.safetensors"))
    assert not any(
        "lora" in k for k in AutoModelForCausalLM.from_pretrained(exported["model"]).state_dict()
    )


def test_merged_matches_base_plus_adapter(exported, tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(exported["model"])
    merged = AutoModelForCausalLM.from_pretrained(exported["model"], dtype=torch.float32).eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    adapted = PeftModel.from_pretrained(base, exported["adapter"]).eval()
    plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    for prompt in ("The cluster serves", "12 plus 34 is", "<|user|>hi<|end|><|assistant|>"):
        assert _greedy(merged, tokenizer, prompt) == _greedy(adapted, tokenizer, prompt)
    differs = any(
        _greedy(plain, tokenizer, p) != _greedy(merged, tokenizer, p)
        for p in ("The cluster serves", "12 plus 34 is")
    )
    assert differs, "the adapter should change generations, else the test proves nothing"
