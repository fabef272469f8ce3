"""The one parser for sizes and durations, used by every option that takes one.

Sizes are binary: ``10G`` = 10 GiB, ``500M``, ``64K``, ``1T``, a bare number is bytes;
an optional trailing ``B``/``iB`` is accepted (``10GiB``). Durations: a bare number is
seconds (``2``, ``0.5``); suffixes ``ms``, ``s``, ``m``, ``h``, ``d``.
"""

from __future__ import annotations

import re

_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|)\s*$", re.IGNORECASE)


def parse_size(text: str | int) -> int:
    """``"10G"`` → 10737418240. Raises ValueError with a readable message."""
    if isinstance(text, int):
        return text
    match = _SIZE_RE.match(text)
    if not match:
        raise ValueError(f"not a size: {text!r} (examples: 500M, 10G, 1048576)")
    number, unit = match.groups()
    return int(float(number) * _SIZE_UNITS[unit.lower()])


def parse_duration(text: str | int | float) -> float:
    """``"500ms"`` → 0.5, ``"5m"`` → 300.0, ``"2"`` → 2.0. Raises ValueError."""
    if isinstance(text, (int, float)):
        return float(text)
    match = _DURATION_RE.match(text)
    if not match:
        raise ValueError(f"not a duration: {text!r} (examples: 2, 2s, 500ms, 5m)")
    number, unit = match.groups()
    return float(number) * _DURATION_UNITS[unit.lower()]


def format_size(n: int) -> str:
    """1536 → ``1.5K``; for progress lines and status output."""
    value = float(n)
    for unit in ("", "K", "M", "G", "T"):
        if value < 1024 or unit == "T":
            return f"{value:.0f}{unit}" if unit == "" else f"{value:.1f}{unit}"
        value /= 1024
    raise AssertionError("unreachable")
