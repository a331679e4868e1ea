"""The Ray Data pipeline end to end: formats, cleaning, dedup, bad records, empty input."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from training.config import DataSection, parse_config
from training.data.errors import DataError
from training.data.pipeline import load_records
from training.data.prepare import prepare_data


def _write_inputs(root):
    (root / "a.jsonl").write_text(
        "\n".join(
            [
                json.dumps({"text": "1+2=3"}),
                json.dumps({"text": "  1+2=3  "}),  # duplicate after cleaning
                json.dumps({"text": "ﬁve  apples"}),  # NFKC + whitespace
                "{not json",  # malformed, line 4
                json.dumps({"text": "x"}),  # too short
                json.dumps({"body": "no text field"}),  # malformed, line 6
            ]
        )
        + "\n"
    )
    (root / "b.txt").write_text("five apples\n7+8=15\n\n")
    pq.write_table(pa.table({"text": ["9+9=18", "1+2=3"]}), root / "c.parquet")


def test_formats_cleaning_dedup_and_bad_records(local_ray, tmp_path, capsys):
    _write_inputs(tmp_path)
    data = DataSection(paths=[str(tmp_path)], min_chars=3, valid_fraction=0.0)
    train, valid, stats = load_records(data, "text", seed=0)
    texts = sorted(r["text"] for r in train.iter_rows())
    assert texts == ["1+2=3", "7+8=15", "9+9=18", "five apples"]
    assert valid.count() == 0
    counts = (stats.files, stats.read, stats.malformed, stats.too_short, stats.duplicates)
    assert counts == (3, 11, 2, 2, 3)  # too short: "x" and b.txt's blank line
    out = capsys.readouterr().out
    assert f"{tmp_path / 'a.jsonl'}:4: invalid JSON" in out
    assert f"{tmp_path / 'a.jsonl'}:6: missing field 'text'" in out


def test_malformed_records_rejected_when_configured(local_ray, tmp_path):
    _write_inputs(tmp_path)
    data = DataSection(paths=[str(tmp_path / "a.jsonl")], on_error="raise")
    with pytest.raises(DataError, match=r"a\.jsonl:4: invalid JSON"):
        load_records(data, "text", seed=0)


def test_empty_result_is_a_clear_error(local_ray, tmp_path):
    (tmp_path / "e.jsonl").write_text(json.dumps({"text": "a"}) + "\n")
    with pytest.raises(DataError, match="no usable records after cleaning"):
        load_records(DataSection(paths=[str(tmp_path)], min_chars=5), "text", seed=0)


def test_prepare_packs_full_blocks_and_is_cached(local_ray, tmp_path):
    lines = [json.dumps({"text": f"{a}+{b}={a + b}"}) for a in range(30) for b in range(30)]
    (tmp_path / "p.jsonl").write_text("\n".join(lines) + "\n")
    config = parse_config(
        {
            "kind": "pretrain",
            "run": {"name": "prep", "storage_path": str(tmp_path / "runs")},
            "data": {"paths": [str(tmp_path / "p.jsonl")], "block_size": 32, "valid_fraction": 0.1},
            "tokenizer": {"vocab_size": 300},
            "optim": {"max_steps": 1},
        }
    )
    prepared = prepare_data(config)
    assert prepared.train["input_ids"].shape[1] == 32
    assert 0.8 < prepared.stats["train"] / 900 < 0.97
    again = prepare_data(config)
    assert (again.train["input_ids"] == prepared.train["input_ids"]).all()
