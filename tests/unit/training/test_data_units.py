"""Pieces of the data pipeline that need no Ray: parsing, cleaning, packing, loss masks."""

from __future__ import annotations

import json

import numpy as np
import pytest

from training.data.chat import IGNORE_INDEX, encode_chat, encode_chat_batch
from training.data.clean import normalize_chat, normalize_text
from training.data.pack import pack_aligned, pack_token_lists
from training.data.records import read_file, validate_messages
from training.data.split import content_key, is_validation
from training.tokenizer import train_bpe_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    texts = ["What is 12 plus 34?", "46", "hello world", "You add numbers."] * 20
    return train_bpe_tokenizer(texts, 400)


def test_normalize_collapses_whitespace_and_unicode():
    assert normalize_text("  ﬁne\u00a0 \t day \r\n\n  next\x07 ", "NFKC") == "fine day\nnext"
    assert normalize_text("Ａ", "none") == "Ａ"


def test_normalize_chat_keeps_roles():
    raw = json.dumps([{"role": "user", "content": " hi  there "}])
    assert json.loads(normalize_chat(raw, "NFKC")) == [{"role": "user", "content": "hi there"}]


def test_bad_records_are_reported_with_file_and_line(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"text": "ok"}\n{broken\n\n{"other": 1}\n{"text": 5}\n')
    rows = read_file({"path": str(path), "format": "jsonl", "file_index": 0}, "text", "text")
    assert [(r["source"].rsplit(":", 1)[1], bool(r["error"])) for r in rows] == [
        ("1", False),
        ("2", True),
        ("4", True),
        ("5", True),
    ]
    assert "invalid JSON" in rows[1]["error"] and "missing field" in rows[2]["error"]


def test_chat_validation():
    assert (
        validate_messages([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}])
        == ""
    )
    assert "no assistant" in validate_messages([{"role": "user", "content": "q"}])
    assert "unknown role" in validate_messages([{"role": "bot", "content": "q"}])
    assert validate_messages("nope")


def test_packing_lengths_and_eos():
    blocks = pack_token_lists([[1, 2, 3], [4, 5], [6, 7, 8, 9]], eos_id=0, block_size=4)
    assert blocks.shape == (3, 4)
    assert blocks.ravel().tolist() == [1, 2, 3, 0, 4, 5, 0, 6, 7, 8, 9, 0]
    assert pack_token_lists([[1]], 0, 8).shape == (0, 8)


def test_loss_mask_covers_only_assistant_replies(tokenizer):
    messages = [
        {"role": "system", "content": "You add numbers."},
        {"role": "user", "content": "What is 12 plus 34?"},
        {"role": "assistant", "content": "46"},
    ]
    ids, labels = encode_chat(tokenizer, messages)
    learned = [t for t, lab in zip(ids, labels, strict=True) if lab != IGNORE_INDEX]
    assert tokenizer.decode(learned) == "46<|end|>"
    assert (
        ids
        == tokenizer(
            tokenizer.apply_chat_template(messages, tokenize=False), add_special_tokens=False
        )["input_ids"]
    )


def test_multi_turn_masks_each_assistant_turn(tokenizer):
    messages = [
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "world"},
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "46"},
    ]
    ids, labels = encode_chat(tokenizer, messages)
    learned = tokenizer.decode(
        [t for t, lab in zip(ids, labels, strict=True) if lab != IGNORE_INDEX]
    )
    assert learned == "world<|end|>46<|end|>"


def test_chat_batch_pads_and_drops_fully_truncated(tokenizer):
    long_prompt = [
        {"role": "user", "content": "hello world " * 20},
        {"role": "assistant", "content": "46"},
    ]
    short = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "46"}]
    out = encode_chat_batch(
        {"text": np.array([json.dumps(long_prompt), json.dumps(short)])}, tokenizer, 16
    )
    assert out["input_ids"].shape == (1, 16) and out["labels"].shape == (1, 16)
    n = int(out["length"][0])
    assert (out["labels"][0, n:] == IGNORE_INDEX).all()
    assert (out["input_ids"][0, n:] == tokenizer.pad_token_id).all()


def test_split_is_stable_and_roughly_sized():
    keys = [content_key(str(i)) for i in range(4000)]
    share = sum(is_validation(k, 0.1, 0) for k in keys) / len(keys)
    assert 0.08 < share < 0.12
    assert [is_validation(k, 0.1, 0) for k in keys[:50]] == [
        is_validation(k, 0.1, 0) for k in keys[:50]
    ]


def test_aligned_packing_keeps_documents_whole_and_ignores_padding():
    out = pack_aligned([[1, 2, 3], [4, 5], [6, 7, 8, 9, 10, 11]], eos_id=0, pad_id=99, block_size=6)
    rows = [r[:n].tolist() for r, n in zip(out["input_ids"], out["length"], strict=True)]
    assert rows == [[1, 2, 3, 0], [4, 5, 0], [6, 7, 8, 9, 10, 11], [0]]
    assert (out["labels"][out["input_ids"] == 99] == IGNORE_INDEX).all()
    assert out["input_ids"].shape[1] == 6


def test_prompt_completion_records_learn_only_the_completion(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "1+2=", "completion": "3"}\n{"prompt": "1+2="}\n')
    rows = read_file(
        {"path": str(path), "format": "jsonl", "file_index": 0}, "pair", "completion", "prompt"
    )
    assert json.loads(rows[0]["text"]) == ["1+2=", "3"] and "completion" in rows[1]["error"]
    out = pack_aligned([[7], [8, 9]], eos_id=0, pad_id=99, block_size=8, prompts=[[1, 2], [3]])
    assert out["input_ids"][0, :7].tolist() == [1, 2, 7, 0, 3, 8, 9]
    assert out["labels"][0, :8].tolist() == [
        IGNORE_INDEX,
        IGNORE_INDEX,
        7,
        0,
        IGNORE_INDEX,
        8,
        9,
        0,
    ]
