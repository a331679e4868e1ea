"""The Ray Data pipeline from files to clean, de-duplicated, split records.

Stages: list files -> parse (flat_map, one task per file) -> report malformed records ->
normalise -> drop short -> exact dedup (groupby on a content hash, first occurrence wins)
-> split by hash -> sort by hash (a deterministic order that carries no file-order bias).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import asdict, dataclass
from functools import partial

import numpy as np
import ray

from common.settings import get_settings
from training.config import DataSection
from training.data.clean import clean_row, content_length
from training.data.errors import DataError
from training.data.records import read_file
from training.data.sources import list_input_files
from training.data.split import content_key, is_validation

logger = logging.getLogger(__name__)
# Row filters here are Python predicates over a few columns; Ray's hint about expressions
# is noise at this scale.
warnings.filterwarnings("ignore", message="Use 'expr' instead of 'fn'")


@dataclass
class RecordStats:
    """Counts at each stage: what a user needs to see when the result looks wrong."""

    files: int = 0
    read: int = 0
    malformed: int = 0
    too_short: int = 0
    duplicates: int = 0
    train: int = 0
    valid: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


def _quiet_data_context() -> None:
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.execution_options.preserve_order = True


def _report_malformed(bad: ray.data.Dataset, count: int, on_error: str) -> None:
    shown = bad.sort("order").take(get_settings().max_reported_bad_records)
    lines = [f"  {r['source']}: {r['error']}" for r in shown]
    if count > len(shown):
        lines.append(f"  ... and {count - len(shown)} more")
    message = f"{count} malformed record(s):\n" + "\n".join(lines)
    if on_error == "raise":
        raise DataError(message + "\n(set data.on_error: skip to drop them instead)")
    logger.warning("skipping %s", message)
    print(f"warning: skipping {message}", flush=True)


def _first_occurrence(group: dict) -> dict:
    i = int(np.argmin(group["order"]))
    return {k: v[i : i + 1] for k, v in group.items()}


def _partitions(rows: int) -> int:
    """Shuffle partitions sized to the data: Ray's default (200) is slow on small sets."""
    return max(1, min(200, rows // get_settings().records_per_partition + 1))


def _dedup(ds: ray.data.Dataset, rows: int) -> ray.data.Dataset:
    grouped = ds.groupby("key", num_partitions=_partitions(rows))
    return grouped.map_groups(_first_occurrence, batch_format="numpy")


def _with_key(row: dict, fraction: float, seed: int) -> dict:
    row["key"] = content_key(row["text"])
    row["valid"] = is_validation(row["key"], fraction, seed)
    return row


def _parse(data: DataSection, kind: str) -> ray.data.Dataset:
    files = list_input_files(data.paths, data.format)
    field = data.messages_field if kind == "chat" else data.text_field
    read = partial(read_file, kind=kind, field=field, prompt_field=data.prompt_field or "")
    items = ray.data.from_items(files, override_num_blocks=len(files))
    return items.flat_map(read).materialize()


def load_records(
    data: DataSection, kind: str, seed: int
) -> tuple[ray.data.Dataset, ray.data.Dataset, RecordStats]:
    """Returns (train, valid) record datasets and stage counts; raises DataError if empty.

    ``kind`` is "text" or "pair" (pretraining: plain text, or prompt/completion records)
    or "chat" (SFT records with a messages field).
    """
    _quiet_data_context()
    stats = RecordStats(files=len(list_input_files(data.paths, data.format)))
    parsed = _parse(data, kind)
    stats.read = parsed.count()
    bad = parsed.filter(lambda r: r["error"] != "")
    stats.malformed = bad.count()
    if stats.malformed:
        _report_malformed(bad, stats.malformed, data.on_error)
    good = parsed.filter(lambda r: r["error"] == "")
    cleaned = good.map(partial(clean_row, kind=kind, form=data.unicode_form))
    kept = cleaned.filter(lambda r: content_length(r["text"], kind) >= data.min_chars)
    kept = kept.map(partial(_with_key, fraction=data.valid_fraction, seed=seed))
    kept = kept.materialize()
    stats.too_short = stats.read - stats.malformed - kept.count()
    _raise_if_empty(kept.count(), stats, "after cleaning")
    unique = _dedup(kept, kept.count()) if data.dedup else kept
    unique = unique.repartition(_partitions(kept.count())).sort("key").materialize()
    stats.duplicates = kept.count() - unique.count()
    train = unique.filter(lambda r: not r["valid"]).materialize()
    valid = unique.filter(lambda r: r["valid"]).materialize()
    stats.train, stats.valid = train.count(), valid.count()
    _raise_if_empty(stats.train, stats, "in the training split")
    return train, valid, stats


def _raise_if_empty(count: int, stats: RecordStats, where: str) -> None:
    if count == 0:
        raise DataError(f"no usable records {where}; stage counts: {stats.as_dict()}")
