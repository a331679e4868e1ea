"""Turns a config's data into token arrays and a tokenizer, cached in the run folder.

The cache matters for resumption: a re-run of the same run name must see the same
tokenizer and the same examples as the checkpoints it resumes from, so the prepared data
is reused when the data-shaping part of the config is unchanged, and rebuilt otherwise.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field

import numpy as np
import ray
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from common.settings import get_settings
from training.config import TrainConfig
from training.data.chat import encode_chat_batch
from training.data.errors import DataError
from training.data.pack import tokenize_and_pack, tokenize_and_pack_pairs
from training.data.pipeline import load_records
from training.tokenizer import train_bpe_tokenizer


@dataclass
class PreparedData:
    """Token arrays ready for the training loop; ``labels`` is None for pretraining."""

    tokenizer_dir: str
    train: dict[str, np.ndarray]
    valid: dict[str, np.ndarray]
    stats: dict = field(default_factory=dict)

    @property
    def train_tokens(self) -> int:
        return int(self.train["input_ids"].size)


def prepared_dir(config: TrainConfig) -> str:
    """Local folder of the prepared data (a local cache when storage is a URI)."""
    if "://" in config.run.storage_path:
        return os.path.expanduser(f"~/.cache/llm-cluster/{config.run.name}/prepared")
    return os.path.join(config.run_dir, "prepared")


def fingerprint(config: TrainConfig) -> str:
    """Hash of everything that shapes the prepared data."""
    parts = {
        "kind": config.kind,
        "data": config.data.model_dump(),
        "tokenizer": config.tokenizer.model_dump() if config.tokenizer else None,
        "base": config.finetune.base_model if config.finetune else None,
        "seed": config.run.seed,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def _collect(ds: ray.data.Dataset, fn, fn_kwargs: dict) -> dict[str, np.ndarray]:
    out = ds.map_batches(
        fn, fn_kwargs=fn_kwargs, batch_size=get_settings().data_batch_size, batch_format="numpy"
    )
    batches = list(out.iter_batches(batch_size=None, batch_format="numpy"))
    keys = batches[0].keys() if batches else ["input_ids"]
    return {k: np.concatenate([b[k] for b in batches]) for k in keys} if batches else {}


def record_kind(config: TrainConfig) -> str:
    """How records are read: chat turns (SFT), prompt/completion pairs, or plain text."""
    if config.kind == "sft":
        return "chat"
    return "pair" if config.data.prompt_field else "text"


def _as_text(text: str, kind: str) -> str:
    return "".join(json.loads(text)) if kind == "pair" else text


def _pretrain_tokenizer(train: ray.data.Dataset, config: TrainConfig) -> PreTrainedTokenizerBase:
    kind = record_kind(config)
    rows = train.limit(get_settings().tokenizer_sample_size).iter_rows()
    texts = (_as_text(r["text"], kind) for r in rows)
    return train_bpe_tokenizer(texts, config.pretrain_tokenizer.vocab_size)


def _tokenize(config: TrainConfig, tokenizer, ds: ray.data.Dataset) -> dict[str, np.ndarray]:
    if record_kind(config) == "pair":
        kwargs = {"tokenizer": tokenizer, "block_size": config.data.block_size}
        return _collect(ds, tokenize_and_pack_pairs, kwargs)
    if config.kind == "pretrain":
        kwargs = {
            "tokenizer": tokenizer,
            "block_size": config.data.block_size,
            "packing": config.data.packing,
        }
        return _collect(ds, tokenize_and_pack, kwargs)
    kwargs = {"tokenizer": tokenizer, "max_length": config.data.max_length}
    return _collect(ds, encode_chat_batch, kwargs)


def _build(config: TrainConfig, out: str) -> PreparedData:
    train_ds, valid_ds, stats = load_records(config.data, record_kind(config), config.run.seed)
    if config.kind == "pretrain":
        tokenizer = _pretrain_tokenizer(train_ds, config)
    else:
        tokenizer = AutoTokenizer.from_pretrained(config.sft_finetune.base_model)
    train, valid = _tokenize(config, tokenizer, train_ds), _tokenize(config, tokenizer, valid_ds)
    if not train or len(train["input_ids"]) == 0:
        raise DataError(
            "the training split has too few tokens for one block/example "
            f"(block_size={config.data.block_size}); stage counts: {stats.as_dict()}"
        )
    tokenizer_dir = os.path.join(out, "tokenizer")
    tokenizer.save_pretrained(tokenizer_dir)
    prepared = PreparedData(tokenizer_dir, train, valid or {}, stats.as_dict())
    _save(prepared, out, fingerprint(config))
    return prepared


def _save(prepared: PreparedData, out: str, fp: str) -> None:
    # numpy's default spelled out: otherwise mypy matches the **arrays against allow_pickle.
    np.savez(os.path.join(out, "train.npz"), allow_pickle=True, **prepared.train)
    np.savez(os.path.join(out, "valid.npz"), allow_pickle=True, **prepared.valid)
    meta = {"fingerprint": fp, "stats": prepared.stats}
    with open(os.path.join(out, "meta.json"), "w") as f:
        json.dump(meta, f, indent=2)


def _load_cached(out: str, fp: str) -> PreparedData | None:
    try:
        with open(os.path.join(out, "meta.json")) as f:
            meta = json.load(f)
    except (OSError, json.JSONDecodeError):
        return None
    if meta.get("fingerprint") != fp:
        return None
    train = dict(np.load(os.path.join(out, "train.npz")))
    valid = dict(np.load(os.path.join(out, "valid.npz")))
    return PreparedData(os.path.join(out, "tokenizer"), train, valid, meta["stats"])


def prepare_data(config: TrainConfig) -> PreparedData:
    """Builds (or reuses) the prepared data; raises DataError before any worker starts."""
    out = prepared_dir(config)
    os.makedirs(out, exist_ok=True)
    return _load_cached(out, fingerprint(config)) or _build(config, out)
