"""Looking up user-facing names, with a helpful error for unknown ones."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def unknown_name_error(arg: str, value: object, valid: Iterable[str]) -> ValueError:
    """A ValueError naming ``arg``, the valid choices and the closest match to ``value``."""
    valid = sorted(valid)
    close = difflib.get_close_matches(str(value), valid, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return ValueError(f"{arg} must be one of {valid}, got {value!r}.{hint}")


def lookup(table: dict, arg: str, value: object):
    """table[value.lower()] or a ValueError from :func:`unknown_name_error`."""
    if not isinstance(value, str):
        raise TypeError(f"{arg} must be a string name, got {type(value).__name__}")
    key = value.strip().lower()
    if key not in table:
        raise unknown_name_error(arg, value, table)
    return table[key]
