"""Read exposition text back into samples, so tests assert on values rather than on text."""
from __future__ import annotations

import re
from dataclasses import dataclass

_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+\d+)?$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
_UNESCAPE = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}


@dataclass(frozen=True)
class Sample:
    name: str
    labels: dict
    value: float


def parse_samples(text: str) -> list[Sample]:
    samples = []
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        match = _LINE.match(line)
        if not match:
            raise ValueError(f"unparseable exposition line: {line!r}")
        name, raw_labels, raw_value = match.groups()
        labels = {k: re.sub(r'\\[\\"n]', lambda m: _UNESCAPE[m.group(0)], v)
                  for k, v in _LABEL.findall(raw_labels or "")}
        samples.append(Sample(name, labels, float(raw_value)))  # float() reads +Inf/-Inf/NaN
    return samples


def find(samples: list[Sample], name: str, **labels: str) -> list[Sample]:
    """Samples of one metric whose labels include the given ones."""
    return [s for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]


def value(samples: list[Sample], name: str, **labels: str) -> float:
    """The value of exactly one matching sample; a clear failure otherwise."""
    found = find(samples, name, **labels)
    if len(found) != 1:
        shown = [(s.labels, s.value) for s in find(samples, name)][:10]
        raise AssertionError(f"expected one {name} sample with {labels}, found {len(found)}; {name} samples: {shown}")
    return found[0].value
