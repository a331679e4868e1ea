"""The training config: one YAML per run, validated by pydantic before anything starts.

Relative paths in a config resolve against the directory the command runs from (like
``torchrun`` or ``make``), so a shipped recipe writes its runs into the user's project,
never into the package. ``resolve_paths`` makes them absolute before a job is submitted.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from common.config_file import ConfigError, load, parse
from common.settings import get_settings

# Unicode normalisation of records before de-duplication ("none": as read).
UnicodeForm = Literal["NFKC", "NFC", "none"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RunSection(_Section):
    """Names the run; the same name in the same storage resumes from its last checkpoint."""

    name: str = Field(..., pattern=r"^[A-Za-z0-9._-]+$", description="Run name (folder name).")
    storage_path: str = Field(
        default_factory=lambda: get_settings().runs_dir,
        description="Folder (or pyarrow URI) for checkpoints and exports.",
    )
    seed: int = Field(0, description="Seed for weights, data order and the split.")


class DataSection(_Section):
    """Where the records come from and how they are cleaned and shaped."""

    paths: list[str] = Field(..., min_length=1, description="Files, folders or pyarrow URIs.")
    format: Literal["auto", "jsonl", "text", "parquet"] = Field(
        "auto", description="Input format; auto picks by file extension."
    )
    text_field: str = Field("text", description="Field holding the text (pretraining).")
    prompt_field: str | None = Field(
        None,
        description="Pretraining on prompt/completion records: the prompt's field (given, "
        "not learned); text_field then holds the completion, the only part learned.",
    )
    messages_field: str = Field("messages", description="Field holding chat turns (SFT).")
    on_error: Literal["skip", "raise"] = Field(
        "skip", description="Skip malformed records (with a report) or reject the data set."
    )
    unicode_form: UnicodeForm = Field(
        "NFKC", description="Unicode normalisation applied before de-duplication."
    )
    min_chars: int = Field(1, ge=1, description="Records shorter than this are dropped.")
    dedup: bool = Field(True, description="Drop exact duplicates after cleaning.")
    valid_fraction: float = Field(
        0.05, ge=0.0, lt=1.0, description="Share of records (by content hash) held for validation."
    )
    block_size: int = Field(128, ge=8, description="Tokens per packed block (pretraining).")
    packing: Literal["aligned", "concat"] = Field(
        "aligned", description="Whole documents per block (padded) or a continuous stream."
    )
    max_length: int = Field(256, ge=8, description="Longest chat example in tokens (SFT).")


class TokenizerSection(_Section):
    """The BPE tokenizer trained on the corpus for pretraining."""

    vocab_size: int = Field(512, ge=300, description="Upper bound of the BPE vocabulary.")


class ModelSection(_Section):
    """Shape of the Llama model pretrained from scratch."""

    hidden_size: int = Field(128, ge=8, description="Width of the residual stream.")
    intermediate_size: int = Field(512, ge=8, description="Width of the MLP.")
    num_hidden_layers: int = Field(4, ge=1, description="Transformer blocks.")
    num_attention_heads: int = Field(4, ge=1, description="Attention heads.")
    num_key_value_heads: int | None = Field(None, description="KV heads (None: as many as heads).")
    max_position_embeddings: int = Field(512, ge=8, description="Longest context served.")
    tie_word_embeddings: bool = Field(True, description="Share input and output embeddings.")


class LoraSection(_Section):
    """LoRA adapter settings (peft)."""

    r: int = Field(8, ge=1, description="Adapter rank.")
    alpha: int = Field(16, ge=1, description="Scaling numerator (alpha / r).")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the adapter input.")
    target_modules: list[str] = Field(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        description="Module names that get adapters.",
    )


class FinetuneSection(_Section):
    """Supervised fine-tuning of an existing model directory."""

    base_model: str = Field(..., description="Hugging Face model directory to start from.")
    method: Literal["full", "lora"] = Field("lora", description="Train all weights or LoRA.")
    lora: LoraSection = Field(default_factory=LoraSection, description="LoRA settings.")


class OptimSection(_Section):
    """Optimiser, batch and schedule."""

    max_steps: int = Field(..., ge=1, description="Optimiser steps in the whole run.")
    micro_batch_size: int = Field(16, ge=1, description="Examples per worker per forward pass.")
    grad_accum_steps: int = Field(1, ge=1, description="Forward passes per optimiser step.")
    lr: float = Field(1e-3, gt=0, description="Peak learning rate.")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="Final LR as a share of peak.")
    warmup_steps: int = Field(50, ge=0, description="Linear warm-up steps.")
    schedule: Literal["cosine", "linear", "constant"] = Field(
        "cosine", description="Decay after warm-up."
    )
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay.")
    grad_clip: float = Field(1.0, ge=0, description="Max gradient norm (0: no clipping).")


class ScalingSection(_Section):
    """Maps onto Ray Train's ScalingConfig."""

    num_workers: int = Field(2, ge=1, description="Training workers (processes).")
    use_gpu: bool = Field(False, description="One GPU per worker, NCCL; else CPU and gloo.")
    cpus_per_worker: int = Field(1, ge=1, description="CPUs reserved per worker.")
    torch_threads: int | None = Field(None, description="Intra-op threads (None: cpus_per_worker).")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="auto: bf16 on GPUs that have it, fp32 on CPU."
    )


class CheckpointSection(_Section):
    """Checkpointing and failure handling."""

    every_steps: int = Field(100, ge=1, description="Steps between checkpoints.")
    num_to_keep: int = Field(2, ge=1, description="Checkpoints kept (CheckpointConfig).")
    max_failures: int = Field(3, ge=-1, description="Worker failures recovered (FailureConfig).")
    export_from: Literal["final", "best"] = Field(
        "final", description="Export the last checkpoint or the one with the lowest val loss."
    )


class EvalSection(_Section):
    """Validation during training and held-out accuracy after export."""

    every_steps: int = Field(100, ge=1, description="Steps between validation passes.")
    max_batches: int = Field(20, ge=1, description="Validation batches per worker per pass.")
    log_every_steps: int = Field(10, ge=1, description="Steps between progress reports.")
    heldout_path: str | None = Field(None, description="JSONL of held-out questions to score.")
    heldout_format: Literal["completion", "chat"] = Field(
        "completion", description="Ask with the raw prompt or through the chat template."
    )
    heldout_limit: int = Field(1000, ge=1, description="Questions scored at most.")
    max_new_tokens: int = Field(8, ge=1, description="Greedy tokens generated per answer.")


class ExportSection(_Section):
    """Where the servable model goes."""

    dir: str | None = Field(None, description="Export folder (None: <storage>/<name>/export).")
    dtype: Literal["float32", "bfloat16"] = Field("float32", description="Saved weight dtype.")


class DebugSection(_Section):
    """Testing aids; leave unset in real runs."""

    fail_at_step: int | None = Field(
        None, description="Rank 0 exits once at this step, to exercise worker recovery."
    )


class TrainConfig(_Section):
    """One training run: pretraining from scratch or supervised fine-tuning."""

    kind: Literal["pretrain", "sft"] = Field(..., description="What the run trains.")
    run: RunSection = Field(..., description="Name, storage and seed.")
    data: DataSection = Field(..., description="Input records and their shaping.")
    tokenizer: TokenizerSection | None = Field(None, description="Pretraining only.")
    model: ModelSection | None = Field(None, description="Pretraining only.")
    finetune: FinetuneSection | None = Field(None, description="SFT only.")
    optim: OptimSection = Field(..., description="Optimiser and schedule.")
    scaling: ScalingSection = Field(default_factory=ScalingSection, description="Workers.")
    checkpoint: CheckpointSection = Field(default_factory=CheckpointSection, description="Ckpt.")
    eval: EvalSection = Field(default_factory=EvalSection, description="Validation and accuracy.")
    export: ExportSection = Field(default_factory=ExportSection, description="Servable output.")
    debug: DebugSection = Field(default_factory=DebugSection, description="Testing aids.")

    @model_validator(mode="after")
    def _sections_match_kind(self) -> TrainConfig:
        if self.kind == "pretrain" and self.finetune is not None:
            raise ValueError("kind 'pretrain' takes 'model' and 'tokenizer', not 'finetune'")
        if self.kind == "sft" and self.finetune is None:
            raise ValueError("kind 'sft' needs a 'finetune' section with base_model")
        if self.kind == "sft" and (self.model or self.tokenizer):
            raise ValueError("kind 'sft' takes its shape and tokenizer from finetune.base_model")
        if self.kind == "pretrain":
            self.model = self.model or ModelSection()
            self.tokenizer = self.tokenizer or TokenizerSection()
        return self

    @property
    def pretrain_model(self) -> ModelSection:
        """The model section of a pretraining run (the validator fills it in)."""
        if self.model is None:
            raise ValueError(f"kind {self.kind!r} has no 'model' section")
        return self.model

    @property
    def pretrain_tokenizer(self) -> TokenizerSection:
        """The tokenizer section of a pretraining run (the validator fills it in)."""
        if self.tokenizer is None:
            raise ValueError(f"kind {self.kind!r} has no 'tokenizer' section")
        return self.tokenizer

    @property
    def sft_finetune(self) -> FinetuneSection:
        """The finetune section of an SFT run (the validator requires it)."""
        if self.finetune is None:
            raise ValueError(f"kind {self.kind!r} has no 'finetune' section")
        return self.finetune

    @property
    def run_dir(self) -> str:
        """The run's folder inside storage: checkpoints, prepared data, export."""
        return os.path.join(self.run.storage_path, self.run.name)

    @property
    def export_dir(self) -> str:
        """Where the servable model (and the LoRA adapter) are written."""
        return self.export.dir or os.path.join(self.run_dir, "export")


def _is_uri(path: str) -> bool:
    return "://" in path


def _absolute(path: str, base: Path) -> str:
    if _is_uri(path) or os.path.isabs(path):
        return path
    return str((base / path).resolve())


def resolve_paths(config: TrainConfig, base: str | Path | None = None) -> TrainConfig:
    """Returns a copy with every local path absolute, so it means the same in a Ray job."""
    root = Path(base or os.getcwd())
    data = config.data.model_copy(update={"paths": [_absolute(p, root) for p in config.data.paths]})
    update: dict = {
        "data": data,
        "run": config.run.model_copy(
            update={"storage_path": _absolute(config.run.storage_path, root)}
        ),
    }
    if config.finetune:
        update["finetune"] = config.finetune.model_copy(
            update={"base_model": _absolute(config.finetune.base_model, root)}
        )
    if config.eval.heldout_path:
        update["eval"] = config.eval.model_copy(
            update={"heldout_path": _absolute(config.eval.heldout_path, root)}
        )
    if config.export.dir:
        update["export"] = config.export.model_copy(
            update={"dir": _absolute(config.export.dir, root)}
        )
    return config.model_copy(update=update)


def parse_config(raw: object, source: str = "<config>") -> TrainConfig:
    """Validates a loaded mapping; raises ConfigError with one line per problem."""
    return parse(TrainConfig, raw, f"training config {source}")


def load_config(path: str | Path) -> TrainConfig:
    """Reads and validates a YAML config; every problem becomes a ConfigError."""
    return load(TrainConfig, path)


def check_runnable(config: TrainConfig) -> None:
    """Checks what can be checked before submission: local inputs exist, shapes agree."""
    for path in config.data.paths:
        if not _is_uri(path) and not os.path.exists(path):
            raise ConfigError(f"data path does not exist: {path}")
    if config.finetune and not os.path.isfile(
        os.path.join(config.finetune.base_model, "config.json")
    ):
        raise ConfigError(
            f"finetune.base_model is not a model directory: {config.finetune.base_model}"
        )
    if config.eval.heldout_path and not os.path.exists(config.eval.heldout_path):
        raise ConfigError(f"eval.heldout_path does not exist: {config.eval.heldout_path}")
    if config.model and config.model.hidden_size % config.model.num_attention_heads:
        raise ConfigError("model.hidden_size must be a multiple of model.num_attention_heads")
    if config.model and config.data.block_size > config.model.max_position_embeddings:
        raise ConfigError("data.block_size exceeds model.max_position_embeddings")
