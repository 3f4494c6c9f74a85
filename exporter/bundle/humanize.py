"""Python twins of Prometheus' template number formatters (humanize, humanizeDuration, ...).

The generator writes threshold levels into alert descriptions with them, and the promtool tests
expect annotations rendered exactly as Prometheus renders `{{ $value | humanize... }}`; both must
therefore format numbers the way Prometheus' Go code does (`%.4g` plus SI or binary prefixes).
"""
from __future__ import annotations

import math

_BIG = ("k", "M", "G", "T", "P", "E", "Z", "Y")
_SMALL = ("m", "u", "n", "p", "f", "a", "z", "y")


def _g4(value: float) -> str:
    # Go's %.4g and C's %.4g agree for finite numbers (same exponent rule and trailing-zero trim).
    return "%.4g" % value


def humanize(value: float) -> str:
    """SI prefixes: 1234567 -> 1.235M, 0.005 -> 5m."""
    if value == 0 or math.isnan(value) or math.isinf(value):
        return _g4(value)
    prefix = ""
    if abs(value) >= 1:
        for candidate in _BIG:
            if abs(value) < 1000:
                break
            prefix, value = candidate, value / 1000
        return _g4(value) + prefix
    for candidate in _SMALL:
        if abs(value) >= 1:
            break
        prefix, value = candidate, value * 1000
    return _g4(value) + prefix


def humanize1024(value: float) -> str:
    """Binary prefixes: 1048576 -> 1Mi."""
    if abs(value) <= 1 or math.isnan(value) or math.isinf(value):
        return _g4(value)
    prefix = ""
    for candidate in ("ki", "Mi", "Gi", "Ti", "Pi", "Ei", "Zi", "Yi"):
        if abs(value) < 1024:
            break
        prefix, value = candidate, value / 1024
    return _g4(value) + prefix


def humanize_duration(value: float) -> str:
    """Seconds as a duration: 899.99 -> 14m 59s, 0.5 -> 500ms."""
    if math.isnan(value) or math.isinf(value):
        return _g4(value)
    if value == 0:
        return _g4(value) + "s"
    if abs(value) >= 1:
        sign = "-" if value < 0 else ""
        whole = int(abs(value))  # Go truncates with int64(v)
        seconds, minutes = whole % 60, whole // 60 % 60
        hours, days = whole // 3600 % 24, whole // 86400
        if days:
            return f"{sign}{days}d {hours}h {minutes}m {seconds}s"
        if hours:
            return f"{sign}{hours}h {minutes}m {seconds}s"
        if minutes:
            return f"{sign}{minutes}m {seconds}s"
        return f"{sign}{_g4(abs(value))}s"
    prefix = ""
    for candidate in _SMALL:
        if abs(value) >= 1:
            break
        prefix, value = candidate, value * 1000
    return f"{_g4(value)}{prefix}s"


def humanize_percentage(value: float) -> str:
    """A ratio as a percentage: 0.1234567 -> 12.35%."""
    return _g4(value * 100) + "%"


# Template function name -> its Python twin, for the units the thresholds file allows.
FORMATTERS = {
    "humanize": humanize,
    "humanize1024": humanize1024,
    "humanizeDuration": humanize_duration,
    "humanizePercentage": humanize_percentage,
}

UNIT_FORMAT = {
    "ratio": ("humanizePercentage", ""),
    "seconds": ("humanizeDuration", ""),
    "bytes": ("humanize", "B"),
    "count": ("humanize", ""),
    "boolean": ("humanize", ""),
}


def format_level(value: float, unit: str) -> str:
    """A threshold level as it reads in an alert description (same formatter as the live value)."""
    function, suffix = UNIT_FORMAT[unit]
    return FORMATTERS[function](value) + suffix
