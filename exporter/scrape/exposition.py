"""Samples -> Prometheus text format (0.0.4), byte-compatible with prometheus_client.

prometheus_client's generic renderer spends most of a large scrape formatting
labels, so query results are rendered here directly. The escaping and float
formatting follow prometheus_client exactly (tests parse the output back).
"""
from __future__ import annotations

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# The exposition TYPE of each config metric type; a gauge histogram is written the
# way prometheus_client writes one: TYPE histogram with _gcount/_gsum samples.
EXPOSED_TYPE = {"gauge": "gauge", "counter": "counter", "histogram": "histogram", "gauge_histogram": "histogram"}

_INF = float("inf")
_EXACT_INT_LOW, _EXACT_INT_HIGH = -(2 ** 53), 2 ** 53  # ints float() keeps exactly
_EXPONENT = [f"e+{n:02d}" for n in range(20)]


def format_value(value: float | int) -> str:
    """Go-style float text as prometheus_client writes it: 1.0, 1e+06, +Inf, NaN."""
    # Fast paths first: this runs once per sample. Below 1e6, repr(float(n)) is f"{n}.0";
    # from 1e6, Go's exponent form is n's own digits, trailing zeros dropped.
    if type(value) is int and _EXACT_INT_LOW < value < _EXACT_INT_HIGH:
        if value < 1000000:
            return f"{value}.0"
        digits = str(value)
        return (digits[0] + "." + digits[1:]).rstrip("0.") + _EXPONENT[len(digits) - 1]
    d = float(value)
    if -_INF < d < 1e6:  # also false for NaN
        return repr(d)
    if d == _INF:
        return "+Inf"
    if d != d:
        return "NaN"
    if d == -_INF:
        return "-Inf"
    s = repr(d)
    dot = s.find(".")
    if dot > 6:  # Go switches to exponent notation sooner than Python
        return (s[0] + "." + s[1:dot] + s[dot + 1:]).rstrip("0.") + _EXPONENT[dot - 1]
    return s


def escape_label_value(value: str) -> str:
    if "\\" in value or '"' in value or "\n" in value:
        return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
    return value


def escape_help(text: str) -> str:
    return text.replace("\\", r"\\").replace("\n", r"\n")


def family_header(name: str, help_text: str, metric_type: str) -> str:
    return f"# HELP {name} {escape_help(help_text)}\n# TYPE {name} {EXPOSED_TYPE[metric_type]}\n"


def label_text(labels: tuple[tuple[str, str], ...] | list[tuple[str, str]]) -> str:
    """`a="x",b="y"` for a sequence of (name, value) pairs."""
    return ",".join(f'{name}="{escape_label_value(value)}"' for name, value in labels)



def render_samples(name: str, help_text: str, metric_type: str, samples: list[tuple[str, float]]) -> str:
    """A whole family from (label text, value) pairs; empty when there are no samples."""
    if not samples:
        return ""
    body = "".join(f"{name}{{{labels}}} {format_value(value)}\n" if labels else f"{name} {format_value(value)}\n"
                   for labels, value in samples)
    return family_header(name, help_text, metric_type) + body
