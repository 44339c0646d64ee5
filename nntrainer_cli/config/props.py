"""Property value parsers and schemas. A parser turns the text of one value into a
Python value or raises ValueError with a message a user can act on."""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Any, Callable

from nntrainer_cli.errors import ConfigError

from .sections import Section

Parser = Callable[[str], Any]


def _num(text: str, kind: type, what: str):
    try:
        return kind(text)
    except ValueError:
        raise ValueError(f"expected {what}, got {text!r}") from None


def integer(text: str) -> int:
    return _num(text, int, "an integer")


def positive_int(text: str) -> int:
    v = _num(text, int, "a positive integer")
    if v <= 0:
        raise ValueError(f"expected a positive integer, got {text!r}")
    return v


def nonneg_int(text: str) -> int:
    v = _num(text, int, "a non-negative integer")
    if v < 0:
        raise ValueError(f"expected a non-negative integer, got {text!r}")
    return v


def floating(text: str) -> float:
    v = _num(text, float, "a number")
    if v != v or v in (float("inf"), float("-inf")):
        raise ValueError(f"expected a finite number, got {text!r}")
    return v


def nonneg_float(text: str) -> float:
    v = floating(text)
    if v < 0:
        raise ValueError(f"expected a number >= 0, got {text!r}")
    return v


def positive_float(text: str) -> float:
    v = floating(text)
    if v <= 0:
        raise ValueError(f"expected a number > 0, got {text!r}")
    return v


def decay_rate(text: str) -> float:
    """A learning-rate decay factor: in (0, 1]."""
    v = floating(text)
    if not 0 < v <= 1:
        raise ValueError(f"expected a decay factor in (0, 1], got {text!r}")
    return v


def unit_interval(text: str) -> float:
    v = floating(text)
    if not 0 <= v < 1:
        raise ValueError(f"expected a number in [0, 1), got {text!r}")
    return v


def boolean(text: str) -> bool:
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    raise ValueError(f"expected true or false, got {text!r}")


def text(value: str) -> str:
    return value


def enum(*choices: str) -> Parser:
    def parse(value: str) -> str:
        low = value.lower()
        if low in choices:
            return low
        raise ValueError(f"unknown value {value!r}{did_you_mean(low, choices)}; "
                         f"expected one of {', '.join(choices)}")
    return parse


def dims(value: str) -> tuple[int, int, int]:
    """NNTrainer's `C:H:W` (or `H:W`, `W`, `N:C:H:W`), right-aligned into (C, H, W)."""
    parts = value.split(":")
    if not 1 <= len(parts) <= 4:
        raise ValueError(f"expected a shape like 1:28:28, got {value!r}")
    try:
        nums = [int(p) for p in parts]
    except ValueError:
        raise ValueError(f"expected a shape like 1:28:28, got {value!r}") from None
    if any(n <= 0 for n in nums):
        raise ValueError(f"every dimension must be positive, got {value!r}")
    nums = [1] * (4 - len(nums)) + nums
    return tuple(nums[1:])  # the batch comes from [Model] batch_size


def int_list(value: str) -> list[int]:
    return [integer(v) for v in value.split(",")]


def float_list(value: str) -> list[float]:
    return [floating(v) for v in value.split(",")]


def int_pair(value: str) -> tuple[int, int]:
    parts = value.split(",")
    if len(parts) != 2:
        raise ValueError(f"expected two integers like 3,3, got {value!r}")
    a, b = (positive_int(p) for p in parts)
    return a, b


def padding(value: str):
    """`valid`, `same`, or 1, 2 (top=bottom, left=right) or 4 (t, b, l, r) integers."""
    low = value.lower()
    if low in ("valid", "same"):
        return low
    try:
        nums = [int(v) for v in value.split(",")]
    except ValueError:
        raise ValueError(f"expected valid, same, or 1, 2 or 4 integers, got {value!r}") from None
    if len(nums) not in (1, 2, 4) or any(n < 0 for n in nums):
        raise ValueError(f"expected valid, same, or 1, 2 or 4 non-negative integers, got {value!r}")
    if len(nums) == 1:
        return (nums[0],) * 4
    if len(nums) == 2:
        return (nums[0], nums[0], nums[1], nums[1])
    return tuple(nums)


MAX_OUTPUTS = 1024
_CONN = re.compile(r"^([A-Za-z0-9][-_./A-Za-z0-9]*)(?:\((\d+)\))?$")


def connections(value: str) -> list[tuple[str, int]]:
    """`a, b(1)` → [('a', 0), ('b', 1)]; names are case-insensitive."""
    out = []
    for part in value.split(","):
        m = _CONN.match(part.strip())
        if not m:
            raise ValueError(f"{part.strip()!r} is not a layer name")
        if int(m.group(2) or 0) >= MAX_OUTPUTS:
            raise ValueError(f"{part.strip()!r}: no layer has {MAX_OUTPUTS} or more outputs")
        out.append((m.group(1).lower(), int(m.group(2) or 0)))
    return out


def did_you_mean(word: str, options) -> str:
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


@dataclass(frozen=True)
class Prop:
    parse: Parser
    default: Any = None
    required: bool = False


Schema = dict[str, Prop]


def parse_section(section: Section, schema: Schema, ignore: tuple[str, ...] = (),
                  what: str = "key") -> dict[str, Any]:
    """Validate every key of a section against a schema; unknown keys are errors."""
    values: dict[str, Any] = {k: p.default for k, p in schema.items()}
    for key, entry in section.entries.items():
        if key in ignore:
            continue
        prop = schema.get(key)
        if prop is None:
            raise section.error(f"unknown {what}{did_you_mean(key, schema)}", key)
        if entry.value == "":
            raise section.error("empty value", key)
        try:
            values[key] = prop.parse(entry.value)
        except ValueError as e:
            raise section.error(str(e), key) from None
    for key, prop in schema.items():
        if prop.required and key not in section.entries:
            raise ConfigError(f"missing required key '{key}'", file=section.file,
                              line=section.line, section=section.name)
    return values
