"""The store's errors; each message says what was refused and why."""


class StoreError(Exception):
    """The store refused an operation or could not reach its database."""


class KeyNotFound(StoreError):
    """No key has the id or name asked for."""


class DuplicateKeyName(StoreError):
    """Another key already has this name (names are unique, so they can name keys in CLIs)."""
