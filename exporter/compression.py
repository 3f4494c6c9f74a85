"""Answers compressed the way the client asks (the Accept-Encoding header, RFC 9110 §12.5.3).

Prometheus, VictoriaMetrics' vmagent and curl's --compressed ask for gzip; metrics text shrinks about
ten times, which is what lets one pgvigil host serve many clusters (docs/scaling.md).
"""
from __future__ import annotations

import zlib

# Level 1: about 4 ms a MiB of metrics text and 10x smaller; level 6 costs 3x the CPU for 15 % fewer bytes.
GZIP_LEVEL = 1
# Smaller answers (errors, /health) gain too little to be worth a header.
MIN_BYTES = 1024


def accepts_gzip(header: str | None) -> bool:
    """Whether an Accept-Encoding value takes gzip: named (or `x-gzip`, or else `*`) with a q above 0.

    A malformed item is ignored, as the RFC allows; a header that names gzip twice takes its last q."""
    weights: dict[str, float] = {}
    for item in (header or "").split(","):
        coding, *params = (part.strip() for part in item.split(";"))
        weight = _weight(params)
        if coding and weight is not None:
            weights[coding.lower()] = weight
    for coding in ("gzip", "x-gzip", "*"):
        if coding in weights:
            return weights[coding] > 0
    return False


def _weight(params: list[str]) -> float | None:
    """An item's q (1 when absent), or None where it is not a number between 0 and 1."""
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "q":
            try:
                weight = float(value.strip())
            except ValueError:
                return None
            return weight if 0 <= weight <= 1 else None
    return 1.0


def gzipped(chunks: list[bytes]) -> list[bytes]:
    """The chunks as one gzip member, compressed piece by piece (no joined copy of the answer)."""
    compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    out = [compressor.compress(chunk) for chunk in chunks]
    out.append(compressor.flush())
    return [piece for piece in out if piece]
