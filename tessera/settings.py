"""Settings read from TOML that may come from anyone: checked before anything uses them.

``read_toml`` refuses values that are not finite, integers beyond ``MAX_INT``, unprintable text
(tessera.names), dates, and nesting deeper than ``MAX_DEPTH``; ``from_table`` builds a settings
dataclass from a table, each value strictly of the type its field declares (no string for a
number, no float for an integer), and refuses unknown keys by name.
"""

from __future__ import annotations

import datetime
import math
import tomllib
import typing
from dataclasses import fields
from typing import Any

from pydantic import TypeAdapter, ValidationError

from tessera.errors import ConfigError
from tessera.names import unprintable

MAX_INT = 2**53  # integers beyond this lose precision as floats and overflow SQL columns
MAX_DEPTH = 6
MAX_ITEMS = 4096  # entries of one array or table
MAX_TEXT = 4096  # characters of one string value


def check_value(value: Any, where: str, depth: int = 0) -> None:
    """ConfigError unless ``value`` (from TOML) is finite, bounded and printable throughout."""
    if depth > MAX_DEPTH:
        raise ConfigError(f"{where}: tables and arrays nest deeper than {MAX_DEPTH} levels")
    if isinstance(value, dict):
        if len(value) > MAX_ITEMS:
            raise ConfigError(f"{where}: more than {MAX_ITEMS} keys")
        for key, item in value.items():
            check_value(key, f"{where} key", depth)
            check_value(item, f"{where}.{key}" if where else key, depth + 1)
    elif isinstance(value, list):
        if len(value) > MAX_ITEMS:
            raise ConfigError(f"{where}: more than {MAX_ITEMS} entries")
        for i, item in enumerate(value):
            check_value(item, f"{where}[{i}]", depth + 1)
    elif isinstance(value, bool):
        return
    elif isinstance(value, int):
        if abs(value) > MAX_INT:
            raise ConfigError(f"{where} = {value} is out of range (at most {MAX_INT} in size)")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ConfigError(f"{where} = {value}: numbers must be finite")
    elif isinstance(value, str):
        if len(value) > MAX_TEXT:
            raise ConfigError(f"{where}: text longer than {MAX_TEXT} characters")
        bad = unprintable(value)
        if bad is not None:
            raise ConfigError(f"{where} contains the unprintable character {bad}; use printable text")
    elif isinstance(value, datetime.date | datetime.time):
        raise ConfigError(f"{where}: dates and times are not accepted; write a number or text")


def check_range(where: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise ConfigError(f"{where} must be from {low:g} to {high:g}, got {value}")


def from_table(name: str, cls: type, table: Any) -> Any:
    """The settings dataclass ``cls`` from a TOML table, each value of its declared type."""
    if not isinstance(table, dict):
        raise ConfigError(f"[{name}] must be a table")
    known = {f.name for f in fields(cls)}
    hints = typing.get_type_hints(cls)
    for key, value in table.items():
        if key not in known:
            raise ConfigError(f"unknown key {name}.{key}; allowed keys: {sorted(known)}")
        try:
            TypeAdapter(hints[key]).validate_python(value, strict=True)
        except ValidationError as exc:
            raise ConfigError(f"{name}.{key} = {value!r}: {exc.errors()[0]['msg']}") from exc
    return cls(**table)


def read_toml(text: str, what: str) -> dict[str, Any]:
    """The TOML document, its values checked (``check_value``); ConfigError naming ``what``."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{what} is not valid TOML: {exc}") from exc
    except RecursionError as exc:
        raise ConfigError(f"{what} nests tables or arrays too deeply (at most {MAX_DEPTH} levels)") from exc
    check_value(doc, "")
    return doc
