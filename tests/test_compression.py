"""Which Accept-Encoding values take gzip, and that the compressed answer is the answer."""
from __future__ import annotations

import gzip

import pytest

from exporter.compression import accepts_gzip, gzipped


@pytest.mark.parametrize("header", [
    "gzip", "GZIP", "gzip, deflate, br", "deflate;q=0.5, gzip;q=0.1", "x-gzip", "*", "identity;q=0.5, *",
    "gzip;q=1.0", " gzip ; Q=0.001 ", "br, gzip;q=oops, gzip",  # a malformed item is ignored, the later one counts
])
def test_headers_that_take_gzip(header):
    assert accepts_gzip(header)


@pytest.mark.parametrize("header", [
    None, "", "identity", "deflate, br", "gzip;q=0", "gzip;q=0.000", "*;q=0", "gzip;q=0, *",  # gzip named: its q rules
    "gzip;q=2", "gzip;q=-1", "gzip;q=nan", "gzip;q=", "gzip;q=1e", ",,;;", "gzipped", "zstd;q=1",
])
def test_headers_that_do_not(header):
    assert not accepts_gzip(header)


def test_chunks_compress_to_one_member_that_decompresses_to_their_concatenation():
    chunks = [b"a 1\n" * 10_000, b"", b"b{x=\"\\\"\"} 2\n" * 5_000, bytes(range(256))]
    packed = gzipped(chunks)
    assert all(packed) and gzip.decompress(b"".join(packed)) == b"".join(chunks)
    assert sum(map(len, packed)) < sum(map(len, chunks)) / 10
