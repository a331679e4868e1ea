"""Deterministic train/validation split and de-duplication keys, both from content hashes.

Hashing the cleaned content (not the position) keeps a record on the same side of the
split whatever the file order, the number of files or the parallelism.
"""

from __future__ import annotations

import hashlib


def content_key(text: str) -> str:
    """Exact-duplicate key of a cleaned record."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


def is_validation(key: str, fraction: float, seed: int) -> bool:
    """True for about ``fraction`` of keys, always the same ones for a given seed."""
    digest = hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < fraction
