"""Request options as the GUIs send them, turned into the values the tasks expect.

3D Slicer's options table sends every key of a task's ``config()``: a number default comes back as a number (0 for an
empty cell), a ``None`` default as the cell's text (""), a list as its chosen item. OHIF's panel sends only edited
keys, parsed with parseInt/parseFloat (an empty or non-numeric cell is NaN, which JSON turns into null); REST users
send numeric strings. All of these mean the same thing as a typed number, and an empty value means "the default".
"""

from __future__ import annotations

from typing import Any

# Train options whose 0 (an empty cell in Slicer) means "the schedule's own value".
SCHEDULE_DEFAULT_ZERO = ("max_epochs", "epochs", "patches_per_study", "augmentations", "batch_size")
_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def _number(text: str) -> int | float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return int(value) if value.is_integer() and "." not in text and "e" not in text.lower() else value


def coerce(value: Any, default: Any) -> Any:
    """``value`` as the type of ``default`` where the text says so unambiguously; anything else is returned as it is,
    for the checks that follow to refuse with a message."""
    if isinstance(value, list) and not isinstance(default, list):
        return value[0] if len(value) == 1 else value
    if isinstance(default, list):
        return value[0] if isinstance(value, list) and value else value
    if isinstance(value, str):
        text = value.strip()
        if isinstance(default, bool):
            lowered = text.lower()
            return True if lowered in _TRUE else False if lowered in _FALSE else value
        if isinstance(default, int | float):
            number = _number(text)
            if number is None:
                return value
            return int(number) if isinstance(default, int) and float(number).is_integer() else number
    return value


def normalise(params: dict, defaults: dict, zero_means_default: tuple[str, ...] = ()) -> dict:
    """The request's options with GUI spellings resolved: "" and null dropped (the task's default applies), numeric
    strings as numbers, "true"/"false" as flags, a list's chosen item, and 0 dropped for ``zero_means_default``."""
    out = {}
    for key, value in (params or {}).items():
        if value is None or (isinstance(value, str) and not value.strip() and key in defaults):
            continue
        if key in defaults:
            value = coerce(value, defaults[key])
        if key in zero_means_default and not isinstance(value, bool) and value == 0:
            continue
        out[key] = value
    return out


def normalise_train(params: dict, defaults: dict) -> dict:
    return normalise(params, defaults, SCHEDULE_DEFAULT_ZERO)
