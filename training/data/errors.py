"""Errors of the data pipeline; raised on the driver before any training worker starts."""

from __future__ import annotations


class DataError(ValueError):
    """The input cannot produce a training set (missing, malformed under on_error=raise, empty)."""
