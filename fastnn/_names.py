"""Looking up user-facing names, with a helpful error for unknown ones."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable


def unknown_name_error(arg: str, value: object, valid: Iterable[str]) -> ValueError:
    """A ValueError naming ``arg``, the valid choices and the closest match to ``value``."""
    valid = sorted(valid)
    close = difflib.get_close_matches(str(value), valid, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return ValueError(f"{arg} must be one of {valid}, got {value!r}.{hint}")


def foreign_object_hint(value: object, instead: str = " or fastnn's own class") -> str:
    """For an object of another library (Keras's, passed to fastnn when porting with
    ``import fastnn as keras``): what to pass instead; else ""."""
    cls = type(value)
    if cls.__module__.split(".")[0] not in ("keras", "tensorflow", "tf_keras", "torch"):
        return ""
    name = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", cls.__name__).lower()
    return (
        f" ({cls.__module__}.{cls.__qualname__} is another library's object, which fastnn "
        f"does not run: pass the name {name!r}{instead})"
    )


def lookup(table: dict, arg: str, value: object):
    """table[value.lower()] or a ValueError from :func:`unknown_name_error`."""
    if not isinstance(value, str):
        raise TypeError(
            f"{arg} must be a string name, got {type(value).__name__}{foreign_object_hint(value)}"
        )
    key = value.strip().lower()
    if key in table:
        return table[key]
    # Keras's class names: "SparseCategoricalCrossentropy", "MeanSquaredError"
    compact = {name.replace("_", ""): entry for name, entry in table.items()}
    if key.replace("_", "") in compact:
        return compact[key.replace("_", "")]
    raise unknown_name_error(arg, value, table)
